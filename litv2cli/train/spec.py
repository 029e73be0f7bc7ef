"""A run: its plain-argument spec (what the workers receive) and its directory layout.

The CLI validates everything, writes `config.yaml` (the resolved recipe) and `run.json` (this
spec) into the run directory, then starts the workers, which read `run.json`: one source of
truth whether the run is local, launched on N processes or on many nodes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from litv2cli.files import write_text_atomic


@dataclass
class RunSpec:
    """Everything a worker needs besides the recipe; paths are absolute."""

    recipe: dict[str, Any]
    data: str
    output: str
    image_column: str | None = None
    label_column: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    streaming: bool = False
    train_size: int = 0  # images in the training split; what a stream's epoch length is computed from
    workers: int = 2
    save_every: int = 0
    keep: int = 3
    resume: str | None = None
    log_with: list[str] = field(default_factory=list)
    log_every: int = 10
    max_steps: int | None = None
    compile: bool = False
    grad_ckpt: bool = False
    channels_last: bool = False
    precision: str = "auto"
    deepspeed: str | None = None
    init_from: str | None = None
    skip_nonfinite: int = 0
    task: str = "train"
    progress: bool = True

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> "RunSpec":
        return cls(**json.loads(Path(path).read_text()))


def default_run_dir(variant: str, prefix: str = "") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{prefix}{variant}-{stamp}"


class MetricsLog:
    """Appends one JSON object per line to `metrics.jsonl`; flushed each write so a killed run
    keeps everything it logged."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        record = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in record.items()}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics file; a torn last line (killed mid-write) is ignored."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
