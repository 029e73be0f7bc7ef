"""LITv2: the backbone, its variants, and their timm registration (paper section 4.3).

Four stages at strides 4, 8, 16, 32: ConvFFN-only blocks in stages 1-2 (the paper finds early
MSAs attend locally anyway), HiLo blocks in stages 3-4, deformable token merging (DTM) between
stages. Attribute names follow the official implementation, so official state dicts load strictly
with no conversion. Tokens travel as (B, N, C) with height and width passed alongside, so no layer
assumes a square map or a size fixed at construction (any multiple of 32 works).

The model offers timm's API (feature taps, pruning, parameter groups, grad checkpointing,
device/dtype factory arguments). It also scripts and traces: under `timm.set_scriptable(True)` it
uses the straightforward layers (`reference`), which TorchScript can compile, and torch.fx treats
the layers whose path depends on the traced size as single calls.
"""

# No `from __future__ import annotations`: torch.fx copies `LITv2.forward`'s annotations into the
# code it generates, and TorchScript cannot read them back as strings.
from dataclasses import dataclass

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, get_device_dtype, is_scriptable, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from litv2cli.defaults import PAPER_ALPHA, PAPER_WINDOW, variant_key
from litv2cli.errors import UserError
from litv2cli.models.convffn import ConvFFN
from litv2cli.models.dtm import DTM, FloatBatchNorm2d
from litv2cli.models.hilo import HiLo
from litv2cli.models.hilo_reference import HiLoReference

# Attention modules a HiLo stage can use: (dim, num_heads, window_size, alpha, qkv_bias, device,
# dtype) -> module with forward(x (B, N, C), height, width) -> (B, N, C).
ATTENTIONS: dict[str, type[nn.Module]] = {"hilo": HiLo, "hilo_reference": HiLoReference}


@dataclass(frozen=True)
class VariantSpec:
    """Sizes of one LITv2 variant; `from_paper` is False for variants we added ourselves."""

    embed_dim: int
    depths: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    drop_path_rate: float
    mlp_ratio: float = 4.0
    from_paper: bool = True

    @property
    def num_features(self) -> int:
        """Width of the last stage (what the head reads), known without building the model."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def model_kwargs(self) -> dict:
        """The `LITv2` arguments this row fixes."""
        return dict(embed_dim=self.embed_dim, depths=self.depths, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio,
                    drop_path_rate=self.drop_path_rate)


VARIANTS: dict[str, VariantSpec] = {
    # Not from the paper: trains on 2 CPU cores in minutes at 32x32-64x64 (stage 4 map 1x1 at 32).
    "t": VariantSpec(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.05, from_paper=False),
    "s": VariantSpec(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "m": VariantSpec(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    "b": VariantSpec(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
}


class PatchEmbed(nn.Module):
    """4x4 stride-4 conv, then LayerNorm over channels: image -> (B, H/4 * W/4, C) tokens."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int = 4, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, device=device,
                              dtype=dtype)
        self.norm = nn.LayerNorm(embed_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)  # (B, C, H/4, W/4)
        height, width = x.shape[2], x.shape[3]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width  # (B, N, C)


class ConvFFNBlock(nn.Module):
    """Stages 1-2: x + FFN(LN(x)). No attention, hence no `norm1` (as in the official weights)."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float, device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio), **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class HiLoBlock(nn.Module):
    """Stages 3-4: x + HiLo(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, num_heads: int, window_size: int, alpha: float, mlp_ratio: float,
                 drop_path: float, attention: str = "hilo", device: torch.device | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.attn = ATTENTIONS[attention](dim, num_heads, window_size, alpha, qkv_bias=True, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio), **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), height, width))


