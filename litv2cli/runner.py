"""From validated options to a running job: the run directory, then workers in or out of process."""

from __future__ import annotations

import os
from pathlib import Path

from litv2cli.checkpointing import list_checkpoints
from litv2cli.config import Recipe, save_recipe
from litv2cli.errors import UserError
from litv2cli.launch import LaunchPlan, run_launched
from litv2cli.runs import RunSpec
from litv2cli.worker import run_spec


def prepare_run_dir(output: Path, *, resuming: bool) -> None:
    """Refuse to overwrite a run (nothing already written is lost) and check we can write there."""
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} exists and is not a directory")
    if not resuming and (list_checkpoints(output) or (output / "model.safetensors").exists()):
        raise UserError(f"--output {output} already holds a run; continue it with --resume auto or pick another --output")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output {output}: cannot create the directory ({exc.strerror})") from None
    if not os.access(output, os.W_OK):
        raise UserError(f"--output {output} is not writable")


def start(spec: RunSpec, recipe: Recipe, launch: LaunchPlan) -> int:
    """Write `config.yaml` and `run.json`, then run the workers; returns their exit code."""
    output = Path(spec.output)
    save_recipe(recipe, output / "config.yaml")
    spec.save(output / "run.json")
    if launch.needs_launcher:
        return run_launched(launch, output / "run.json")
    return run_spec(spec)
