"""What a checkpoint is: its variant, alpha, window and class count, read from our run's config
or, for official `.pth` files, from the shapes of its tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from litv2cli.recipe import Recipe
from litv2cli.errors import UserError
from litv2cli.weights.reading import read_state_dict, run_recipe


@dataclass
class CheckpointInfo:
    path: str
    state_dict: dict[str, torch.Tensor]
    variant: str
    num_classes: int
    recipe: Recipe | None  # the run's own recipe when the checkpoint is one of our runs


def infer_variant(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The registered variant whose embed dim and depths match the tensors, if any."""
    from litv2cli.models import VARIANTS

    if "patch_embed.proj.weight" not in state_dict:
        return None
    embed_dim = state_dict["patch_embed.proj.weight"].shape[0]
    depths = tuple(
        len({k.split(".")[3] for k in state_dict if k.startswith(f"layers.{stage}.blocks.")}) for stage in range(4)
    )
    for name, spec in VARIANTS.items():
        if spec.embed_dim == embed_dim and tuple(spec.depths) == depths:
            return name
    return None


def inspect_checkpoint(path: str | Path, *, variant: str | None) -> CheckpointInfo:
    """Read a checkpoint once and check it is the variant the user asked for."""
    state_dict = read_state_dict(path)
    recipe = run_recipe(path)
    found = recipe.variant if recipe is not None else infer_variant(state_dict)
    if found is None:
        raise UserError(f"{path}: not a LITv2 checkpoint (no registered variant matches its tensors)")
    if variant is not None and variant != found:
        raise UserError(f"{path} is a LITv2-{found.upper()} checkpoint, not LITv2-{variant.upper()}")
    head = state_dict.get("head.weight")
    num_classes = int(head.shape[0]) if head is not None else 0
    return CheckpointInfo(str(path), state_dict, found, num_classes, recipe)
