"""A rich progress bar for the main process: epoch, step, loss, LR, images/s and ETA."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    """Shows the running epoch counted from 1, out of `epochs`, as the evaluation lines count them
    (`state.epoch` counts the epochs already completed)."""

    def __init__(self, *, enabled: bool, total_steps: int, start: int, epochs: int, completed_epochs: int = 0) -> None:
        self.epochs = epochs
        self.progress: Progress | None = None
        if not enabled:
            return
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[ips]:.0f} img/s"),
            TimeElapsedColumn(), TimeRemainingColumn(), transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, completed=start,
                                           epoch=self._running(completed_epochs), loss=float("nan"), lr=0.0, ips=0.0)

    def _running(self, completed_epochs: int) -> str:
        return f"{min(completed_epochs + 1, self.epochs)}/{self.epochs}"

    def update(self, state: Any, *, loss: float, lr: float, images_per_s: float | None = None) -> None:
        if self.progress is None:
            return
        fields = dict(epoch=self._running(state.epoch), loss=loss, lr=lr)
        if images_per_s is not None:
            fields["ips"] = images_per_s
        self.progress.update(self.task, completed=state.step, **fields)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
