"""`litv2 bench attention`: Figure 3 of the paper on the device at hand.

Inside one LITv2 backbone (LITv2-S by default) HiLo is replaced by each compared attention
(`litv2cli.models.attentions`) and every variant is measured at every resolution: FLOPs,
inference throughput, test and train memory. Memory comes first, one model at a time: a variant
that runs out of memory (CUDA) or past the step time budget (CPU, where time rather than memory
is the limit) is marked so and not tried at larger resolutions. The variants that fit are then
timed interleaved at each resolution (on a CPU in one fresh process: `litv2cli.bench.measuring`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from litv2cli.bench.measuring import OK, Outcome, Plan, peak_memory_mib, planned_throughput
from litv2cli.bench.protocol import BenchSettings
from litv2cli.models import count_flops, count_params, create_model
from litv2cli.models.attentions import alternate_blocks

ATTENTION_LABELS = {
    "msa": "MSA",
    "sra": "SRA (PVT)",
    "w_msa": "W-MSA (Swin)",
    "t_msa": "T-MSA (Twins)",
    "hilo": "HiLo",
}
GPU_RESOLUTIONS = (224, 384, 512, 640, 768, 896, 1024)
CPU_RESOLUTIONS = (224, 384)


@dataclass(frozen=True)
class AttentionRow:
    """One (attention, resolution) cell; values are None where `status` says why."""

    attention: str
    height: int
    width: int
    params_m: float
    gflops: float
    images_per_s: float | None
    spread: float | None
    test_memory_mib: float | None
    train_memory_mib: float | None
    status: str

    @property
    def resolution(self) -> str:
        return f"{self.height}x{self.width}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": ATTENTION_LABELS.get(self.attention, self.attention),
                "resolution": self.resolution}


def build_attention_backbone(attention: str, variant: str = "s") -> nn.Module:
    """LITv2-`variant` with `attention` in its attention stages (Swin/Twins alternation applied)."""
    return alternate_blocks(create_model(variant, attention=attention)).eval()


def run_attention_bench(attentions: list[str], resolutions: list[tuple[int, int]], settings: BenchSettings,
                        variant: str = "s", progress: Callable[[str], None] | None = None) -> list[AttentionRow]:
    """Every attention at every resolution; see the module docstring for the order of measurements."""
    say = progress or (lambda message: None)
    # One backbone per attention serves every resolution: nothing in it depends on the map size.
    models = {name: build_attention_backbone(name, variant) for name in attentions}
    stopped: dict[str, str] = {}  # attention -> why it is not run at larger resolutions
    no_training: dict[str, str] = {}  # attention -> why its train step is not run any more
    memory: dict[tuple[str, tuple[int, int]], tuple[Outcome, Outcome]] = {}
    plan: Plan = []
    for resolution in resolutions:
        for name, model in models.items():
            if name in stopped:
                memory[name, resolution] = (Outcome(None, stopped[name]), Outcome(None, stopped[name]))
                continue
            memory[name, resolution] = _memory(name, model, settings, resolution, no_training, say)
            if memory[name, resolution][0].status != OK:
                stopped[name] = memory[name, resolution][0].status
        plan.append((resolution, [name for name in attentions if name not in stopped]))
    say("throughput: " + "; ".join(f"{h}x{w}: {', '.join(names) or 'nothing fits'}" for (h, w), names in plan))
    speeds = planned_throughput(models, settings, plan)
    rows = []
    for (resolution, _), speed in zip(plan, speeds):
        for name in attentions:
            test, train = memory[name, resolution]
            measured = speed.get(name)
            status = OK if test.status == OK and train.status == OK else (
                test.status if test.status != OK else f"train: {train.status}")
            rows.append(AttentionRow(
                attention=name, height=resolution[0], width=resolution[1],
                params_m=round(count_params(models[name]) / 1e6, 3),
                gflops=round(count_flops(models[name], resolution) / 1e9, 3),
                images_per_s=measured.images_per_s if measured else None,
                spread=measured.spread if measured else None,
                test_memory_mib=test.value, train_memory_mib=train.value, status=status,
            ))
    return rows


def _memory(name: str, model: nn.Module, settings: BenchSettings, resolution: tuple[int, int],
            no_training: dict[str, str], say: Callable[[str], None]) -> tuple[Outcome, Outcome]:
    """(test, train) peak memory; the train step is skipped once it has failed at a smaller size."""
    if not settings.measure_memory:
        return Outcome(None), Outcome(None)
    say(f"memory of {name} at {resolution[0]}x{resolution[1]}")
    test = peak_memory_mib(model, settings, resolution, "infer")
    if test.status != OK:
        return test, Outcome(None, test.status)
    if name in no_training:
        return test, Outcome(None, no_training[name])
    train = peak_memory_mib(model, settings, resolution, "train")
    if train.status != OK:
        no_training[name] = train.status
    return test, train
