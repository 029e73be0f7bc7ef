"""Evaluate one point: build the network, measure it on this device, score it with the proxies.

Speed and memory are measured with the model's ImageNet head (1000 classes, as deployed);
proxies use a head sized to `--data`'s classes, because snip and grad_norm need its labels.
Every model is built with drop path 0, so measurements and scores do not depend on it. Every
timing and the peak memory run in the search's precision (`MeasureSettings.precision`): the
search ranks the points as training would run them. On a CPU the timings run in a fresh process
per point (`litv2cli.measure.fresh_process` says why).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from litv2cli.measure.fresh_process import call_in_fresh_process, omp_wait_policy
from litv2cli.measure.protocol import (
    Measurement, default_device, measure_latency, measure_peak_memory, measure_throughput,
)
from litv2cli.precision import autocast_dtype
from litv2cli.search.proxies import Batch, score_model
from litv2cli.search.space import Point

MEASUREMENT_CLASSES = 1000


@dataclass(frozen=True)
class MeasureSettings:
    """How each point is measured; part of the study's identity."""

    variant: str
    resolution: tuple[int, int]
    batch_size: int
    mode: str = "infer"
    warmup: int = 5
    repeats: int = 20
    max_rounds: int = 3
    latency: bool = False  # also measure latency at batch 1
    memory: bool = False  # also measure peak memory at batch_size
    device: str | None = None
    precision: str = "auto"  # auto, no, bf16 or fp16, as `litv2 pretrain --precision` (see litv2cli.precision)

    @property
    def autocast(self) -> torch.dtype | None:
        """The autocast dtype of every step (None: float32, no autocast)."""
        return autocast_dtype(self.precision, self.device)


@dataclass(frozen=True)
class ProxySettings:
    """Zero-cost proxies and the fixed minibatches they see (the same for every point)."""

    proxies: tuple[str, ...]
    batches: list[Batch] = field(repr=False)
    num_classes: int
    seed: int = 0


def build_model(variant: str, point: Point, *, num_classes: int = MEASUREMENT_CLASSES) -> nn.Module:
    from litv2cli.models import create_model

    return create_model(variant, num_classes=num_classes, drop_path_rate=0.0, alpha=point.alpha,
                        local_ws=tuple(point.window))


def measure_point(point: Point, settings: MeasureSettings, proxy: ProxySettings | None = None) -> dict[str, Any]:
    """Every measured quantity of `point`, as plain values for the study's user attributes."""
    from litv2cli.models import count_flops, count_params

    torch.manual_seed(0)
    model = build_model(settings.variant, point)
    metrics: dict[str, Any] = {"params": float(count_params(model)),
                               "flops": float(count_flops(model, settings.resolution))}
    throughput, latency = timings(model, settings, latency=settings.latency)
    metrics.update(throughput=throughput.images_per_s, throughput_spread=throughput.spread,
                   throughput_stable=throughput.stable, throughput_rounds=throughput.rounds,
                   throughput_samples=[round(s, 3) for s in throughput.samples], device=throughput.device,
                   dtype=throughput.dtype, protocol=throughput.protocol)
    if latency is not None:
        metrics.update(latency=latency.latency_ms, latency_spread=latency.spread, latency_stable=latency.stable)
    if settings.memory:
        memory = measure_peak_memory(model, settings.batch_size, settings.resolution, mode=settings.mode,
                                     device=settings.device, autocast_dtype=settings.autocast)
        metrics.update(memory=float(memory.peak_bytes), memory_method=memory.method)
    del model
    if proxy is not None:
        scores = score_model(lambda: build_model(settings.variant, point, num_classes=proxy.num_classes),
                             proxy.batches, proxy.proxies, seed=proxy.seed)
        metrics.update({f"proxy_{name}": value for name, value in scores.items()})
    return metrics


def remeasure_throughput(point: Point, settings: MeasureSettings) -> float:
    """Images/s of `point` measured again with the same protocol (for the drift check)."""
    torch.manual_seed(0)
    return timings(build_model(settings.variant, point), settings)[0].images_per_s


def timings(model: nn.Module, settings: MeasureSettings, *,
            latency: bool = False) -> tuple[Measurement, Measurement | None]:
    """The one timing protocol of a search (a point's measurement and its drift check use it).
    On a CPU every point is timed in a fresh process, so that no point runs faster for what the
    search did before it (`litv2cli.measure.fresh_process`)."""
    device = torch.device(settings.device) if settings.device is not None else default_device()
    if device.type != "cpu":
        return _timed(model, settings, latency)
    timed = call_in_fresh_process(_timed, model, settings, latency, what="throughput")
    where = f" in a fresh process (OMP_WAIT_POLICY={omp_wait_policy()})"
    return tuple(None if m is None else replace(m, timer=m.timer + where) for m in timed)  # type: ignore[return-value]


def _timed(model: nn.Module, settings: MeasureSettings, latency: bool) -> tuple[Measurement, Measurement | None]:
    throughput = measure_throughput(model, settings.batch_size, settings.resolution, mode=settings.mode,
                                    device=settings.device, warmup=settings.warmup, repeats=settings.repeats,
                                    max_rounds=settings.max_rounds, autocast_dtype=settings.autocast)
    if not latency:
        return throughput, None
    return throughput, measure_latency(model, settings.resolution, device=settings.device, warmup=settings.warmup,
                                       repeats=settings.repeats, max_rounds=settings.max_rounds,
                                       autocast_dtype=settings.autocast)


def load_proxy_batches(source: str, resolution: tuple[int, int], *, batch_size: int, num_batches: int,
                       seed: int = 0) -> tuple[list[Batch], int]:
    """`num_batches` shuffled minibatches of the training split of `source` (eval transform:
    resize and centre crop, no augmentation), and the number of classes."""
    from torch.utils.data import DataLoader

    from litv2cli.data import build_eval_transform, collate_skip_corrupt, open_split

    dataset = open_split(source, "train")
    dataset.set_transform(build_eval_transform(resolution))
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator, num_workers=0,
                        collate_fn=collate_skip_corrupt, drop_last=True)
    batches: list[Batch] = []
    for images, labels, _skipped in loader:
        if images is None or images.shape[0] < 2:
            continue
        batches.append((images, labels))
        if len(batches) == num_batches:
            break
    if not batches:
        from litv2cli.errors import UserError

        raise UserError(f"--data {source}: not one minibatch of {batch_size} readable training images for the "
                        "zero-cost proxies; lower --proxy-batch-size")
    return batches, int(dataset.num_classes)