class LITStage(nn.Module):
    """One stage: its blocks, then (except in the last stage) the DTM that feeds the next one.

    A window size of 0 marks a stage without attention (ConvFFN blocks), >= 1 a HiLo stage.
    `forward` runs the blocks only; the model applies `downsample` so it can read the stage's
    full-resolution output for dense prediction. With `grad_checkpointing` each block's
    activations are recomputed in the backward pass instead of kept.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, alpha: float, mlp_ratio: float,
                 drop_paths: list[float], attention: str, downsample: bool, reference: bool = False,
                 device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if window_size == 0:
            blocks = [ConvFFNBlock(dim, mlp_ratio, rate, **dd) for rate in drop_paths]
        else:
            blocks = [HiLoBlock(dim, num_heads, window_size, alpha, mlp_ratio, rate, attention, **dd)
                      for rate in drop_paths]
        self.blocks = nn.ModuleList(blocks)
        self.downsample = DTM(dim, reference=reference, **dd) if downsample else None
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, height, width)
            else:
                x = block(x, height, width)
        return x


class LITv2(nn.Module):
    """LITv2 classifier. `forward_features` returns the normalised last-stage map (B, C, H/32, W/32).

    `reference=True` swaps the layers that have a fast path (HiLo, the DTMs' deformable conv) for
    their straightforward forms: same parameters and outputs, the oracle the fast model is
    tested and benchmarked against, and the form TorchScript compiles (`timm.set_scriptable`).
    `global_pool` is "avg" (the paper's head) or "" (the head sees the map).
    """

    def __init__(self, embed_dim: int = 96, depths: tuple[int, ...] = (2, 2, 6, 2),
                 num_heads: tuple[int, ...] = (3, 6, 12, 24), mlp_ratio: float = 4.0, drop_path_rate: float = 0.2,
                 alpha: float = PAPER_ALPHA, local_ws: tuple[int, ...] = PAPER_WINDOW, attention: str = "hilo",
                 num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0, global_pool: str = "avg",
                 reference: bool = False, device: torch.device | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        if not len(depths) == len(num_heads) == len(local_ws):
            raise ValueError(f"depths {depths}, num_heads {num_heads} and local_ws {local_ws} need one entry per stage")
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}; registered: {', '.join(ATTENTIONS)}")
        dd = dict(device=device, dtype=dtype)
        reference = reference or is_scriptable()
        if reference and attention == "hilo":
            attention = "hilo_reference"
        self.alpha, self.local_ws, self.attention = alpha, tuple(local_ws), attention
        self.embed_dim, self.depths, self.num_heads = embed_dim, tuple(depths), tuple(num_heads)
        self.num_classes, self.in_chans = num_classes, in_chans
        self.num_features = self.head_hidden_size = embed_dim * 2 ** (len(depths) - 1)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, **dd)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # rises linearly
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            first = sum(depths[:i])
            self.layers.append(LITStage(embed_dim * 2**i, depth, num_heads[i], local_ws[i], alpha, mlp_ratio,
                                        rates[first:first + depth], attention, downsample=i < len(depths) - 1,
                                        reference=reference, **dd))
        self.feature_info = [dict(num_chs=embed_dim * 2**i, reduction=4 * 2**i, module=f"layers.{i}")
                             for i in range(len(depths))]
        self.norm = nn.LayerNorm(self.num_features, **dd)
        self.global_pool = _checked_pool(global_pool)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(_init_linear_and_norm)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs before merging, (B, C_i, H/2^(i+2), W/2^(i+2)) each: timm's feature API."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt {output_fmt!r} is not supported; LITv2 gives NCHW maps")
        take, last = feature_take_indices(len(self.layers), indices)
        last = last if stop_early or intermediates_only else len(self.layers) - 1
        intermediates = []
        x, height, width = self.patch_embed(x)
        for i, stage in enumerate(self.layers[:last + 1]):
            x = stage(x, height, width)  # (B, H_i * W_i, C_i)
            if i in take:
                intermediates.append(to_map(self.norm(x) if norm and i == len(self.layers) - 1 else x, height, width))
            if i < last:
                x, height, width = stage.downsample(x, height, width)
        if intermediates_only:
            return intermediates
        return to_map(self.norm(x), height, width), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop what the taps `indices` do not need: later stages, the merge after the last kept one,
        the final norm (sized for the last stage) and the head. Returns the taps to request."""
        take, last = feature_take_indices(len(self.layers), indices)
        prune_end = last < len(self.layers) - 1
        self.layers = self.layers[:last + 1]
        self.layers[-1].downsample = None
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, height, width = self.patch_embed(x)  # (B, H/4 * W/4, C)
        for stage in self.layers:
            x = stage(x, height, width)
            if stage.downsample is not None:
                x, height, width = stage.downsample(x, height, width)
        return to_map(self.norm(x), height, width)  # (B, C, H/32, W/32)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))  # (B, C)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New (freshly initialised) head for `num_classes` classes, 0 removes it; a `global_pool`
        of "" also removes the pooling. The head is made where and as the model's weights are."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = _checked_pool(global_pool)
        if num_classes > 0:
            self.head = nn.Linear(self.num_features, num_classes, **get_device_dtype(self))
            self.head.apply(_init_linear_and_norm)
        else:
            self.head = nn.Identity()
        self.head.train(self.training)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise learning-rate decay: the stem, then stage by stage (or
        block by block); a stage's merge and the final norm join the block before them (99999)."""
        return dict(stem=r"^patch_embed", blocks=r"^layers\.(\d+)" if coarse else [
            (r"^layers\.(\d+)\.blocks\.(\d+)", None),
            (r"^layers\.(\d+)\.downsample", (99999,)),
            (r"^norm", (99999,)),
        ])

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters to exempt beyond timm's rule for 1-D ones (norms, biases): none, as LITv2 has
        no position embeddings or tokens (its depthwise convs carry the position)."""
        return set()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass: less memory, same outputs."""
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def __prepare_scriptable__(self) -> "LITv2":
        """torch.jit.script calls this first: name the eager-only layer instead of failing inside it."""
        eager_only = [name for name, module in self.named_modules() if isinstance(module, (HiLo, FloatBatchNorm2d))]
        if eager_only:
            raise RuntimeError(f"{eager_only[0]} runs eagerly only; build the model under timm.set_scriptable(True) "
                               "to script it (same parameters, straightforward layers)")
        return self


def _checked_pool(global_pool: str) -> str:
    if global_pool not in ("avg", ""):
        raise ValueError(f"global_pool {global_pool!r} is not supported; LITv2 pools with 'avg' or not at all ('')")
    return global_pool


def to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) map: a view with channels-last strides, no copy."""
    return tokens.reshape(tokens.shape[0], height, width, -1).permute(0, 3, 1, 2)


def _init_linear_and_norm(module: nn.Module) -> None:
    """Official init: linear layers truncated normal (std 0.02) with zero bias; LayerNorm 1 and 0."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def create_model(variant: str, *, num_classes: int = 1000, drop_path_rate: float | None = None,
                 alpha: float = PAPER_ALPHA, local_ws: tuple[int, int, int, int] = PAPER_WINDOW,
                 attention: str = "hilo", in_chans: int = 3, reference: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LITv2:
    """Build LITv2-`variant` (t, s, m or b); drop_path_rate None means the variant's own rate.
    `reference` builds the straightforward form of every layer that has a fast one (HiLo, the
    DTM's deformable conv): same parameters and outputs, for checking and benchmarking.
    `device` and `dtype` say where and as what the weights are made (meta: shapes only)."""
    args = variant_spec(variant).model_kwargs()
    if drop_path_rate is not None:
        args["drop_path_rate"] = drop_path_rate
    return LITv2(**args, alpha=alpha, local_ws=tuple(local_ws), attention=attention, num_classes=num_classes,
                 in_chans=in_chans, reference=reference, device=device, dtype=dtype)


def variant_spec(variant: str) -> VariantSpec:
    """'s', 'S', 'litv2_s' or 'litv2-s' -> VARIANTS['s']; anything else is a UserError."""
    key = variant_key(variant)
    if key not in VARIANTS:
        raise UserError(f"unknown LITv2 variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[key]


# --- timm registration: `timm.create_model("litv2_s", ...)` after `import litv2cli` ------------

def _cfg() -> dict:
    # Official evaluation: bicubic resize to 256/224 of the size, centre crop (crop_pct 0.875).
    return dict(url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
                interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                first_conv="patch_embed.proj", classifier="head", license="apache-2.0")


default_cfgs = generate_default_cfgs({f"litv2_{key}": _cfg() for key in VARIANTS})


def _create_litv2(variant: str, pretrained: bool = False, **kwargs) -> LITv2:
    kwargs.pop("img_size", None)  # accepted for timm-style callers; the model takes any multiple of 32
    return build_model_with_cfg(LITv2, variant, pretrained,
                                feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)), **kwargs)


# One entrypoint per variant, as timm writes them; the sizes come from VARIANTS, so they are
# written once (test_model_timm checks that every row has its entrypoint).

@register_model
def litv2_t(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-T: ours, not from the paper; small enough to train on a CPU."""
    model_args = VARIANTS["t"].model_kwargs()
    return _create_litv2("litv2_t", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_s(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-S, as in the paper."""
    model_args = VARIANTS["s"].model_kwargs()
    return _create_litv2("litv2_s", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_m(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-M, as in the paper."""
    model_args = VARIANTS["m"].model_kwargs()
    return _create_litv2("litv2_m", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def litv2_b(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-B, as in the paper."""
    model_args = VARIANTS["b"].model_kwargs()
    return _create_litv2("litv2_b", pretrained=pretrained, **dict(model_args, **kwargs))
