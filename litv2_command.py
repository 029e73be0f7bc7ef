"""The `litv2` console script: starts the command line without registering the models first.

`import litv2cli` registers `litv2_t/s/m/b` with timm, which is what a library user wants
(`import timm, litv2cli; timm.create_model("litv2_s")`) and costs seconds: it imports torch,
timm and torchvision. The command line needs none of that to print its help, its version or a
bad-input error. So the console script is this module, outside the package: it sets
`STARTING_CLI` before it imports `litv2cli`, and `litv2cli/__init__.py` skips the registration
when it sees the flag. Commands import what they use inside their functions; those that need a
model import `litv2cli.models`, which registers the models then. Worker processes start with
`python -m litv2cli...` and never see the flag.
"""

from __future__ import annotations

import sys

STARTING_CLI = False  # True once the console script runs; read by litv2cli/__init__.py


def run() -> None:
    """Console-script entry point of `litv2`."""
    global STARTING_CLI
    STARTING_CLI = True
    try:
        from litv2cli.cli.main import run as run_cli
    except KeyboardInterrupt:  # Ctrl-C while the command line itself loads
        sys.stderr.write("litv2: interrupted\n")
        sys.exit(130)
    run_cli()
