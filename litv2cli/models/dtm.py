"""Deformable token merging (DTM): the 2x downsampling between LITv2 stages.

A 2x2 stride-2 deformable conv (C -> 2C) whose offsets come from a plain 2x2 stride-2 conv, then
BatchNorm and GELU. The offset layout is that of `torchvision.ops.deform_conv2d`, which the
official weights use, so they load one to one. torchvision's CPU kernel fills its im2col buffer
one sample at a time on one core, which makes DTM a large part of LITv2's time on a CPU;
`deform_conv2d_gather` computes the same function as one `embedding_bag` over the (B*H*W, C)
token rows and one GEMM, with ops that use every core. On a GPU torchvision's CUDA kernel is the
faster one, and CUDA has no bf16 backward for a weighted `embedding_bag`, so the gather runs on a
CPU only (BENCHMARKS.md has both). Export and TorchScript also take torchvision's op (ONNX
translates it to DeformConv).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import is_scriptable, register_notrace_module
from torch import nn
from torchvision.ops import deform_conv2d

from litv2cli.models.capture import exporting


def bilinear_neighbours(offset: torch.Tensor, kernel: tuple[int, int], stride: int, height: int, width: int,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat pixel indices and bilinear weights, (B * Ho * Wo * taps, 4) each, of the four
    neighbours of every sampling point. A neighbour outside the map weighs 0 (torchvision's
    rule: zero padding), and its index is clamped into the map, so every index is valid."""
    batch, _, out_h, out_w = offset.shape
    kh, kw = kernel
    # Positions in at least float32 (bf16 would round 55.3 to 55.25), whatever the offsets' dtype.
    offset = offset.to(torch.promote_types(offset.dtype, torch.float32))
    offset = offset.view(batch, kh * kw, 2, out_h, out_w).permute(0, 3, 4, 1, 2)  # (B, Ho, Wo, taps, yx)
    taps_y = torch.arange(kh, device=offset.device).repeat_interleave(kw)  # taps in row-major order
    taps_x = torch.arange(kw, device=offset.device).repeat(kh)
    y = (torch.arange(out_h, device=offset.device) * stride)[:, None, None] + taps_y + offset[..., 0]
    x = (torch.arange(out_w, device=offset.device) * stride)[:, None] + taps_x + offset[..., 1]
    y0, x0 = y.floor(), x.floor()
    fy, fx = y - y0, x - x0  # (B, Ho, Wo, taps)
    # Neighbours in torchvision's order: (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1).
    rows = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=-1)
    cols = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=-1)
    weights = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], dim=-1)
    inside = (rows >= 0) & (rows <= height - 1) & (cols >= 0) & (cols <= width - 1)  # False for NaN too
    rows = torch.where(inside, rows, 0).long()
    cols = torch.where(inside, cols, 0).long()
    image = torch.arange(batch, device=offset.device).view(batch, 1, 1, 1, 1) * (height * width)
    index = image + rows * width + cols
    return index.view(-1, 4), (weights * inside).view(-1, 4)


def deform_conv2d_gather(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         stride: int = 1) -> torch.Tensor:
    """`torchvision.ops.deform_conv2d(x, offset, weight, bias, stride)` (no padding, dilation 1,
    one offset group, no mask) as a gather and one GEMM. Returns (B, C_out, Ho, Wo) with
    channels-last strides; a channels-last `x` is read without a copy."""
    batch, channels, height, width = x.shape
    out_chans, _, kh, kw = weight.shape
    out_h, out_w = offset.shape[-2:]
    index, weights = bilinear_neighbours(offset, (kh, kw), stride, height, width)
    pixels = x.permute(0, 2, 3, 1).reshape(batch * height * width, channels)  # one row per pixel
    samples = F.embedding_bag(index, pixels, per_sample_weights=weights.to(pixels.dtype), mode="sum")
    columns = samples.view(batch * out_h * out_w, kh * kw * channels)  # one row per output: taps x channels
    kernel = weight.permute(0, 2, 3, 1).reshape(out_chans, kh * kw * channels)  # same tap-major order
    out = F.linear(columns, kernel, bias)  # (B * Ho * Wo, C_out)
    return out.view(batch, out_h, out_w, out_chans).permute(0, 3, 1, 2)


