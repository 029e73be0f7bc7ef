"""The measurements `litv2 bench` makes, on top of the shared protocol in `litv2cli.measure`:
throughput of several models side by side, and peak memory that reports running out of memory
(or past the CPU's time budget) as an outcome instead of an exception.

On a CPU, throughput is timed in a fresh process started with `OMP_WAIT_POLICY=PASSIVE` (unless
the environment sets a policy). By default OpenMP's worker threads spin while they wait for
work; when other processes share the cores, a spinning worker holds the core the main thread
needs, and on 2 busy cores a 5 ms step of LITv2-T took from 20 ms to over 800 ms, so that
`bench model` reported a few images/s where the model does about 200. The policy is read
once, when the OpenMP runtime loads with torch, so it cannot be changed in this process; a
child started with it can.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from litv2cli.bench.protocol import BenchSettings, default_settings, omp_wait_policy
from litv2cli.measure import (
    Measurement, Mode, child_environment, measure_peak_memory, measure_throughput_interleaved, run_child,
)

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
        return _throughput_in_child(models, settings, plan, mode)
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


def timing_environment() -> dict[str, str]:
    """The timing child's environment: passive OpenMP waiting unless set (see `omp_wait_policy`)."""
    return child_environment(OMP_WAIT_POLICY=omp_wait_policy())


def _throughput_in_child(models: dict[str, nn.Module], settings: BenchSettings, plan: Plan,
                         mode: Mode) -> list[dict[str, Measurement]]:
    timed = {name for _, names in plan for name in names}
    job = {"plan": [[list(resolution), names] for resolution, names in plan], "mode": mode,
           "batch_size": settings.batch_size, "warmup": settings.warmup, "repeats": settings.repeats,
           "compile_mode": settings.compile_mode,
           "autocast": None if settings.autocast_dtype is None else str(settings.autocast_dtype).removeprefix("torch.")}
    with tempfile.TemporaryDirectory(prefix="litv2-bench-") as tmp:
        torch.save({name: model for name, model in models.items() if name in timed}, Path(tmp) / "models.pt")
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        stdout = run_child(["-m", "litv2cli.bench.measuring", tmp], "throughput", env=timing_environment())
    results = json.loads(stdout.strip().splitlines()[-1])
    return [{name: _measurement(data) for name, data in at_resolution.items()} for at_resolution in results]


def _measurement(data: dict) -> Measurement:
    fields = {key: value for key, value in data.items() if key in Measurement.__dataclass_fields__}
    return Measurement(**{**fields, "samples": tuple(fields["samples"]), "resolution": tuple(fields["resolution"])})


def _child_main(job_dir: str) -> int:
    """Runs in the process started by `_throughput_in_child`; prints one JSON line of results."""
    job = json.loads((Path(job_dir) / "job.json").read_text())
    models = torch.load(Path(job_dir) / "models.pt", weights_only=False)  # our own file, written a moment ago
    settings = default_settings(batch_size=job["batch_size"], warmup=job["warmup"], repeats=job["repeats"],
                                dtype=job["autocast"] or "float32", compile_mode=job["compile_mode"],
                                device=torch.device("cpu"))
    plan = [(tuple(resolution), names) for resolution, names in job["plan"]]
    measured = _throughput_here(models, settings, plan, job["mode"])
    print(json.dumps([{name: value.as_dict() for name, value in at_resolution.items()} for at_resolution in measured]))
    return 0


def release(model: nn.Module, settings: BenchSettings) -> None:
    """Measuring moves a model to the device; move it back so the next measurement starts empty."""
    if settings.device.type == "cuda":
        model.cpu()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
