"""Deformable token merging (DTM): the 2x downsampling between LITv2 stages.

A 2x2 stride-2 deformable conv (C -> 2C) whose sampling offsets come from a plain 2x2 stride-2
conv, then BatchNorm and GELU. Built on `torchvision.ops.deform_conv2d`, whose offset layout
((dy, dx) per kernel tap, no modulation mask) is the one the official weights use, so they load
one to one. No resolution is fixed at construction.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import deform_conv2d


class DeformConv2d(nn.Module):
    """Deformable conv that predicts its own offsets (keys `weight`, `bias`, `conv_offset.*`)."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 2, stride: int = 2):
        super().__init__()
        self.stride = stride
        self.weight = nn.Parameter(torch.empty(out_chans, in_chans, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_chans))
        self.conv_offset = nn.Conv2d(in_chans, 2 * kernel_size * kernel_size, kernel_size, stride)
        bound = 1.0 / math.sqrt(in_chans * kernel_size * kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        # Zero offsets: training starts from a plain strided conv and learns to deform it.
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.conv_offset(x)  # (B, 2*k*k, H/2, W/2)
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride)


class DTM(nn.Module):
    """Merge each 2x2 neighbourhood (deformably) into one token with twice the channels."""

    def __init__(self, dim: int):
        super().__init__()
        self.dconv = DeformConv2d(dim, 2 * dim)
        self.norm_layer = nn.BatchNorm2d(2 * dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, int, int]:
        """(B, H*W, C) tokens -> (B, H/2 * W/2, 2C) tokens and the new height and width."""
        B, N, C = x.shape
        x = self.dconv(x.reshape(B, height, width, C).permute(0, 3, 1, 2))  # (B, 2C, H/2, W/2)
        x = self.act(self.norm_layer(x))
        height, width = x.shape[-2:]
        return x.permute(0, 2, 3, 1).reshape(B, height * width, -1), height, width  # (B, H/2 * W/2, 2C)
