"""The command line answers at once: `litv2 --help`, `--version` and bad input import no torch,
while `import litv2cli` still registers the models with timm; Ctrl-C while torch loads is one line.

Each check runs the installed console script (or a fresh interpreter) in a subprocess: this test
session has imported torch long ago.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import litv2cli

SCRIPT = Path(sys.executable).with_name("litv2")
pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="the litv2 console script is not installed")


def imported_modules(*args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """The command's result and every module it imported (`python -X importtime` lists them on stderr)."""
    done = subprocess.run([sys.executable, "-X", "importtime", str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120)
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return done, modules


@pytest.mark.parametrize("args", [["--help"], ["pretrain", "--help"], ["search", "--help"],
                                  ["bench", "model", "--help"]], ids=" ".join)
def test_help_imports_no_torch(args):
    done, modules = imported_modules(*args)
    assert done.returncode == 0 and "Usage" in done.stdout
    assert "typer" in modules and not {"torch", "timm", "torchvision"} & modules


def test_version_prints_the_package_version_without_torch():
    done, modules = imported_modules("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"litv2 {litv2cli.__version__}"
    assert "torch" not in modules


@pytest.mark.parametrize("args, fragment", [
    (["info", "--variant", "x"], "unknown variant"),
    (["pretrain", "--variant", "t", "--res", "225", "--data", "demo"], "multiples of 32"),
    (["finetune", "--from", "run", "--res", "100"], "multiples of 32"),
], ids=lambda value: value if isinstance(value, str) else " ".join(value))
def test_bad_input_is_refused_before_torch_loads(args, fragment):
    done, modules = imported_modules(*args)
    stderr = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert done.returncode == 2 and len(stderr) == 1 and fragment in stderr[0]
    assert "torch" not in modules


def test_importing_the_package_still_registers_the_models_with_timm():
    code = "import timm, litv2cli; print(timm.create_model('litv2_t', num_classes=3).head.out_features)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "3"


def test_a_command_that_needs_the_models_registers_them():
    code = ("import sys, litv2_command; litv2_command.STARTING_CLI = True\n"
            "from litv2cli.cli.main import main\n"
            "import timm; assert not timm.is_model('litv2_s')\n"
            "assert main(['info', '--variant', 's', '--json']) == 0 and timm.is_model('litv2_s')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_ctrl_c_while_torch_loads_is_one_line_and_exit_130():
    # A terminal's Ctrl-C: SIGINT at its default (a test run in the background inherits it ignored).
    command = subprocess.Popen([str(SCRIPT), "info", "--variant", "s"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(0.5)  # the CLI has loaded; torch (seconds) has not
    command.send_signal(signal.SIGINT)
    _, stderr = command.communicate(timeout=60)
    assert command.returncode == 130
    assert stderr.strip() == "litv2: interrupted"