def gather_is_faster(x: torch.Tensor) -> bool:
    """Whether `deform_conv2d_gather` beats torchvision's kernel on `x`'s device: on a CPU."""
    return x.device.type == "cpu"


@register_notrace_module  # torch.fx sees one call: the kernel choice depends on device, dtype, export
class DeformConv2d(nn.Module):
    """Deformable conv that predicts its own offsets (keys `weight`, `bias`, `conv_offset.*`).
    `reference` runs torchvision's kernel instead of the gather; TorchScript always does."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 2, stride: int = 2,
                 reference: bool = False, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.stride, self.reference = stride, reference
        self.weight = nn.Parameter(torch.empty(out_chans, in_chans, kernel_size, kernel_size, **dd))
        self.bias = nn.Parameter(torch.zeros(out_chans, **dd))
        self.conv_offset = nn.Conv2d(in_chans, 2 * kernel_size * kernel_size, kernel_size, stride, **dd)
        bound = 1.0 / math.sqrt(in_chans * kernel_size * kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        # Zero offsets: training starts from a plain strided conv and learns to deform it.
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.conv_offset(x)  # (B, 2*k*k, H/2, W/2)
        if not torch.jit.is_scripting():  # a static test: TorchScript compiles torchvision's op only
            if gather_is_faster(x) and not (self.reference or exporting()):
                return deform_conv2d_gather(x, offset, self.weight, self.bias, stride=self.stride)
        return self.torchvision_deform_conv(x, offset)

    def torchvision_deform_conv(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """torchvision's op. Its CPU kernel has no bfloat16 form and no autocast rule (mixed
        dtypes fail), so anything but one full-precision dtype runs on float32 copies and
        returns `x`'s dtype, as torchvision's CUDA autocast rule does."""
        full_precision = x.dtype == torch.float32 or x.dtype == torch.float64
        if full_precision and x.dtype == offset.dtype and x.dtype == self.weight.dtype:
            return deform_conv2d(x, offset, self.weight, self.bias, stride=(self.stride, self.stride))
        out = deform_conv2d(x.float(), offset.float(), self.weight.float(), self.bias.float(),
                            stride=(self.stride, self.stride))
        return out.to(x.dtype)


@register_notrace_module  # torch.fx sees one call: the path depends on the input's dtype
class FloatBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm computed in float32 whatever the input's dtype, output in the input's dtype.
    DeepSpeed's bf16/fp16 casts the parameters but keeps buffers (the running statistics) in
    float32, which no batch-norm kernel accepts side by side; and statistics of a batch summed
    in bf16 would lose most of their bits anyway. Same state dict as `nn.BatchNorm2d`, which
    scripted models use instead (TorchScript has no `super()`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        statistics = self.running_mean.dtype if self.running_mean is not None else torch.float32
        if x.dtype in (torch.float32, torch.float64) or statistics != torch.float32:
            return super().forward(x)  # one dtype throughout (a module cast whole works as it is)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        with torch.autocast(x.device.type, enabled=False):
            return F.batch_norm(
                x.float(), self.running_mean, self.running_var, _float(self.weight), _float(self.bias),
                self.training or not self.track_running_stats, self.momentum or 0.0, self.eps).to(x.dtype)


def _float(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.float()


class DTM(nn.Module):
    """Merge each 2x2 neighbourhood (deformably) into one token with twice the channels."""

    def __init__(self, dim: int, reference: bool = False, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dconv = DeformConv2d(dim, 2 * dim, reference=reference, **dd)
        self.norm_layer = (nn.BatchNorm2d if is_scriptable() else FloatBatchNorm2d)(2 * dim, **dd)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int, int]:
        """(B, H*W, C) tokens -> (B, H/2 * W/2, 2C) tokens and the new height and width."""
        B, N, C = x.shape
        x = self.dconv(x.reshape(B, height, width, C).permute(0, 3, 1, 2))  # (B, 2C, H/2, W/2)
        x = self.act(self.norm_layer(x))
        height, width = x.shape[2], x.shape[3]
        # A view when the conv's output is channels-last (the gather's is); a copy otherwise.
        return x.permute(0, 2, 3, 1).reshape(B, height * width, -1), height, width  # (B, H/2 * W/2, 2C)
