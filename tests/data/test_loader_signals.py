"""Loader workers leave SIGTERM and SIGINT to the trainer, so a signal sent to a whole job
(workers included) ends in the trainer's save at the step boundary, not in a dead worker."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from litv2cli.data.loading import StopSafeLoader


class SignalsItself(Dataset):
    """Each item sends SIGTERM and SIGINT to the process that loads it, as a job-wide signal would."""

    def __init__(self) -> None:
        self.parent = os.getpid()

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        if os.getpid() != self.parent:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
        return torch.tensor(index)


def test_a_worker_of_our_loader_keeps_loading_through_stop_signals():
    batches = list(StopSafeLoader(SignalsItself(), batch_size=2, num_workers=1))
    assert torch.cat(batches).tolist() == [0, 1, 2, 3]


def test_a_plain_loader_worker_dies_of_the_same_signal():
    # What the trainer met before: the check above can fail.
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        list(DataLoader(SignalsItself(), batch_size=2, num_workers=1))


def test_starting_the_workers_leaves_this_process_able_to_receive_the_signals():
    iterator = iter(StopSafeLoader(SignalsItself(), batch_size=2, num_workers=1))
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    del iterator
    assert signal.SIGTERM not in blocked and signal.SIGINT not in blocked
