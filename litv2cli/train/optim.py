"""Optimizer parameter groups and the LR schedule of the official recipe (via timm)."""

from __future__ import annotations

from torch import nn
from torch.optim import AdamW
from timm.scheduler import CosineLRScheduler


def param_groups(model: nn.Module, *, lr: float, weight_decay: float, offset_lr_scale: float) -> list[dict]:
    """Three groups, as the official code: decayed weights; 1-D params and biases without decay;
    the DTM offset-conv weights at `offset_lr_scale` x LR (their biases are 1-D, so no-decay group).

    timm's `param_groups_weight_decay` covers the first two but has no LR multiplier, hence
    this function. Each group carries its own absolute `lr`, which the scheduler takes as its base.
    """
    decay, no_decay, offset = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(param)
        elif "conv_offset" in name:
            offset.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "no_decay"},
    ]
    if offset:
        groups.append({"params": offset, "lr": lr * offset_lr_scale, "weight_decay": weight_decay, "name": "offset"})
    return groups


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float, offset_lr_scale: float,
                    betas: tuple[float, float], eps: float) -> AdamW:
    groups = param_groups(model, lr=lr, weight_decay=weight_decay, offset_lr_scale=offset_lr_scale)
    return AdamW(groups, lr=lr, betas=betas, eps=eps)


def build_scheduler(optimizer, *, total_steps: int, warmup_steps: int, warmup_lr: float,
                    min_lr: float) -> CosineLRScheduler:
    """Cosine decay with linear warm-up, stepped per optimizer step (`step_update`).

    Like the official code, `warmup_lr` and `min_lr` are absolute and shared by all groups, so
    the offset group (base LR 0.01x) ends its warm-up near `min_lr` and stays there; we keep this
    on purpose to reproduce the paper's training.
    """
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total_steps, 1),
        lr_min=min_lr,
        warmup_lr_init=warmup_lr,
        warmup_t=warmup_steps,
        cycle_limit=1,
        t_in_epochs=False,
    )
