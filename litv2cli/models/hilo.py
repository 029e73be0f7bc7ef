"""HiLo attention (paper section 4.1), written for speed.

Hi-Fi heads attend inside non-overlapping s x s windows (local, high frequencies); Lo-Fi heads
attend from every query to keys/values of the s x s average-pooled map (global, low
frequencies). The outputs are concatenated, Hi-Fi first, as in the official checkpoints.

Where the time goes on a CPU, and what this module does about it (`HiLoReference` is the
paper's equations written out, and the oracle this module must equal):

- The linear layers are most of the work and cannot shrink, so every projection that reads
  the map (Hi-Fi qkv, Lo-Fi q, and Lo-Fi kv when s = 1 and there is no pooling) is one GEMM:
  the map is read once and the GEMM is wider.
- Both branches run on `F.scaled_dot_product_attention` (no attention matrix in memory).
- Hi-Fi windows need no partition copy: s consecutive rows of the map are s * W consecutive
  tokens (a band), so attention runs over each band with a mask that keeps every query in
  its own window. The band's extra scores cost less than two copies of the window partition
  while a band is short (`uses_bands`); longer bands fall back to the partition.
- Lo-Fi pooling reads a channels-last view of the map and feeds `l_kv` directly (pooling
  first: s^2 fewer rows for the GEMM than projecting first).
- Without autograd, `h_proj` and `l_proj` add into the columns of one buffer instead of being
  concatenated: one copy of the whole output map less (4-5% of the layer at batch 64).

Maps of any size work: the normalised map is zero-padded bottom/right to a multiple of s and
the output cropped back, as the official detection backbone (and its FLOP counter) does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from litv2cli.models.capture import capturing

# A band of s rows is attended as one masked sequence while it holds at most
# BAND_TOKEN_BUDGET / s tokens. A longer band's extra scores cost more than the partition's
# copies, and the larger s, the more efficient the partition's own (larger) windows, so the
# limit falls with s. Measured on a 2-core CPU (`python benchmarks/bench_hilo.py band`):
# s = 2 wins up to 112-token bands and loses at 168; s = 4 wins at 56 and loses at 112.
BAND_TOKEN_BUDGET = 256


def uses_bands(window_size: int, padded_width: int) -> bool:
    """Whether Hi-Fi attends over masked bands (True) or over partitioned windows."""
    return window_size * padded_width <= BAND_TOKEN_BUDGET // window_size


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


def band_mask(window_size: int, width: int, device: torch.device) -> torch.Tensor:
    """(s*W, s*W) booleans over a band of s rows of width W: True where two tokens share a window."""
    # The column window of every band token, row after row; no `% width`, which the ONNX exporter
    # cannot translate when the width is dynamic.
    window_of = (torch.arange(width, device=device) // window_size).repeat(window_size)
    return window_of[:, None] == window_of[None, :]


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

    def map_projections(self) -> list[str]:
        """Names of the linear layers that read the map itself (Lo-Fi kv does when s = 1: no pooling)."""
        names = ["h_qkv"] if self.hifi_heads else []
        if self.lofi_heads:
            names += ["l_q", "l_kv"] if self.window_size == 1 else ["l_q"]
        return names

    def project(self, padded: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """(Hi-Fi qkv, Lo-Fi q, Lo-Fi kv) of the (B, Hp, Wp, C) map, views of one GEMM's output;
        None where a branch has no such projection of the map."""
        names = self.map_projections()
        layers = [getattr(self, name) for name in names]
        if len(layers) == 1:
            outputs = [layers[0](padded)]
        else:
            weight = torch.cat([layer.weight for layer in layers])
            bias = torch.cat([layer.bias for layer in layers]) if layers[0].bias is not None else None
            outputs = F.linear(padded, weight, bias).split([layer.out_features for layer in layers], dim=-1)
        projected = dict(zip(names, outputs))
        return projected.get("h_qkv"), projected.get("l_q"), projected.get("l_kv")

    def hifi(self, qkv: torch.Tensor) -> torch.Tensor:
        """Self-attention inside each s x s window, from the (B, Hp, Wp, 3 * hifi_dim) projection;
        the heads' outputs before `h_proj`."""
        B, Hp, Wp, _ = qkv.shape
        s, heads, hd = self.window_size, self.hifi_heads, self.head_dim
        if uses_bands(s, Wp):
            qkv = qkv.reshape(B * Hp // s, s * Wp, 3, heads, hd).permute(2, 0, 3, 1, 4)  # a view
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=band_mask(s, Wp, qkv.device))
            out = out.transpose(1, 2)  # (B*Hp/s, s*Wp, heads, hd): tokens in map order again
        else:
            rows, cols = Hp // s, Wp // s
            qkv = qkv.reshape(B, rows, s, cols, s, 3, heads, hd)
            qkv = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7).reshape(3, B * rows * cols, heads, s * s, hd)
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B*windows, heads, s*s, hd)
            out = out.view(B, rows, cols, heads, s, s, hd).permute(0, 1, 4, 2, 5, 3, 6)  # (B, rows, s, cols, s, ...)
        return out.reshape(B, Hp, Wp, self.hifi_dim)

    def lofi(self, q: torch.Tensor, padded: torch.Tensor, kv: torch.Tensor | None) -> torch.Tensor:
        """Every query attends to the keys/values of the s x s average-pooled map. `q` is the
        (B, Hp, Wp, lofi_dim) projection; `kv` is given when s = 1 (no pooling), else made here.
        Returns the heads' outputs before `l_proj`."""
        B, Hp, Wp, _ = q.shape
        s, heads, hd = self.window_size, self.lofi_heads, self.head_dim
        q = q.reshape(B, Hp * Wp, heads, hd).transpose(1, 2)  # (B, heads, Hp*Wp, hd), a view
        if kv is None:
            # (B, C, Hp, Wp) view with channels-last strides: pooling needs no copy either way.
            pooled = F.avg_pool2d(padded.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)  # (B, Hp/s, Wp/s, C)
            kv = self.l_kv(pooled)
        kv = kv.reshape(B, -1, 2, heads, hd).permute(2, 0, 3, 1, 4)  # (2, B, heads, Hp*Wp/s^2, hd)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # (B, heads, Hp*Wp, hd)
        return out.transpose(1, 2).reshape(B, Hp, Wp, self.lofi_dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        B, N, C = x.shape
        padded = pad_to_window(x.reshape(B, height, width, C), self.window_size)  # (B, Hp, Wp, C)
        hifi_qkv, lofi_q, lofi_kv = self.project(padded)
        hifi = self.hifi(hifi_qkv) if self.hifi_heads else None
        lofi = self.lofi(lofi_q, padded, lofi_kv) if self.lofi_heads else None
        return self.output(hifi, lofi)[:, :height, :width].reshape(B, N, C)

    def output(self, hifi: torch.Tensor | None, lofi: torch.Tensor | None) -> torch.Tensor:
        """`h_proj` and `l_proj` side by side in the channels, (B, Hp, Wp, C). Without autograd
        both GEMMs write into one buffer: no concatenation copy of the whole map."""
        if lofi is None:
            return self.h_proj(hifi)
        if hifi is None:
            return self.l_proj(lofi)
        if torch.is_grad_enabled() or capturing():
            return torch.cat([self.h_proj(hifi), self.l_proj(lofi)], dim=-1)
        rows = hifi.shape[:-1].numel()
        # Both biases in one contiguous pass, then each GEMM adds into its columns in place.
        out = torch.cat([self.h_proj.bias, self.l_proj.bias]).expand(rows, self.dim).contiguous()
        out[:, :self.hifi_dim].addmm_(hifi.reshape(rows, -1), self.h_proj.weight.t())
        out[:, self.hifi_dim:].addmm_(lofi.reshape(rows, -1), self.l_proj.weight.t())
        return out.view(*hifi.shape[:-1], self.dim)

    def flops(self, height: int, width: int) -> float:
        from litv2cli.models.flops import hilo_flops

        return hilo_flops(self.dim, self.hifi_dim, self.lofi_dim, self.window_size, height, width)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, window_size={self.window_size}, "
                f"hifi_heads={self.hifi_heads}, lofi_heads={self.lofi_heads}")
