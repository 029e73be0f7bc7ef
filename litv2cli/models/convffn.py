"""The LITv2 feed-forward network: fc1 -> 3x3 depthwise conv -> GELU -> fc2 (paper section 4.2).

The zero-padded depthwise conv replaces position encodings and widens the receptive field of
the attention-free early stages. Height and width are passed in, never recovered from N, so
non-square maps work (the official classification code assumes sqrt(N)).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class DWConv(nn.Module):
    """3x3 depthwise conv over a (B, N, C) token map; the wrapper keeps the official key
    `mlp.dwconv.dwconv.*`."""

    def __init__(self, dim: int, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim, bias=True,
                                device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        B, N, C = x.shape
        # (B, C, H, W) with channels-last strides: a view, and the conv keeps that layout, so
        # the permute back is free as well.
        x = self.dwconv(x.reshape(B, height, width, C).permute(0, 3, 1, 2))
        return x.permute(0, 2, 3, 1).reshape(B, N, C)


class ConvFFN(nn.Module):
    """Token MLP with a depthwise conv between its two linear layers."""

    def __init__(self, dim: int, hidden_dim: int, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.fc1 = nn.Linear(dim, hidden_dim, **dd)
        self.dwconv = DWConv(hidden_dim, **dd)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim, **dd)
        conv = self.dwconv.dwconv
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
        nn.init.normal_(conv.weight, std=math.sqrt(2.0 / fan_out))
        nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.fc1(x)  # (B, N, hidden)
        x = self.act(self.dwconv(x, height, width))
        return self.fc2(x)  # (B, N, C)
