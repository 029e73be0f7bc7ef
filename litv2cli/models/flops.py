"""FLOPs (multiply-accumulates) counted the way the official `flops()` methods count them.

The paper's numbers come from that counter, so we reproduce it term by term, quirks included:
- HiLo is counted on the map padded to a multiple of the window (what the detection backbone
  runs, and what our HiLo runs); LayerNorm costs C per token, conv biases one per output.
- DTM's offset conv is counted with 12 output channels (the conv has 8).
- The final LayerNorm is counted on (H/4 * W/4) / 16 tokens, four times the real H/32 * W/32.
- Softmax, GELU, pooling, residual adds and BatchNorm-free parts are not counted.
The official counter only knows square maps; for H != W we use H*W wherever it uses H^2.

Counting only reads the modules of a model it is given and imports no model module, so the
attention modules can take their formulas from here (`hilo_flops`) without an import circle;
building a model to report on it is `litv2cli.models.summary`'s job.
"""

from __future__ import annotations

import math

from torch import nn


def conv_flops(kernel: int, in_chans: int, out_chans: int, stride: int, padding: int, height: int, width: int,
               groups: int = 1) -> int:
    """MACs of a conv plus one per output for its bias (the official counter always adds it)."""
    out_h = (height + 2 * padding - kernel) // stride + 1
    out_w = (width + 2 * padding - kernel) // stride + 1
    return (kernel * kernel * in_chans * (out_chans // groups) + out_chans) * out_h * out_w


def hilo_flops(dim: int, hifi_dim: int, lofi_dim: int, window_size: int, height: int, width: int) -> float:
    """HiLo on a (height, width) map, padded bottom/right to a multiple of the window."""
    s = window_size
    padded_h, padded_w = s * math.ceil(height / s), s * math.ceil(width / s)
    tokens = padded_h * padded_w
    windows = tokens / (s * s)
    hifi = tokens * dim * hifi_dim * 3  # h_qkv
    hifi += windows * (s * s) ** 2 * hifi_dim * 2  # q @ k^T and attn @ v inside each window
    hifi += tokens * hifi_dim * hifi_dim  # h_proj
    pooled = (padded_h // s) * (padded_w // s)
    lofi = tokens * dim * lofi_dim  # l_q
    lofi += pooled * dim * lofi_dim * 2  # l_kv on the pooled map
    lofi += tokens * lofi_dim * pooled * 2  # q @ k^T and attn @ v against pooled keys
    lofi += tokens * lofi_dim * lofi_dim  # l_proj
    return hifi + lofi


def ffn_flops(dim: int, hidden_dim: int, height: int, width: int) -> int:
    """LayerNorm + fc1 + 3x3 depthwise conv + fc2 of one block."""
    dwconv = conv_flops(3, hidden_dim, hidden_dim, 1, 1, height, width, groups=hidden_dim)
    return dim * height * width + 2 * height * width * dim * hidden_dim + dwconv


def dtm_flops(dim: int, height: int, width: int) -> int:
    offset = conv_flops(2, dim, 12, 2, 0, height, width)  # official quirk: 12 channels, not 8
    merge = conv_flops(2, dim, 2 * dim, 2, 0, height, width)
    norm = (height // 2) * (width // 2) * 2 * dim
    return offset + merge + norm


def count_flops(model: nn.Module, resolution: tuple[int, int]) -> int:
    """MACs of one forward pass of a LITv2 at `resolution` (H, W), the official counter's way.

    Analytic: nothing is run, so it is instant for any size. Attention modules report their
    own cost through `flops(height, width)`.
    """
    embed = model.patch_embed.proj
    in_chans, dim = embed.in_channels, embed.out_channels
    height, width = resolution[0] // embed.stride[0], resolution[1] // embed.stride[1]
    total = height * width * dim * in_chans * embed.kernel_size[0] * embed.kernel_size[1]  # no bias counted
    total += height * width * dim  # patch norm
    first_tokens = height * width
    for stage in model.layers:
        for block in stage.blocks:
            dim = block.norm2.normalized_shape[0]
            total += ffn_flops(dim, block.mlp.fc1.out_features, height, width)
            if hasattr(block, "attn"):
                total += dim * height * width + block.attn.flops(height, width)  # norm1 + attention
        if stage.downsample is not None:
            total += dtm_flops(dim, height, width)
            height, width = height // 2, width // 2
    total += model.num_features * first_tokens // 2 ** len(model.layers)  # final norm, official quirk
    if isinstance(model.head, nn.Linear):
        total += model.head.in_features * model.head.out_features
    return int(round(total))


def count_params(model: nn.Module) -> int:
    """Learnable parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters())

