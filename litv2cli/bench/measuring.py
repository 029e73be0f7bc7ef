"""The measurements `litv2 bench` makes, on top of the shared protocol in `litv2cli.measure.protocol`:
throughput of several models side by side, and peak memory that reports running out of memory
(or past the CPU's time budget) as an outcome instead of an exception.

On a CPU, all of a plan's throughput is timed in one fresh process with passive OpenMP waiting:
spinning OpenMP workers on shared cores, and what a process has run before, both change how fast
a model runs (`litv2cli.measure.fresh_process` says why; BENCHMARKS.md).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import torch
from torch import nn

from litv2cli.bench.protocol import BenchSettings
from litv2cli.measure.fresh_process import call_in_fresh_process
from litv2cli.measure.protocol import Measurement, Mode, measure_peak_memory, measure_throughput_interleaved

OK = "ok"
OOM = "OOM"
OVER_TIME = "over time budget"
# A fresh Python process imports torch and unpickles the model before its two timed steps.
CHILD_STARTUP_S = 60.0


@dataclass(frozen=True)
class Outcome:
    """A measured value, or None and why not."""

    value: float | None
    status: str = OK


def peak_memory_mib(model: nn.Module, settings: BenchSettings, resolution: tuple[int, int], mode: Mode) -> Outcome:
    """Peak memory of one `mode` step in MiB: CUDA allocator peak, or a fresh CPU process's peak RSS growth."""
    timeout = CHILD_STARTUP_S + 2 * settings.step_budget_s if settings.step_budget_s else 3600.0
    try:
        memory = measure_peak_memory(model, settings.batch_size, resolution, mode=mode, device=settings.device,
                                     timeout_s=timeout, autocast_dtype=settings.autocast_dtype)
    except torch.cuda.OutOfMemoryError:
        return Outcome(None, OOM)
    except subprocess.TimeoutExpired:
        return Outcome(None, OVER_TIME)
    except RuntimeError as exc:
        # The CPU child reports its own failure; the kernel's OOM killer leaves it without output.
        if "out of memory" in str(exc).lower() or "no output" in str(exc) or "Killed" in str(exc):
            return Outcome(None, OOM)
        raise
    finally:
        release(model, settings)
    return Outcome(memory.peak_bytes / 2**20)


# (resolution, names of the models timed there): one entry per resolution of a benchmark.
Plan = list[tuple[tuple[int, int], list[str]]]


def interleaved_throughput(models: dict[str, nn.Module], settings: BenchSettings, resolution: tuple[int, int],
                           mode: Mode = "infer") -> dict[str, Measurement]:
    """Median images/s of every model, one step of each in turn (see `measure_throughput_interleaved`)."""
    return planned_throughput(models, settings, [(resolution, list(models))], mode)[0]


def planned_throughput(models: dict[str, nn.Module], settings: BenchSettings, plan: Plan,
                       mode: Mode = "infer") -> list[dict[str, Measurement]]:
    """For each (resolution, names) of `plan`, the interleaved throughput of those models there.
    On a CPU the whole plan runs in one fresh process with passive OpenMP waiting (see the
    module docstring): one process start, however many resolutions."""
    if settings.device.type == "cpu":
        timed = {name for _, names in plan for name in names}
        return call_in_fresh_process(_throughput_here, {name: models[name] for name in timed}, settings, plan, mode,
                                     what="throughput")
    return _throughput_here(models, settings, plan, mode)


def _throughput_here(models: dict[str, nn.Module], settings: BenchSettings, plan: Plan,
                     mode: Mode) -> list[dict[str, Measurement]]:
    if settings.compile_mode is not None:
        models = {name: torch.compile(model, mode=settings.compile_mode) for name, model in models.items()}
    try:
        return [measure_throughput_interleaved(
            {name: models[name] for name in names}, settings.batch_size, resolution, mode=mode,
            device=settings.device, warmup=settings.warmup, repeats=settings.repeats,
            max_rounds=settings.max_rounds, autocast_dtype=settings.autocast_dtype) if names else {}
            for resolution, names in plan]
    finally:
        for model in models.values():
            release(model, settings)


def release(model: nn.Module, settings: BenchSettings) -> None:
    """Measuring moves a model to the device; move it back so the next measurement starts empty."""
    if settings.device.type == "cuda":
        model.cpu()
        torch.cuda.empty_cache()
