"""HiLo attention (paper section 4.1), written for speed.

Hi-Fi heads attend inside non-overlapping s x s windows (local, high frequencies); Lo-Fi heads
attend to keys/values of the s x s average-pooled map (global, low frequencies); the outputs are
concatenated Hi-Fi first, as in the official checkpoints. `HiLoReference` is the paper's
equations written out, and the oracle this module must equal.

The linear layers are most of the work and cannot shrink, so the rest avoids copies: every
projection that reads the map is one GEMM, attention runs on SDPA (no attention matrix in
memory), Hi-Fi attends over masked bands of s rows instead of copying out windows (`uses_bands`),
and Lo-Fi pools before projecting. Float32 CPU inference runs both attentions on C++ kernels
compiled at first use (`native`; BENCHMARKS.md, HiLo layer); autograd, torch.compile and export
take the SDPA path. Maps of any size are zero-padded bottom/right to a multiple of s and cropped
back, as the official detection backbone does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function, register_notrace_module
from torch import nn

import litv2cli.models.native as native
from litv2cli.models.capture import capturing
from litv2cli.models.flops import hilo_flops

# A band of s rows is attended as one masked sequence while it holds at most
# BAND_TOKEN_BUDGET / s tokens. A longer band's extra scores cost more than the partition's
# copies, and the larger s, the more efficient the partition's own (larger) windows, so the
# limit falls with s. Where bands stop paying for s = 2 and s = 4: BENCHMARKS.md, "Hi-Fi over
# masked bands vs window partition" (`python benchmarks/bench_hilo.py band`).
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


@register_notrace_function  # torch.fx: the padding depends on the traced map's size
def pad_to_window(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Zero-pad a (B, H, W, C) map at the bottom/right so H and W are multiples of the window."""
    pad_bottom = -x.shape[1] % window_size
    pad_right = -x.shape[2] % window_size
    if pad_bottom > 0 or pad_right > 0:
        x = F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))
    return x


