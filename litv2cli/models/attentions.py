"""The attentions the paper compares HiLo with (Table 4, Figure 3), small and readable.

Each drops into a LITv2 stage in place of HiLo, with the same constructor
`(dim, num_heads, window_size, alpha, qkv_bias=True)`, `forward(x, height, width)` and
`flops(height, width)` counted like `hilo_flops`. `alpha` is ignored. `window_size` is the
stage's own value (2 in stage 3, 1 in stage 4 for LITv2-S): SRA and Twins' global attention take
it as their reduction ratio (PVT's and Twins' own ratios for those stages), MSA ignores it, and
Swin's and Twins' local attentions keep their 7 x 7 windows. Swin and Twins alternate two kinds of
block but the registry builds every block with one class, so a "w_msa" or "t_msa" model goes
through `alternate_blocks` once after construction (`build_attention_backbone` in
`litv2cli.bench` does it). Maps of any size are padded and cropped back, as `HiLo` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from litv2cli.models.hilo import pad_to_window
from litv2cli.models.litv2 import ATTENTIONS

SWIN_WINDOW = 7  # Swin-T's and Twins-SVT's window size at 224


def windowed_tokens(padded: torch.Tensor, window: int) -> torch.Tensor:
    """(B, Hp, Wp, C) -> (B * windows, window * window, C), windows in row-major order."""
    B, Hp, Wp, C = padded.shape
    x = padded.view(B, Hp // window, window, Wp // window, window, C).transpose(2, 3)
    return x.reshape(-1, window * window, C)


def merge_windows(windows: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `windowed_tokens`: (B * windows, window * window, C) -> (B, Hp, Wp, C)."""
    window = int(round(windows.shape[1] ** 0.5))
    C = windows.shape[-1]
    x = windows.view(batch, height // window, width // window, window, window, C).transpose(2, 3)
    return x.reshape(batch, height, width, C)


def split_heads(tokens: torch.Tensor, parts: int, num_heads: int) -> tuple[torch.Tensor, ...]:
    """(B, N, parts * C) -> `parts` tensors of shape (B, heads, N, head_dim)."""
    B, N, _ = tokens.shape
    return tokens.view(B, N, parts, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, head_dim) -> (B, N, heads * head_dim)."""
    B, heads, N, head_dim = out.shape
    return out.transpose(1, 2).reshape(B, N, heads * head_dim)


class MSA(nn.Module):
    """Global multi-head self-attention: every token attends to every token."""

    def __init__(self, dim: int, num_heads: int, window_size: int, alpha: float, qkv_bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dim, self.num_heads = dim, num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        q, k, v = split_heads(self.qkv(x), 3, self.num_heads)  # (B, heads, N, head_dim) each
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))

    def flops(self, height: int, width: int) -> float:
        tokens, C = height * width, self.dim
        return tokens * C * 3 * C + 2 * tokens * tokens * C + tokens * C * C


class SRA(nn.Module):
    """PVT's spatial-reduction attention (also Twins' global sub-sampled attention, GSA).

    Queries from every token; keys and values from the map reduced `reduction` times per side
    by a `reduction` x `reduction` stride-`reduction` conv and a LayerNorm. Reduction 1 is MSA.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, alpha: float, qkv_bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dim, self.num_heads, self.reduction = dim, num_heads, window_size
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        if self.reduction > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=self.reduction, stride=self.reduction, **dd)
            self.norm = nn.LayerNorm(dim, **dd)

    def reduced(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, N, C) -> (B, N / reduction^2, C): the tokens keys and values are made from."""
        if self.reduction == 1:
            return x
        B, _, C = x.shape
        padded = pad_to_window(x.view(B, height, width, C), self.reduction)  # (B, Hp, Wp, C)
        reduced = self.sr(padded.permute(0, 3, 1, 2))  # (B, C, Hp/r, Wp/r), channels-last strides
        return self.norm(reduced.flatten(2).transpose(1, 2))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).view(B, N, self.num_heads, -1).transpose(1, 2)  # (B, heads, N, head_dim)
        k, v = split_heads(self.kv(self.reduced(x, height, width)), 2, self.num_heads)  # (B, heads, N/r^2, hd)
        return self.proj(merge_heads(F.scaled_dot_product_attention(q, k, v)))

    def flops(self, height: int, width: int) -> float:
        r, C = self.reduction, self.dim
        tokens = height * width
        reduced = -(-height // r) * -(-width // r)  # ceil: the padded map
        total = tokens * C * C + reduced * C * 2 * C + 2 * tokens * reduced * C + tokens * C * C
        if r > 1:
            total += reduced * (r * r * C * C + C) + reduced * C  # sr conv (with bias) and its norm
        return total

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, reduction={self.reduction}"


class WindowAttention(nn.Module):
    """Swin's W-MSA: self-attention inside 7 x 7 windows; shifted by 3 when `shifted` is True.

    Swin's relative position bias is left out: LITv2 uses none (its depthwise convs carry the
    position), and the bias changes neither the FLOPs that count nor the kernel that runs.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, alpha: float, qkv_bias: bool = True,
                 window: int = SWIN_WINDOW, shifted: bool = False, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dim, self.num_heads, self.window, self.shifted = dim, num_heads, window, shifted
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)

    def layout(self, height: int, width: int) -> tuple[int, int]:
        """(window, shift) on a height x width map: one map-sized window, unshifted, if it is small."""
        if min(height, width) <= self.window:
            return min(height, width), 0
        return self.window, self.window // 2 if self.shifted else 0

    def alternate(self) -> WindowAttention:
        """This module, shifted (for every second block of a stage)."""
        self.shifted = True
        return self

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        B, N, C = x.shape
        window, shift = self.layout(height, width)
        padded = pad_to_window(x.view(B, height, width, C), window)  # (B, Hp, Wp, C)
        Hp, Wp = padded.shape[1:3]
        if shift:
            padded = torch.roll(padded, shifts=(-shift, -shift), dims=(1, 2))
        windows = windowed_tokens(padded, window)  # (B * windows, window^2, C)
        q, k, v = split_heads(self.qkv(windows), 3, self.num_heads)  # (B * windows, heads, window^2, hd)
        mask = shift_mask(Hp, Wp, window, shift, x.device).repeat(B, 1, 1, 1) if shift else None
        out = merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))  # (B * windows, window^2, C)
        out = merge_windows(self.proj(out), B, Hp, Wp)  # (B, Hp, Wp, C)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        return out[:, :height, :width].reshape(B, N, C)

    def flops(self, height: int, width: int) -> float:
        window, _ = self.layout(height, width)
        tokens = window * -(-height // window) * window * -(-width // window)  # padded map
        C = self.dim
        return tokens * C * 3 * C + 2 * tokens * window * window * C + tokens * C * C

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, window={self.window}, shifted={self.shifted}"


def shift_mask(height: int, width: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """(windows, 1, window^2, window^2) booleans, True where two tokens of a shifted window were
    neighbours before the cyclic shift (Swin's region mask)."""
    regions = torch.zeros(height, width, dtype=torch.long, device=device)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            regions[rows, cols] = label
            label += 1
    labels = windowed_tokens(regions.view(1, height, width, 1), window).squeeze(-1)  # (windows, window^2)
    return (labels[:, :, None] == labels[:, None, :]).unsqueeze(1)


class TwinsLocalAttention(WindowAttention):
    """Twins-SVT's locally-grouped self-attention (LSA): 7 x 7 windows, never shifted. Every
    second block becomes global sub-sampled attention (`SRA`) through `alternate`."""

    def __init__(self, dim: int, num_heads: int, window_size: int, alpha: float, qkv_bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__(dim, num_heads, window_size, alpha, qkv_bias=qkv_bias, device=device, dtype=dtype)
        self.reduction, self.qkv_bias = window_size, qkv_bias

    def alternate(self) -> SRA:
        weight = self.qkv.weight  # the new module lives where this one does
        return SRA(self.dim, self.num_heads, self.reduction, 0.0, qkv_bias=self.qkv_bias, device=weight.device,
                   dtype=weight.dtype)


def alternate_blocks(model: nn.Module) -> nn.Module:
    """Turn every second block of each stage into the other kind of an alternating attention
    (shifted W-MSA for Swin, GSA for Twins); other attentions are left as they are."""
    for stage in model.layers:
        for index, block in enumerate(stage.blocks):
            attn = getattr(block, "attn", None)
            if index % 2 == 1 and hasattr(attn, "alternate"):
                block.attn = attn.alternate()
    return model


COMPARED_ATTENTIONS: dict[str, type[nn.Module]] = {
    "msa": MSA,
    "sra": SRA,
    "w_msa": WindowAttention,
    "t_msa": TwinsLocalAttention,
}
# Registered next to HiLo, so `create_model(..., attention="sra")` builds them.
ATTENTIONS.update(COMPARED_ATTENTIONS)
