"""litv2cli: train, fine-tune, search and benchmark LITv2 (HiLo attention).

Importing the package registers `litv2_t`, `litv2_s`, `litv2_m` and `litv2_b` with timm. The one
exception is the `litv2` command itself: its console script (`litv2_command`, a top-level module
of this distribution) sets a flag before importing the package, so that `litv2 --help` starts
without torch; its commands import `litv2cli.models` when they need a model, and that import
registers them (see litv2_command.py).
"""

import sys

__version__ = "0.1.0"


def _started_by_the_console_script() -> bool:
    return getattr(sys.modules.get("litv2_command"), "STARTING_CLI", False)


if not _started_by_the_console_script():
    from litv2cli import models as _models  # noqa: F401  (registers the timm models)
