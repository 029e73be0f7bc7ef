"""Mixup/CutMix and the matching loss, from timm, as the official recipe uses them."""

from __future__ import annotations

from torch import nn
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from litv2cli.recipe import Recipe


def build_loss(recipe: Recipe, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    """Mixup folds label smoothing into its soft targets, so the loss is soft-target CE then."""
    if recipe.mixup > 0 or recipe.cutmix > 0:
        mixup = Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                      switch_prob=recipe.mixup_switch_prob, mode="batch",
                      label_smoothing=recipe.label_smoothing, num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    if recipe.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=recipe.label_smoothing)
    return None, nn.CrossEntropyLoss()
