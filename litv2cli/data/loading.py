"""Batching that drops undecodable images and counts them, and loader workers that leave the
signals that stop a run to the trainer."""

from __future__ import annotations

import atexit
import signal
import weakref
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate


def collate_skip_corrupt(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(images, labels, number of items of this batch that could not be decoded).

    `ImageSplit` returns `None` for an unreadable image instead of raising, so one bad file
    does not kill a worker and with it the run. The batch is then smaller by that many images;
    the trainer adds up the counts and reports them once per epoch. A batch with no readable
    image gives empty tensors (shape (0,)) and its count.
    """
    valid = [item for item in batch if item is not None]
    skipped = len(batch) - len(valid)
    if not valid:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, labels = default_collate(valid)
    return images, labels, skipped


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class StopSafeLoader(DataLoader):
    """A DataLoader whose worker processes leave SIGTERM and SIGINT to the trainer.

    Pre-emption reaches every process of a job (`timeout`, `kill -- -PGID`, Ctrl-C in a
    terminal, the launcher passing the signal on), loader workers included. PyTorch's workers
    die of a SIGTERM that does not come from their parent, and the trainer's next batch then
    raised "DataLoader worker ... killed by signal": a traceback instead of the save at the step
    boundary that the trainer's own handler was about to make. So each worker ignores both
    signals; they are blocked while the workers start, so none arrives before that. The trainer
    shuts its workers down when it stops, and a worker whose trainer is gone exits by itself
    (PyTorch's watchdog).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, worker_init_fn=_ignore_stop_signals, **kwargs)

    def __iter__(self):  # type: ignore[override]
        if self.num_workers == 0:
            return super().__iter__()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # inherited by the workers
        try:
            iterator = super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a signal held meanwhile arrives now
        _workers.update(getattr(iterator, "_workers", ()))
        return iterator


_workers: weakref.WeakSet = weakref.WeakSet()  # the worker processes of every StopSafeLoader


def _kill_leftover_workers() -> None:
    """At interpreter exit, kill the loader workers an exception left behind. multiprocessing's
    own exit handler stops daemon children with SIGTERM, which these workers ignore, and then
    waits for them forever: a failed run would hang instead of exiting."""
    leftovers = [worker for worker in list(_workers) if worker.is_alive()]
    if leftovers:  # PyTorch's SIGCHLD handler would raise at the first one's death, mid-loop
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for worker in leftovers:
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


atexit.register(_kill_leftover_workers)  # registered after multiprocessing's, so it runs first


def _ignore_stop_signals(worker_id: int) -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
