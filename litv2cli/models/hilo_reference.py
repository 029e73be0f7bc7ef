"""HiLo written the way the paper states it, for checking and benchmarking the fast version.

    Hi-Fi(X) = concat over s x s windows of softmax(Q K^T / sqrt(d)) V     (per window)
    Lo-Fi(X) = softmax(Q K^T / sqrt(d)) V, with K, V from AvgPool_s(X)    (global)
    HiLo(X)  = [Hi-Fi(X); Lo-Fi(X)]                                        (eq. 6)

Explicit attention matrices, window partition before the projections, one step per line.
Same parameter names and head split as `HiLo`, so their state dicts are interchangeable. Plain
enough for TorchScript and torch.fx, so scripted models are built with it (`LITv2`).
"""

from __future__ import annotations

import torch
from torch import nn

from litv2cli.models.flops import hilo_flops
from litv2cli.models.hilo import pad_to_window, split_heads


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V on (..., tokens, d) tensors."""
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (..., Nq, Nk)
    return scores.softmax(dim=-1) @ v  # (..., Nq, d)


class HiLoReference(nn.Module):
    """Straightforward HiLo: same parameters and outputs as `HiLo`, none of its shortcuts."""

    def __init__(self, dim: int, num_heads: int, window_size: int, alpha: float, qkv_bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dim, self.num_heads, self.window_size, self.alpha = dim, num_heads, window_size, alpha
        self.head_dim = dim // num_heads
        self.hifi_heads, self.lofi_heads = split_heads(num_heads, window_size, alpha)
        self.hifi_dim, self.lofi_dim = self.hifi_heads * self.head_dim, self.lofi_heads * self.head_dim
        if self.lofi_heads:
            self.lofi_pool = nn.AvgPool2d(window_size)
            self.l_q = nn.Linear(dim, self.lofi_dim, bias=qkv_bias, **dd)
            self.l_kv = nn.Linear(dim, 2 * self.lofi_dim, bias=qkv_bias, **dd)
            self.l_proj = nn.Linear(self.lofi_dim, self.lofi_dim, **dd)
        if self.hifi_heads:
            self.h_qkv = nn.Linear(dim, 3 * self.hifi_dim, bias=qkv_bias, **dd)
            self.h_proj = nn.Linear(self.hifi_dim, self.hifi_dim, **dd)

    def hifi(self, x: torch.Tensor) -> torch.Tensor:
        B, Hp, Wp, C = x.shape
        s, heads, hd = self.window_size, self.hifi_heads, self.head_dim
        rows, cols = Hp // s, Wp // s
        windows = x.reshape(B, rows, s, cols, s, C).transpose(2, 3).reshape(B, rows * cols, s * s, C)
        qkv = self.h_qkv(windows).reshape(B, rows * cols, s * s, 3, heads, hd).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, windows, heads, s*s, hd)
        out = attention(q, k, v).transpose(2, 3)  # (B, windows, s*s, heads, hd)
        out = out.reshape(B, rows, cols, s, s, self.hifi_dim).transpose(2, 3).reshape(B, Hp, Wp, self.hifi_dim)
        return self.h_proj(out)

    def lofi(self, x: torch.Tensor) -> torch.Tensor:
        B, Hp, Wp, C = x.shape
        heads, hd = self.lofi_heads, self.head_dim
        q = self.l_q(x).reshape(B, Hp * Wp, heads, hd).permute(0, 2, 1, 3)  # (B, heads, N, hd)
        pooled = self.lofi_pool(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)  # (B, N/s^2, C)
        kv = self.l_kv(pooled).reshape(B, -1, 2, heads, hd).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]  # (B, heads, N/s^2, hd)
        out = attention(q, k, v).transpose(1, 2).reshape(B, Hp, Wp, self.lofi_dim)
        return self.l_proj(out)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        B, N, C = x.shape
        x = pad_to_window(x.reshape(B, height, width, C), self.window_size)
        outputs: list[torch.Tensor] = []
        # A branch without heads has no layers; TorchScript compiles only what `hasattr` finds.
        if hasattr(self, "h_qkv"):
            outputs.append(self.hifi(x)[:, :height, :width])
        if hasattr(self, "l_q"):
            outputs.append(self.lofi(x)[:, :height, :width])
        return torch.cat(outputs, dim=-1).reshape(B, N, C)

    def flops(self, height: int, width: int) -> float:
        return hilo_flops(self.dim, self.hifi_dim, self.lofi_dim, self.window_size, height, width)
