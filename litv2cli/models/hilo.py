"""HiLo attention (paper section 4.1), written for speed.

Hi-Fi heads attend inside non-overlapping s x s windows (local, high frequencies); Lo-Fi heads
attend from every query to keys/values of the s x s average-pooled map (global, low
frequencies). The outputs are concatenated, Hi-Fi first, as in the official checkpoints.

Both branches run on `F.scaled_dot_product_attention`, tokens stay in (B, H, W, C) order so
the linear layers see contiguous rows, and the only copies are the window partition and its
inverse. Maps of any size work: the normalised map is zero-padded bottom/right to a multiple
of s and the output cropped back, as the official detection backbone (and its FLOP counter)
does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def split_heads(num_heads: int, window_size: int, alpha: float) -> tuple[int, int]:
    """(hifi_heads, lofi_heads). `int(heads * alpha)` Lo-Fi heads as the official code does
    (so 0.7 * 10 floors to 6); window 1 means plain global attention: every head is Lo-Fi."""
    if window_size < 1:
        raise ValueError(f"HiLo window size must be >= 1, got {window_size}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"HiLo alpha must lie in [0, 1], got {alpha}")
    lofi_heads = num_heads if window_size == 1 else int(num_heads * alpha)
    return num_heads - lofi_heads, lofi_heads


def pad_to_window(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Zero-pad a (B, H, W, C) map at the bottom/right so H and W are multiples of the window."""
    pad_bottom = -x.shape[1] % window_size
    pad_right = -x.shape[2] % window_size
    if pad_bottom or pad_right:
        x = F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))
    return x


class HiLo(nn.Module):
    """HiLo attention over a (B, N, C) token map of a given height and width.

    Parameter names (`h_qkv`, `h_proj`, `l_q`, `l_kv`, `l_proj`) are the official ones; a branch
    with no heads has no layers at all, so its keys are absent from the state dict.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, alpha: float, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.window_size, self.alpha = dim, num_heads, window_size, alpha
        self.head_dim = dim // num_heads
        self.hifi_heads, self.lofi_heads = split_heads(num_heads, window_size, alpha)
        self.hifi_dim, self.lofi_dim = self.hifi_heads * self.head_dim, self.lofi_heads * self.head_dim
        if self.lofi_heads:
            self.l_q = nn.Linear(dim, self.lofi_dim, bias=qkv_bias)
            self.l_kv = nn.Linear(dim, 2 * self.lofi_dim, bias=qkv_bias)
            self.l_proj = nn.Linear(self.lofi_dim, self.lofi_dim)
        if self.hifi_heads:
            self.h_qkv = nn.Linear(dim, 3 * self.hifi_dim, bias=qkv_bias)
            self.h_proj = nn.Linear(self.hifi_dim, self.hifi_dim)

    def hifi(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention inside each s x s window of a padded (B, Hp, Wp, C) map."""
        B, Hp, Wp, _ = x.shape
        s, heads, hd = self.window_size, self.hifi_heads, self.head_dim
        rows, cols = Hp // s, Wp // s
        # Partition after the projection: 3 * hifi_dim channels to move instead of C.
        qkv = self.h_qkv(x).view(B, rows, s, cols, s, 3, heads, hd)
        qkv = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, B * rows * cols, heads, s * s, hd)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B*windows, heads, s*s, hd)
        out = out.view(B, rows, cols, heads, s, s, hd).permute(0, 1, 4, 2, 5, 3, 6)  # (B, rows, s, cols, s, heads, hd)
        return self.h_proj(out.reshape(B, Hp, Wp, self.hifi_dim))

    def lofi(self, x: torch.Tensor) -> torch.Tensor:
        """Every query attends to the keys/values of the s x s average-pooled (B, Hp, Wp, C) map."""
        B, Hp, Wp, C = x.shape
        s, heads, hd = self.window_size, self.lofi_heads, self.head_dim
        q = self.l_q(x).view(B, Hp * Wp, heads, hd).transpose(1, 2)  # (B, heads, Hp*Wp, hd)
        if s > 1:
            # (B, C, Hp, Wp) view with channels-last strides: pooling needs no copy either way.
            x = F.avg_pool2d(x.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)  # (B, Hp/s, Wp/s, C)
        kv = self.l_kv(x).view(B, -1, 2, heads, hd).permute(2, 0, 3, 1, 4)  # (2, B, heads, Hp*Wp/s^2, hd)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # (B, heads, Hp*Wp, hd)
        return self.l_proj(out.transpose(1, 2).reshape(B, Hp, Wp, self.lofi_dim))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        B, N, C = x.shape
        padded = pad_to_window(x.reshape(B, height, width, C), self.window_size)  # (B, Hp, Wp, C)
        branches = []
        if self.hifi_heads:
            branches.append(self.hifi(padded)[:, :height, :width])
        if self.lofi_heads:
            branches.append(self.lofi(padded)[:, :height, :width])
        out = branches[0] if len(branches) == 1 else torch.cat(branches, dim=-1)  # (B, H, W, C)
        return out.reshape(B, N, C)

    def flops(self, height: int, width: int) -> float:
        from litv2cli.models.flops import hilo_flops

        return hilo_flops(self.dim, self.hifi_dim, self.lofi_dim, self.window_size, height, width)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, window_size={self.window_size}, "
                f"hifi_heads={self.hifi_heads}, lofi_heads={self.lofi_heads}")
