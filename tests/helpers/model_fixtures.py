"""Model helpers shared by tests."""

import torch
from torch import nn

from litv2cli.models.dtm import DeformConv2d


def learned_offsets(deform: DeformConv2d, scale: float = 1.0, generator: torch.Generator | None = None,
                    ) -> DeformConv2d:
    """Offsets of about `scale` pixels, as training produces (the initial ones are all zero,
    which makes a deformable conv a plain one and tests nothing of its sampling)."""
    weight, bias = deform.conv_offset.weight, deform.conv_offset.bias
    with torch.no_grad():
        weight.copy_(torch.randn(weight.shape, generator=generator) * scale / weight[0].numel() ** 0.5)
        bias.copy_(torch.randn(bias.shape, generator=generator) * scale / 2)
    return deform


def with_learned_offsets(model: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """`learned_offsets` in every DTM of `model`, reproducibly from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, DeformConv2d):
            learned_offsets(module, scale, generator)
    return model
