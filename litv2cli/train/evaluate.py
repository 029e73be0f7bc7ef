"""Top-1/top-5 over exactly the validation set, whatever the number of processes.

Each rank evaluates its own part (a strided shard, or its part of a stream); nothing is padded,
so no image is counted twice, unlike a padded DistributedSampler. Ranks whose part is shorter
keep forwarding a dummy batch until every rank is done, so collectives inside the model
(ZeRO-3 gathers) stay in step.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import Dataset, IterableDataset, Subset

from litv2cli.data.loading import StopSafeLoader, collate_skip_corrupt
from litv2cli.precision import as_model_input, compute_dtype, step_autocast
from litv2cli.data.sampler import shard_indices


def rank_part(dataset: Dataset, world: int, rank: int) -> Dataset:
    """This rank's part: every item belongs to exactly one rank."""
    if isinstance(dataset, IterableDataset):
        return dataset.for_rank(rank, world)
    return Subset(dataset, shard_indices(len(dataset), num_replicas=world, rank=rank))


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: nn.Module, dataset: Dataset, *, batch_size: int, workers: int,
             criterion: nn.Module | None = None, channels_last: bool = False) -> dict[str, Any]:
    """Returns top1/top5 (percent), images counted, unreadable images skipped and, when a
    `criterion` (summing over the batch) is given, the mean loss; without one there is no "loss"."""
    loader = StopSafeLoader(rank_part(dataset, accelerator.num_processes, accelerator.process_index),
                            batch_size=batch_size, num_workers=workers, collate_fn=collate_skip_corrupt, shuffle=False,
                            # Its own generator: evaluating must not advance the training RNG streams.
                            generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    device = accelerator.device
    input_dtype = compute_dtype(model)
    totals = torch.zeros(5, dtype=torch.float64, device=device)  # correct1, correct5, count, loss, skipped
    example: torch.Tensor | None = None
    batches = iter(loader)
    while True:
        batch = next(batches, None)
        if accelerator.reduce(torch.tensor([float(batch is not None)], device=device), "sum").item() == 0:
            break
        images, labels, skipped = batch if batch is not None else (torch.empty(0), None, 0)
        totals[4] += skipped
        if images.shape[0] == 0:  # this rank is done, or no image of the batch was readable
            if example is None:
                continue
            images, labels = example[:1], None  # keep collectives in step while other ranks still work
        images = as_model_input(images.to(device, non_blocking=True), input_dtype, channels_last)
        example = images
        with step_autocast(accelerator):
            logits = model(images).float()
        if labels is None:
            continue
        labels = labels.to(device)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top.eq(labels[:, None])
        totals[0] += hits[:, 0].sum()
        totals[1] += hits.any(dim=1).sum()
        totals[2] += labels.numel()
        if criterion is not None:
            totals[3] += criterion(logits, labels).double()
    totals = accelerator.reduce(totals, "sum")
    model.train(was_training)
    count = int(totals[2].item())
    result = {
        "top1": 100.0 * totals[0].item() / max(count, 1),
        "top5": 100.0 * totals[1].item() / max(count, 1),
        "loss": totals[3].item() / max(count, 1),
        "count": count,
        "skipped": int(totals[4].item()),
    }
    if criterion is None:  # nothing was measured: no figure rather than a zero
        del result["loss"]
    return result
