"""Atomic, resumable checkpoints of a run: `DIR/checkpoints/step-00001234/`.

Each checkpoint is written by every rank into a hidden temporary directory (accelerate's
`save_state`, which DeepSpeed requires on all ranks), completed by `train_state.json`, then
renamed into place by the main process. A kill at any moment leaves either the previous set of
checkpoints or a complete new one; leftovers of an interrupted write are hidden and removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import Accelerator

from litv2cli.weights.layout import STATE_FILE, checkpoint_dir, list_checkpoints

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Where training stands: the position is in samples of this rank's share of the epoch."""

    epoch: int = 0
    step: int = 0
    position: int = 0
    nonfinite_skipped: int = 0
    world_size: int = 1


def share_output_across_nodes(accelerator: Accelerator, run_dir: Path) -> bool:
    """Whether every node sees the run directory the main process writes to (a shared
    filesystem). If not, each node keeps a whole checkpoint of its own (its first process writes
    and renames it, accelerate saves the model once per node), so that a resume on every node
    finds the files of its ranks where it looks. Every rank must call this."""
    import uuid

    import torch
    from accelerate.utils import broadcast_object_list

    if accelerator.num_processes == int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)):
        return True
    token = broadcast_object_list([uuid.uuid4().hex if accelerator.is_main_process else None])[0]
    probe = Path(run_dir) / f".probe-{token}"
    if accelerator.is_main_process:
        probe.touch()
    accelerator.wait_for_everyone()
    seen = accelerator.reduce(torch.tensor([float(probe.exists())], device=accelerator.device), "sum")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        probe.unlink()
    shared = int(seen.item()) == accelerator.num_processes
    accelerator.project_configuration.save_on_each_node = not shared
    return shared


def writes_checkpoints(accelerator: Accelerator) -> bool:
    """The one process (per node, when nodes keep their own run directory) that finalises."""
    if accelerator.project_configuration.save_on_each_node:
        return accelerator.is_local_main_process
    return accelerator.is_main_process


def save_checkpoint(accelerator: Accelerator, run_dir: Path, state: TrainState, keep: int,
                    extra_files: dict[str, callable] | None = None) -> Path:
    """Save on every rank; the writing process finalises, renames and prunes to the newest `keep`."""
    root = checkpoint_dir(run_dir)
    final = root / f"step-{state.step:08d}"
    tmp = root / f".tmp-step-{state.step:08d}"
    writer = writes_checkpoints(accelerator)
    if writer:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()  # before the barrier: other ranks write their shards and RNG states into it at once
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()  # every rank's files are in before the rename
    if writer:
        for name, write in (extra_files or {}).items():
            write(tmp / name)
        _write_json(tmp / STATE_FILE, asdict(state))
        if final.exists():  # the same step saved twice (e.g. epoch end right after a step save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Delete temporary directories left by a write that was killed."""
    root = checkpoint_dir(run_dir)
    if root.is_dir():
        for leftover in root.glob(".tmp-step-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def read_state(path: Path) -> TrainState:
    return TrainState(**json.loads((Path(path) / STATE_FILE).read_text()))


def _write_json(path: Path, data: dict) -> None:
    with path.open("w") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
