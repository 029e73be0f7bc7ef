"""The one exception type for user mistakes.

Anything the user can fix (a bad flag, a missing file, a corrupt checkpoint) is raised as
`UserError`; the CLI prints its message as a single line and exits with code 2. Everything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line and exit code 2."""
