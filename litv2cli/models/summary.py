"""What `litv2 info` reports: parameters, FLOPs and the per-stage layout of one configuration.

It builds the model (on the meta device) and hands it to the counters in `flops`, so it sits
above both the model definitions and the counters; `flops` itself imports no model module,
which keeps the attention modules free to import their FLOP formulas from it.
"""

from __future__ import annotations

import torch

from litv2cli.defaults import PAPER_ALPHA, PAPER_WINDOW, variant_key
from litv2cli.models.flops import count_flops, count_params
from litv2cli.models.litv2 import create_model, variant_spec


def describe(variant: str, resolution: tuple[int, int] = (224, 224), alpha: float = PAPER_ALPHA,
             local_ws: tuple[int, int, int, int] = PAPER_WINDOW) -> dict:
    """Parameters, FLOPs and per-stage layout of one configuration, as plain JSON-ready data.

    The model is built on the meta device: no memory, no init cost, even for LITv2-B.
    """
    spec = variant_spec(variant)
    with torch.device("meta"):
        model = create_model(variant, alpha=alpha, local_ws=local_ws)
    height, width = resolution[0] // 4, resolution[1] // 4
    stages = []
    for i, stage in enumerate(model.layers):
        attn = getattr(stage.blocks[0], "attn", None)
        stages.append(dict(
            stage=i + 1, resolution=[height, width], channels=model.embed_dim * 2**i, depth=len(stage.blocks),
            heads=model.num_heads[i], window=model.local_ws[i],
            hifi_heads=attn.hifi_heads if attn is not None else 0,
            lofi_heads=attn.lofi_heads if attn is not None else 0,
            mixer="ConvFFN only" if attn is None else ("global MSA" if attn.window_size == 1 else "HiLo"),
        ))
        height, width = height // 2, width // 2
    params, flops = count_params(model), count_flops(model, resolution)
    return dict(variant=variant_key(variant), from_paper=spec.from_paper, resolution=list(resolution),
                alpha=alpha, local_ws=list(model.local_ws), params=params, params_m=round(params / 1e6, 3),
                flops=flops, gflops=round(flops / 1e9, 3), stages=stages)
