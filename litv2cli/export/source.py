"""The model to export: one of our runs, an official `.pth` or other checkpoint, or a bare variant."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from litv2cli.defaults import PAPER_ALPHA, PAPER_WINDOW
from litv2cli.errors import UserError


@dataclass
class ExportSource:
    """A model in eval mode and one line saying where its weights came from."""

    model: nn.Module
    variant: str
    description: str
    trained: bool  # False for a bare variant (random initialisation)


def load_export_source(checkpoint: str | None, variant: str | None, *, seed: int = 0) -> ExportSource:
    """Build the model of `checkpoint` (checked against `variant` when given), or a bare `variant`.

    The architecture (alpha, windows) comes from the run's recipe for our runs and is the paper's
    for other checkpoints; a checkpoint that does not fit is a `UserError` listing the keys.
    """
    from litv2cli.models import create_model

    variant = _variant_name(variant) if variant is not None else None
    if checkpoint is None:
        if variant is None:
            raise UserError("give --checkpoint, or --variant to export a randomly initialised model")
        torch.manual_seed(seed)
        model = create_model(variant).eval()
        return ExportSource(model, variant, f"no checkpoint: LITv2-{variant.upper()} with random weights "
                            f"(seed {seed}), for deployment tests only", trained=False)

    from litv2cli.weights.inspect import inspect_checkpoint
    from litv2cli.weights.reading import load_into

    info = inspect_checkpoint(checkpoint, variant=variant)
    alpha, window = (info.recipe.alpha, tuple(info.recipe.window)) if info.recipe else (PAPER_ALPHA, PAPER_WINDOW)
    model = create_model(info.variant, num_classes=info.num_classes, alpha=alpha, local_ws=window)
    report = load_into(model, info.state_dict, source=checkpoint, allow_new_head=False)
    description = (f"checkpoint {checkpoint}: LITv2-{info.variant.upper()}, alpha {alpha:g}, window "
                   f"{','.join(map(str, window))}, {info.num_classes or 'no'} classes, {report.summary()}")
    return ExportSource(model.eval(), info.variant, description, trained=True)


def _variant_name(variant: str) -> str:
    """'S', 'litv2_s' -> 's' (the registry key); an unknown name is a `UserError`."""
    from litv2cli.models import VARIANTS, variant_spec

    spec = variant_spec(variant)
    return next(key for key, value in VARIANTS.items() if value is spec)
