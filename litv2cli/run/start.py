"""From validated options to a running job: the run directory, then workers in or out of process."""

from __future__ import annotations

import os
from pathlib import Path

from litv2cli.recipe import Recipe, save_recipe
from litv2cli.errors import UserError
from litv2cli.run.launch import LaunchPlan, adopt_single_process, run_launched
from litv2cli.run.rundir import make_dir
from litv2cli.train.spec import RunSpec
from litv2cli.run.worker import run_spec


# Everything a run writes at the top of its directory; what training itself writes.
TRAINING_FILES = ("checkpoints", "model.safetensors", "model_ema.safetensors")
RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl", *TRAINING_FILES)


def prepare_run_dir(output: Path, *, resuming: bool, first_process: bool = True) -> None:
    """Refuse to overwrite a run (nothing already written is lost) and check we can write there.

    Without --resume, any file of a run counts: a run killed before its first checkpoint still
    has its config, spec and metrics, which a new run would overwrite or append to. The other
    commands of a job (other nodes, other srun tasks) may share the first one's --output, where
    it may have just written the config and spec of this very run: for them only what training
    writes counts (training cannot have started without them). They write neither file there
    (`start`), so the first never takes theirs for an older run."""
    names = RUN_FILES if first_process else TRAINING_FILES
    found = [name for name in names if (output / name).exists()] if output.is_dir() and not resuming else []
    if found:
        raise UserError(f"--output {output} already holds a run ({', '.join(found)}); continue it with --resume auto "
                        "or pick another --output")
    make_dir(output)


def start(spec: RunSpec, recipe: Recipe, launch: LaunchPlan) -> int:
    """Write `config.yaml` and `run.json`, then run the workers; returns their exit code. The
    job's other commands hand their workers the spec in a file of their own, removed at the end."""
    output = Path(spec.output)
    if launch.first_process:
        save_recipe(recipe, output / "config.yaml")
        return run(spec, launch, output / "run.json")
    private = output / f".run-{os.getpid()}.json"
    try:
        return run(spec, launch, private)
    finally:
        private.unlink(missing_ok=True)


def run(spec: RunSpec, launch: LaunchPlan, run_json: Path) -> int:
    """Save `spec` to `run_json` and run it: in worker processes started by the launcher (which
    read that file), or in this process; returns the exit code."""
    spec.save(run_json)
    if launch.needs_launcher:
        return run_launched(launch, run_json)
    if spec.deepspeed:
        adopt_single_process()
    return run_spec(spec)
