"""Per-sample seeding of augmentation, so data randomness does not depend on worker scheduling."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from litv2cli.defaults import epoch_seed


class SeededItems(Dataset):
    """Wraps a dataset so item `i` of epoch `e` is always augmented with the same random draws.

    DataLoader workers receive batches in an order that changes when a run resumes mid-epoch,
    so worker-level seeds cannot make resume exact. Seeding by (seed, epoch, index) can. The
    caller's RNG states are restored afterwards, so this also works with `num_workers=0`.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item_seed = epoch_seed(self.seed, self.epoch) * 10_000_019 + index
        saved = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
        random.seed(item_seed)
        np.random.seed(item_seed % (2**32))
        torch.manual_seed(item_seed)
        try:
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.random.set_rng_state(saved[2])
