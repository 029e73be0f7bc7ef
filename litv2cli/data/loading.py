"""Batching that drops undecodable images and counts them."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import default_collate


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