def band_mask(window_size: int, width: int, device: torch.device) -> torch.Tensor:
    """(s*W, s*W) booleans over a band of s rows of width W: True where two tokens share a window."""
    # The column window of every band token, row after row; no `% width`, which the ONNX exporter
    # cannot translate when the width is dynamic.
    window_of = (torch.arange(width, device=device) // window_size).repeat(window_size)
    return window_of[:, None] == window_of[None, :]


# torch.fx sees one call: the kernel, band and partition choices depend on the traced map's
# size, dtype and grad mode. TorchScript builds `HiLoReference` instead (`LITv2`).
@register_notrace_module
class HiLo(nn.Module):
    """HiLo attention over a (B, N, C) token map of a given height and width.

    Parameter names (`h_qkv`, `h_proj`, `l_q`, `l_kv`, `l_proj`) are the official ones; a branch
    with no heads has no layers at all, so its keys are absent from the state dict.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, alpha: float, qkv_bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.window_size, self.alpha = dim, num_heads, window_size, alpha
        self.head_dim = dim // num_heads
        self.hifi_heads, self.lofi_heads = split_heads(num_heads, window_size, alpha)
        self.hifi_dim, self.lofi_dim = self.hifi_heads * self.head_dim, self.lofi_heads * self.head_dim
        if self.lofi_heads:
            self.l_q = nn.Linear(dim, self.lofi_dim, bias=qkv_bias, **dd)
            self.l_kv = nn.Linear(dim, 2 * self.lofi_dim, bias=qkv_bias, **dd)
            self.l_proj = nn.Linear(self.lofi_dim, self.lofi_dim, **dd)
        if self.hifi_heads:
            self.h_qkv = nn.Linear(dim, 3 * self.hifi_dim, bias=qkv_bias, **dd)
            self.h_proj = nn.Linear(self.hifi_dim, self.hifi_dim, **dd)

    def map_projections(self) -> list[str]:
        """Names of the linear layers that read the map itself (Lo-Fi kv does when s = 1: no pooling)."""
        names = ["h_qkv"] if self.hifi_heads else []
        if self.lofi_heads:
            names += ["l_q", "l_kv"] if self.window_size == 1 else ["l_q"]
        return names

    def project(self, padded: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """(Hi-Fi qkv, Lo-Fi q, Lo-Fi kv) of the (B, Hp, Wp, C) map, views of one GEMM's output;
        None where a branch has no such projection of the map."""
        _, projected = self.map_projection(padded, with_bias=True)
        return projected.get("h_qkv"), projected.get("l_q"), projected.get("l_kv")

    def map_projection(self, x: torch.Tensor, with_bias: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Every `map_projections` layer applied to `x` (..., C) as one GEMM: its output, and
        that output's columns by layer name; without the biases when the caller adds them."""
        names = self.map_projections()
        layers = [getattr(self, name) for name in names]
        weight = torch.cat([layer.weight for layer in layers]) if len(layers) > 1 else layers[0].weight
        bias = None
        if with_bias and layers[0].bias is not None:
            bias = torch.cat([layer.bias for layer in layers]) if len(layers) > 1 else layers[0].bias
        output = F.linear(x, weight, bias)
        columns = output.split([layer.out_features for layer in layers], dim=-1) if len(layers) > 1 else [output]
        return output, dict(zip(names, columns))

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
        out = self.forward_native(padded) if native.applies(padded) else None
        if out is None:
            hifi_qkv, lofi_q, lofi_kv = self.project(padded)
            hifi = self.hifi(hifi_qkv) if self.hifi_heads else None
            lofi = self.lofi(lofi_q, padded, lofi_kv) if self.lofi_heads else None
            out = self.output(hifi, lofi)
        return out[:, :height, :width].reshape(B, N, C)

    def forward_native(self, padded: torch.Tensor) -> torch.Tensor | None:
        """Inference on the compiled kernels (`native`), or None where they do not apply. The
        map's projections are one GEMM without biases (the kernels add them), both branches
        write into one attention buffer, and the output projections into the projection's
        memory, dead by then: no fresh pages to fault in for the largest tensor of the layer."""
        B, Hp, Wp, C = padded.shape
        s, rows = self.window_size, B * Hp * Wp
        hifi = native.hifi_kernel(s, self.head_dim) if self.hifi_heads else None
        lofi = native.lofi_kernel(Hp * Wp // (s * s), self.head_dim) if self.lofi_heads else None
        if (self.hifi_heads and hifi is None) or (self.lofi_heads and lofi is None):
            return None
        projected, columns = self.map_projection(padded.reshape(rows, C), with_bias=False)
        attended = projected.new_empty(rows, C)
        if hifi:
            hifi(columns["h_qkv"], self.bias_of(self.h_qkv), attended, B, Hp, Wp, self.hifi_heads)
        if lofi:
            kv = columns.get("l_kv")
            if kv is None:
                pooled = F.avg_pool2d(padded.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)  # as in `lofi`
                kv = torch.mm(pooled.reshape(-1, C), self.l_kv.weight.t())
            kv_bias, d = self.bias_of(self.l_kv), self.lofi_dim
            lofi(columns["l_q"], self.bias_of(self.l_q), kv[:, :d], kv_bias[:d], kv[:, d:], kv_bias[d:],
                 attended[:, self.hifi_dim:], B, self.lofi_heads, Hp * Wp)
        out = projected.view(-1)[:rows * C].view(rows, C)
        self.project_out(attended[:, :self.hifi_dim], attended[:, self.hifi_dim:], out)
        return out.view(B, Hp, Wp, C)

    def bias_of(self, layer: nn.Linear) -> torch.Tensor:
        return layer.bias if layer.bias is not None else layer.weight.new_zeros(layer.out_features)

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
        out = hifi.new_empty(rows, self.dim)
        self.project_out(hifi.reshape(rows, -1), lofi.reshape(rows, -1), out)
        return out.view(*hifi.shape[:-1], self.dim)

    def project_out(self, hifi: torch.Tensor, lofi: torch.Tensor, out: torch.Tensor) -> None:
        """Both output projections into their columns of `out` (rows, C): the biases in one
        contiguous pass, then each GEMM adds into its columns in place. A branch without heads
        has 0 columns here and no layer. Autocast converts neither in-place ops nor `copy_`, so
        the weights are cast to `out`'s dtype here (a no-op in float32), as autocast casts a
        linear layer's weights to its compute dtype."""
        layers = [getattr(self, name) for name in ("h_proj", "l_proj") if hasattr(self, name)]
        out.copy_(torch.cat([layer.bias for layer in layers]).expand_as(out))
        if self.hifi_heads:
            out[:, :self.hifi_dim].addmm_(hifi, self.h_proj.weight.to(out.dtype).t())
        if self.lofi_heads:
            out[:, self.hifi_dim:].addmm_(lofi, self.l_proj.weight.to(out.dtype).t())

    def flops(self, height: int, width: int) -> float:
        return hilo_flops(self.dim, self.hifi_dim, self.lofi_dim, self.window_size, height, width)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, window_size={self.window_size}, "
                f"hifi_heads={self.hifi_heads}, lofi_heads={self.lofi_heads}")
