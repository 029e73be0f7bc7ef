"""DTM's deformable convolution written with standard ONNX operators (GridSample + Conv).

When the kernel equals the stride (k x k, stride k, no padding; DTM has k = 2), every sample
belongs to exactly one output position and one tap, so one bilinear `grid_sample` can gather all
samples into a (B, C, k*Ho, k*Wo) map, and a plain k x k stride-k conv of that map with the same
weights is the deformable conv. With zero padding and `align_corners=False`, `grid_sample` reads a
corner outside the map as zero, as `torchvision.ops.deform_conv2d` and ONNX `DeformConv` do, so
the two agree to float rounding. This form is for runtimes without a `DeformConv` kernel
(onnxruntime before 2026, TensorRT without a plugin); the exporter writes it from opset 18 on.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from litv2cli.models.dtm import DeformConv2d


class GridSampleDeformConv2d(nn.Module):
    """Same parameters and outputs as a `DeformConv2d` with kernel == stride, without its op."""

    def __init__(self, deform: DeformConv2d):
        super().__init__()
        kernel = deform.weight.shape[-1]
        if deform.weight.shape[-2] != kernel or deform.stride != kernel:
            raise ValueError(f"the GridSample form needs a square kernel equal to the stride; got kernel "
                             f"{tuple(deform.weight.shape[-2:])}, stride {deform.stride}")
        self.kernel = kernel
        self.weight, self.bias, self.conv_offset = deform.weight, deform.bias, deform.conv_offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.conv_offset(x)  # (B, 2*k*k, Ho, Wo): (dy, dx) per tap, taps in row-major order
        batch, _, out_h, out_w = offset.shape
        height, width = x.shape[-2:]
        k = self.kernel
        # (B, k_row, k_col, yx, Ho, Wo) -> (B, Ho, k_row, Wo, k_col, yx) -> (B, k*Ho, k*Wo, 2)
        offset = offset.view(batch, k, k, 2, out_h, out_w).permute(0, 4, 1, 5, 2, 3).reshape(
            batch, k * out_h, k * out_w, 2)
        rows = torch.arange(k * out_h, dtype=x.dtype, device=x.device).view(1, -1, 1) + offset[..., 0]
        cols = torch.arange(k * out_w, dtype=x.dtype, device=x.device).view(1, 1, -1) + offset[..., 1]
        # Pixel positions -> grid_sample's [-1, 1] coordinates (align_corners=False), x first.
        grid = torch.stack(((2 * cols + 1) / width - 1, (2 * rows + 1) / height - 1), dim=-1)
        samples = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return F.conv2d(samples, self.weight, self.bias, stride=k)  # (B, C_out, Ho, Wo)


def with_gridsample_deform_convs(model: nn.Module) -> nn.Module:
    """A copy of `model` whose every `DeformConv2d` runs as GridSample + Conv (weights shared by value)."""
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, DeformConv2d):
                setattr(parent, name, GridSampleDeformConv2d(child))
    return model
