"""A distributed sampler that owns its seed, epoch and position, so resume is exact.

accelerate's `skip_first_batches` on a resumed sampler has produced wrong permutations or a
repeated epoch (accelerate issues 2016, 2823). Here the permutation depends only on
(seed, epoch), every rank takes a strided share of it, and `start_at` skips what was already
consumed: an interrupted-and-resumed epoch visits exactly the indices an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from litv2cli.defaults import epoch_seed


class ResumableDistributedSampler(Sampler[int]):
    """Shuffled, rank-sharded indices of one epoch, resumable at any sample position.

    The epoch is truncated to a multiple of `num_replicas * batch_size`, so every rank runs the
    same number of full batches (no padding duplicates, no ragged last step).
    """

    def __init__(self, dataset_size: int, *, num_replicas: int, rank: int, batch_size: int, seed: int,
                 shuffle: bool = True) -> None:
        self.dataset_size = dataset_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_at = 0  # samples of this rank's share already consumed in this epoch
        self.per_rank = (dataset_size // (num_replicas * batch_size)) * batch_size

    def set_epoch(self, epoch: int, start_at: int = 0) -> None:
        self.epoch = epoch
        self.start_at = start_at

    def epoch_indices(self) -> list[int]:
        """This rank's indices for the current epoch, before skipping."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(self.dataset_size, generator=generator).tolist()
        else:
            order = list(range(self.dataset_size))
        used = order[: self.per_rank * self.num_replicas]
        return used[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.start_at :])

    def __len__(self) -> int:
        return self.per_rank - self.start_at


def shard_indices(dataset_size: int, *, num_replicas: int, rank: int) -> list[int]:
    """Evaluation shard: every index exactly once over all ranks, no padding duplicates."""
    return list(range(rank, dataset_size, num_replicas))
