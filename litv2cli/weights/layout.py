"""Where a run keeps its checkpoints: `DIR/checkpoints/step-NNNNNNNN/`, complete once its
training state file is in it. Read by training (resume) and by weight reading (a run directory
given as weights), so it lives below both."""

from __future__ import annotations

from pathlib import Path

STATE_FILE = "train_state.json"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)
