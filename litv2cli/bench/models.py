"""`litv2 bench model`: Table 1 of the paper on the device at hand.

Params, GFLOPs, throughput and train/test memory of LITv2 and the peers timm ships, every model
measured with the same protocol, throughput interleaved step by step so that a drifting machine
slows all models alike. FLOPs are multiply-accumulates (MACs), as papers report them: LITv2's from
`count_flops` (the official counter's terms, so the paper's numbers), timm models' from PyTorch's
`FlopCounterMode` halved, since it counts a multiply-add as 2 FLOPs; like the official counter it
leaves normalisation, activations and pooling out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from litv2cli.bench.measuring import OK, Outcome, interleaved_throughput, peak_memory_mib
from litv2cli.bench.protocol import BenchSettings
from litv2cli.errors import UserError
from litv2cli.models import VARIANTS, count_flops, count_params, create_model

DEFAULT_MODELS = (
    "litv2_s", "litv2_m", "litv2_b",
    "resnet50", "convnext_tiny", "swin_tiny_patch4_window7_224", "pvt_v2_b2", "twins_pcpvt_small", "twins_svt_small",
)
# LITv2 in its reference form (`litv2_s_reference`: the paper-style HiLo with explicit
# softmax(QK^T)V, torchvision's deformable conv): same parameters and outputs, so a run with
# both shows what the fast paths gain.
REFERENCE_SUFFIX = "_reference"


@dataclass(frozen=True)
class ModelRow:
    """One row of the table; memory and throughput are None when not measured (see `status`)."""

    model: str
    params_m: float
    gflops: float
    flops_method: str
    images_per_s: float | None
    spread: float | None
    test_memory_mib: float | None
    train_memory_mib: float | None
    status: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_litv2(name: str) -> bool:
    key = name.removesuffix(REFERENCE_SUFFIX)
    return key.startswith("litv2_") and key.removeprefix("litv2_") in VARIANTS


def check_model_names(names: list[str]) -> None:
    """Reject a name that is neither `litv2_<v>[_reference]` nor a timm model, before any work starts."""
    for name in names:
        if not is_litv2(name) and not timm.is_model(name):
            raise UserError(f"unknown model {name!r}: use litv2_s, litv2_m, litv2_b (or litv2_<v>_reference) "
                            f"or a timm model name such as swin_tiny_patch4_window7_224")


def build_model(name: str, resolution: tuple[int, int]) -> nn.Module:
    """An eval-mode model with random weights: `litv2_<v>[_reference]` or any timm model name."""
    check_model_names([name])
    if is_litv2(name):
        variant = name.removesuffix(REFERENCE_SUFFIX).removeprefix("litv2_")
        return create_model(variant, reference=name.endswith(REFERENCE_SUFFIX)).eval()
    try:  # transformers with a fixed patch grid need the size at construction
        return timm.create_model(name, pretrained=False, img_size=resolution).eval()
    except TypeError:
        return timm.create_model(name, pretrained=False).eval()


def model_macs(name: str, model: nn.Module, resolution: tuple[int, int]) -> tuple[int, str]:
    """(MACs of one image, how they were counted)."""
    if is_litv2(name):
        return count_flops(model, resolution), "count_flops (official counter, MACs)"
    return counted_macs(model, resolution), "FlopCounterMode / 2 (MACs)"


def counted_macs(model: nn.Module, resolution: tuple[int, int]) -> int:
    """MACs of one forward at batch 1, from PyTorch's FLOP counter (2 FLOPs per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, *resolution))
    return counter.get_total_flops() // 2


def run_model_bench(names: list[str], resolution: tuple[int, int], settings: BenchSettings,
                    mode: str = "infer") -> list[ModelRow]:
    """Measure every model; throughput of all models interleaved in one loop (`mode` infer or train)."""
    models = {name: build_model(name, resolution) for name in names}
    static, memory = {}, {}
    for name, model in models.items():
        macs, method = model_macs(name, model, resolution)
        static[name] = (count_params(model) / 1e6, macs / 1e9, method)
        if settings.measure_memory:
            memory[name] = (peak_memory_mib(model, settings, resolution, "infer"),
                            peak_memory_mib(model, settings, resolution, "train"))
    fitting = {name: model for name, model in models.items()
               if all(outcome.status == OK for outcome in memory.get(name, ()))}
    speed = interleaved_throughput(fitting, settings, resolution, mode=mode) if fitting else {}
    rows = []
    for name in names:
        params_m, gflops, method = static[name]
        test, train = memory.get(name, (Outcome(None), Outcome(None)))
        failed = [outcome.status for outcome in (test, train) if outcome.status != OK]
        measured = speed.get(name)
        rows.append(ModelRow(
            model=name, params_m=round(params_m, 3), gflops=round(gflops, 3), flops_method=method,
            images_per_s=measured.images_per_s if measured else None, spread=measured.spread if measured else None,
            test_memory_mib=test.value, train_memory_mib=train.value, status=failed[0] if failed else OK,
        ))
    return rows
