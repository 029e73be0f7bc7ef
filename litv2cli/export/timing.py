"""onnxruntime vs PyTorch on this CPU, timed side by side.

Both engines get the same random batch and the same number of threads, with onnxruntime's idle
workers not spinning (they would steal cores from PyTorch between steps); after `warmup` steps
each, every round runs one step of each engine in an order that rotates
(`litv2cli.measure.protocol.interleaved`). The ratio to trust is the median of the per-round
ratios, with their quartiles: pairing steps taken moments apart cancels load changes that a ratio
of two medians keeps. The load average is recorded before and after, because under load
PyTorch's spinning OpenMP pool loses far more than onnxruntime's, so a ratio taken on an
oversubscribed machine with more than one thread overstates onnxruntime's lead.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from litv2cli.export.onnx import INPUT_NAME, open_session
from litv2cli.measure.protocol import interleaved, relative_spread


@dataclass(frozen=True)
class EngineTiming:
    images_per_s: float  # median over the steps
    spread: float  # IQR / median of the steps' images/s
    samples: tuple[float, ...] = ()  # images/s of each round's step, in round order


@dataclass(frozen=True)
class Ratio:
    """One engine's throughput over another's: the median and quartiles of the per-round ratios."""

    value: float
    low: float  # first quartile
    high: float  # third quartile

    @property
    def spread(self) -> float:
        return (self.high - self.low) / self.value if self.value > 0 else math.inf


@dataclass(frozen=True)
class SideBySide:
    """Median images/s of each engine over the same interleaved rounds."""

    engines: dict[str, EngineTiming]
    batch_size: int
    resolution: tuple[int, int]
    threads: int
    warmup: int
    rounds: int
    load_average: tuple[float, float]  # 1-minute load average before and after the timing

    def ratio(self, engine: str, baseline: str = "pytorch") -> Ratio:
        """`engine`'s images/s over `baseline`'s, round by round."""
        rounds = [a / b for a, b in zip(self.engines[engine].samples, self.engines[baseline].samples)]
        if len(rounds) < 2:
            value = rounds[0] if rounds else self.engines[engine].images_per_s / self.engines[baseline].images_per_s
            return Ratio(value, value, value)
        low, median, high = statistics.quantiles(rounds, n=4, method="inclusive")
        return Ratio(median, low, high)

    @property
    def protocol(self) -> str:
        height, width = self.resolution
        threads = f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        return (f"inference, batch {self.batch_size}, {height}x{width}, float32, CPU with {threads} per engine, "
                f"{self.warmup} warm-up steps, median of {self.rounds} interleaved rounds, load average "
                f"{self.load_average[0]:.1f} before / {self.load_average[1]:.1f} after on {os.cpu_count()} cores")


def time_interleaved(steps: dict[str, Callable[[], object]], *, batch_size: int, warmup: int = 3,
                     rounds: int = 10) -> dict[str, EngineTiming]:
    """Run every step `warmup` times, then `rounds` rounds of one step each, the order rotating."""
    if warmup < 0 or rounds < 1:
        raise ValueError("warmup must be >= 0 and rounds >= 1")
    for step in steps.values():
        for _ in range(warmup):
            step()

    def images_per_s(step: Callable[[], object]) -> float:
        begin = time.perf_counter()
        step()
        return batch_size / (time.perf_counter() - begin)

    samples = interleaved({name: lambda step=step: images_per_s(step) for name, step in steps.items()}, rounds)
    return {name: EngineTiming(statistics.median(values), relative_spread(values), tuple(values))
            for name, values in samples.items()}


def time_onnxruntime_vs_pytorch(model: nn.Module, onnx_files: dict[str, str | Path], *, batch_size: int,
                                resolution: tuple[int, int], threads: int | None = None, warmup: int = 3,
                                rounds: int = 10) -> SideBySide:
    """PyTorch eager (`inference_mode`) against each ONNX file in onnxruntime, interleaved.

    `onnx_files` maps a label (e.g. "onnxruntime") to a file; the PyTorch engine is "pytorch".
    """
    threads = threads or torch.get_num_threads()
    load_before = os.getloadavg()[0]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = model.eval()
        images = torch.randn(batch_size, 3, *resolution, generator=torch.Generator().manual_seed(0))
        feed = {INPUT_NAME: images.numpy()}

        def pytorch_step() -> None:
            with torch.inference_mode():
                model(images)

        steps: dict[str, Callable[[], object]] = {"pytorch": pytorch_step}
        for label, path in onnx_files.items():
            session = open_session(path, threads, spin=False)
            steps[label] = lambda session=session: session.run(None, feed)
        engines = time_interleaved(steps, batch_size=batch_size, warmup=warmup, rounds=rounds)
    finally:
        torch.set_num_threads(previous_threads)
    return SideBySide(engines, batch_size, tuple(resolution), threads, warmup, rounds,
                      (load_before, os.getloadavg()[0]))
