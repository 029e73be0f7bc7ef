"""The resumable sampler: exact resume, disjoint shards, no duplicated evaluation samples."""

import random

import numpy as np
import torch

from litv2cli.data.sampler import ResumableDistributedSampler, shard_indices
from litv2cli.data.seeding import SeededItems


def _sampler(rank=0, world=2, size=103, batch=4, seed=7):
    return ResumableDistributedSampler(size, num_replicas=world, rank=rank, batch_size=batch, seed=seed)


def test_resume_mid_epoch_continues_the_same_index_sequence():
    full = _sampler()
    full.set_epoch(3)
    uninterrupted = list(full)
    resumed = _sampler()
    resumed.set_epoch(3, start_at=8)
    assert list(resumed) == uninterrupted[8:]


def test_ranks_get_disjoint_equal_shares_of_whole_batches():
    shares = []
    for rank in range(2):
        sampler = _sampler(rank=rank)
        sampler.set_epoch(1)
        shares.append(list(sampler))
    assert len(shares[0]) == len(shares[1]) == 48  # 103 // (2 * 4) * 4
    assert not set(shares[0]) & set(shares[1])


def test_each_epoch_is_a_new_permutation_and_the_seed_fixes_it():
    a, b = _sampler(), _sampler()
    a.set_epoch(0)
    b.set_epoch(1)
    assert list(a) != list(b)
    c = _sampler()
    c.set_epoch(1)
    assert list(b) == list(c)


def test_evaluation_shards_cover_every_index_exactly_once():
    shards = [shard_indices(101, num_replicas=3, rank=r) for r in range(3)]
    flat = sorted(i for shard in shards for i in shard)
    assert flat == list(range(101))


class _RandomItems(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, index):
        return (random.random(), float(np.random.rand()), torch.rand(1).item())


def test_seeded_items_repeat_per_index_and_epoch_and_leave_caller_rng_alone():
    items = SeededItems(_RandomItems(), seed=1)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    first = [items[i] for i in (3, 5)]
    assert torch.equal(before, torch.random.get_rng_state())
    assert [items[i] for i in (5, 3)] == first[::-1]
    items.set_epoch(1)
    assert items[3] != first[0]
