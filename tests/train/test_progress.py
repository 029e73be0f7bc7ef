"""The training progress bar counts epochs as the evaluation lines do: from 1, out of the total."""

from __future__ import annotations

from types import SimpleNamespace

from litv2cli.train.progress import TrainProgress


def _shown_epoch(bar: TrainProgress) -> str:
    return bar.progress.tasks[0].fields["epoch"]


def test_the_bar_shows_the_running_epoch_from_one_to_the_last():
    bar = TrainProgress(enabled=True, total_steps=12, start=0, epochs=3)
    try:
        assert _shown_epoch(bar) == "1/3"
        bar.update(SimpleNamespace(epoch=0, step=2), loss=1.0, lr=0.1)
        assert _shown_epoch(bar) == "1/3"
        bar.update(SimpleNamespace(epoch=2, step=12), loss=1.0, lr=0.1)  # the last step of the last epoch
        assert _shown_epoch(bar) == "3/3"
        bar.update(SimpleNamespace(epoch=3, step=12), loss=1.0, lr=0.1)  # all done: never 4/3
        assert _shown_epoch(bar) == "3/3"
    finally:
        bar.close()


def test_a_resumed_run_starts_the_bar_at_its_running_epoch():
    bar = TrainProgress(enabled=True, total_steps=12, start=8, epochs=3, completed_epochs=2)
    try:
        assert _shown_epoch(bar) == "3/3" and bar.progress.tasks[0].completed == 8
    finally:
        bar.close()
