"""The measurement protocol shared by `litv2 search` and `litv2 bench`: speed and memory of any
`nn.Module`, measured on the device at hand, never estimated (`Measurement.protocol` states it).

Throughput: random inputs, under `torch.autocast` when asked with the weights left as they are,
as mixed-precision training runs; a train step is forward, backward and AdamW on a copy.
`warmup` untimed steps, then `repeats` timed ones; the result is their median images/s, and the
spread (IQR / median) shrugs off one preempted step but grows when the machine is busy
throughout. A round above `max_spread` is measured again, up to `max_rounds` rounds, and if none
gets below it the steadiest is reported with `stable=False` rather than hidden. CUDA work runs
with `device` current (`on_device`: events and memory statistics follow the current device) and
cuDNN's autotuner on, as in training. Peak memory is the CUDA allocator's peak over a step after
a first one (autotuning workspaces, optimizer state), or on a CPU the peak RSS growth of a fresh
process (a long-lived one keeps freed pages resident) plus the weights.
"""

from __future__ import annotations

import copy
import math
import pickle
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from litv2cli.measure.fresh_process import call_in_fresh_process

Mode = Literal["infer", "train"]
MAX_SPREAD = 0.10
T = TypeVar("T")


@dataclass(frozen=True)
class Measurement:
    """Throughput (or latency) of one configuration, with the protocol that produced it."""

    images_per_s: float  # median over the samples
    spread: float  # IQR / median of the samples (0.05 = 5%)
    samples: tuple[float, ...]  # images/s of every timed step of the kept round
    stable: bool  # spread <= max_spread
    rounds: int  # rounds measured (1 unless a round was refused)
    batch_size: int
    resolution: tuple[int, int]
    mode: str
    device: str  # e.g. "NVIDIA H100 80GB HBM3" or "cpu (2 threads)"
    dtype: str  # e.g. "float32" or "float32, autocast bfloat16"
    memory_format: str
    warmup: int
    repeats: int
    timer: str  # "cuda-events" or "perf_counter"

    @property
    def latency_ms(self) -> float:
        """Median time of one step in milliseconds (at batch 1 this is the latency)."""
        return 1000.0 * self.batch_size / self.images_per_s

    @property
    def protocol(self) -> str:
        height, width = self.resolution
        return (f"{self.mode}, batch {self.batch_size}, {height}x{width}, {self.dtype}, {self.memory_format}, "
                f"{self.device}, {self.warmup} warm-up + median of {self.repeats} steps timed by {self.timer}")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples"] = list(self.samples)
        data["resolution"] = list(self.resolution)
        data["latency_ms"] = self.latency_ms
        return data


@dataclass(frozen=True)
class MemoryMeasurement:
    """Peak memory of one step, in bytes, and how it was obtained."""

    peak_bytes: int
    method: str
    device: str
    batch_size: int
    resolution: tuple[int, int]
    mode: str
    details: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["resolution"] = list(self.resolution)
        return data


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def device_name(device: torch.device) -> str:
    """A human-readable name of the device, used in recipes' provenance and benchmark tables:
    the GPU's name, or 'cpu (<model name>, <n> threads)' with the intra-op threads PyTorch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    count = f"{threads} thread{'s' if threads != 1 else ''}"
    model = cpu_model_name() if device.type == "cpu" else None
    return f"{device.type} ({model}, {count})" if model else f"{device.type} ({count})"


def cpu_model_name() -> str | None:
    """The processor's marketing name ('Intel(R) Xeon(R) Processor'), or None where it is unknown."""
    import platform

    try:
        with open("/proc/cpuinfo") as handle:  # Linux
            for line in handle:
                if line.startswith(("model name", "Model")) and ":" in line:
                    return " ".join(line.split(":", 1)[1].split()) or None
    except OSError:
        pass
    return platform.processor() or None


def relative_spread(samples: list[float] | tuple[float, ...]) -> float:
    """Interquartile range divided by the median; 0 for fewer than two samples."""
    if len(samples) < 2:
        return 0.0
    quartiles = statistics.quantiles(samples, n=4, method="inclusive")
    median = statistics.median(samples)
    return (quartiles[2] - quartiles[0]) / median if median > 0 else math.inf


def measure_throughput(model: nn.Module, batch_size: int, resolution: tuple[int, int], *, mode: Mode = "infer",
                       device: torch.device | str | None = None, warmup: int = 5, repeats: int = 20,
                       max_spread: float = MAX_SPREAD, max_rounds: int = 3, channels_last: bool = False,
                       autocast_dtype: torch.dtype | None = None) -> Measurement:
    """Median images/s of `model` at (batch_size, 3, *resolution); see the module docstring."""
    _check_protocol(batch_size, repeats, warmup, max_rounds, mode)
    device = torch.device(device) if device is not None else default_device()
    with on_device(device):
        step, model = _make_step(model, batch_size, resolution, mode=mode, device=device,
                                 channels_last=channels_last, autocast_dtype=autocast_dtype)
        for _ in range(warmup):
            step()
        _synchronize(device)
        best, rounds = _best_round(lambda: [batch_size / seconds for seconds in _timed_steps(step, repeats, device)],
                                   relative_spread, max_spread, max_rounds)
    return _measurement(best, rounds, model, device_name(device), batch_size=batch_size, resolution=resolution,
                        mode=mode, warmup=warmup, repeats=repeats, max_spread=max_spread, channels_last=channels_last,
                        autocast_dtype=autocast_dtype, timer="cuda-events" if device.type == "cuda" else "perf_counter")


def measure_throughput_interleaved(models: dict[str, nn.Module], batch_size: int, resolution: tuple[int, int], *,
                                   mode: Mode = "infer", device: torch.device | str | None = None, warmup: int = 5,
                                   repeats: int = 20, max_spread: float = MAX_SPREAD, max_rounds: int = 3,
                                   channels_last: bool = False, autocast_dtype: torch.dtype | None = None,
                                   ) -> dict[str, Measurement]:
    """`measure_throughput` of several models side by side: each timed cycle runs one step of
    every model, in an order that rotates from cycle to cycle, so that the drift of a shared
    machine hits all of them alike and their ratios stay meaningful. A round is refused (and
    measured again, at most `max_rounds`) while any model's spread is above `max_spread`; the
    round whose worst spread is smallest is kept."""
    if not models:
        raise ValueError("models must be non-empty")
    _check_protocol(batch_size, repeats, warmup, max_rounds, mode)
    device = torch.device(device) if device is not None else default_device()
    names = list(models)
    steps, prepared = {}, {}
    with on_device(device):
        for name in names:
            steps[name], prepared[name] = _make_step(models[name], batch_size, resolution, mode=mode, device=device,
                                                     channels_last=channels_last, autocast_dtype=autocast_dtype)
        for _ in range(warmup):
            for name in names:
                steps[name]()
        _synchronize(device)

        timed = {name: lambda step=steps[name]: batch_size / _timed_steps(step, 1, device)[0] for name in names}
        best, rounds = _best_round(lambda: interleaved(timed, repeats), _worst_spread, max_spread, max_rounds)
    label = device_name(device)
    timer = ("cuda-events" if device.type == "cuda" else "perf_counter") + ", interleaved"
    return {name: _measurement(best[name], rounds, prepared[name], label, batch_size=batch_size, resolution=resolution,
                               mode=mode, warmup=warmup, repeats=repeats, max_spread=max_spread,
                               channels_last=channels_last, autocast_dtype=autocast_dtype, timer=timer)
            for name in names}


def interleaved(steps: dict[str, Callable[[], T]], cycles: int) -> dict[str, list[T]]:
    """What every step returned, over `cycles` cycles. A cycle calls each step once, in an order
    that rotates from cycle to cycle, so that the drift of a shared machine hits all alike and
    no step always runs first or last."""
    names = list(steps)
    results: dict[str, list[T]] = {name: [] for name in names}
    for cycle in range(cycles):
        shift = cycle % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(steps[name]())
    return results


def _check_protocol(batch_size: int, repeats: int, warmup: int, max_rounds: int, mode: str) -> None:
    if batch_size < 1 or repeats < 1 or warmup < 0 or max_rounds < 1:
        raise ValueError("batch_size, repeats and max_rounds must be >= 1 and warmup >= 0")
    if mode not in ("infer", "train"):
        raise ValueError(f"mode must be 'infer' or 'train', not {mode!r}")


def _best_round(run_round: Callable[[], Any], spread_of: Callable[[Any], float], max_spread: float,
                max_rounds: int) -> tuple[Any, int]:
    """Run rounds until one's spread is within `max_spread` (at most `max_rounds`); returns the
    round with the smallest spread and how many rounds ran."""
    best, best_spread, rounds = None, math.inf, 0
    for rounds in range(1, max_rounds + 1):
        samples = run_round()
        spread = spread_of(samples)
        if best is None or spread < best_spread:
            best, best_spread = samples, spread
        if best_spread <= max_spread:
            break
    return best, rounds


def _measurement(samples: list[float], rounds: int, model: nn.Module, device: str, *, batch_size: int,
                 resolution: tuple[int, int], mode: Mode, warmup: int, repeats: int, max_spread: float,
                 channels_last: bool, autocast_dtype: torch.dtype | None, timer: str) -> Measurement:
    spread = relative_spread(samples)
    dtype = dtype_label(next(model.parameters(), torch.empty(0)).dtype, autocast_dtype)
    return Measurement(
        images_per_s=statistics.median(samples), spread=spread, samples=tuple(samples), stable=spread <= max_spread,
        rounds=rounds, batch_size=batch_size, resolution=tuple(resolution), mode=mode, device=device, dtype=dtype,
        memory_format="channels_last" if channels_last else "contiguous", warmup=warmup, repeats=repeats, timer=timer,
    )


def dtype_label(weights: torch.dtype, autocast_dtype: torch.dtype | None = None) -> str:
    """How a step computes, as protocols state it: 'float32', or 'float32, autocast bfloat16'."""
    label = str(weights).removeprefix("torch.")
    return label if autocast_dtype is None else f"{label}, autocast {str(autocast_dtype).removeprefix('torch.')}"


def _worst_spread(samples: dict[str, list[float]]) -> float:
    return max(relative_spread(values) for values in samples.values())


def measure_latency(model: nn.Module, resolution: tuple[int, int], *, device: torch.device | str | None = None,
                    warmup: int = 5, repeats: int = 20, max_spread: float = MAX_SPREAD, max_rounds: int = 3,
                    channels_last: bool = False, autocast_dtype: torch.dtype | None = None) -> Measurement:
    """Inference at batch 1; read `.latency_ms` (median milliseconds per image)."""
    return measure_throughput(model, 1, resolution, mode="infer", device=device, warmup=warmup, repeats=repeats,
                              max_spread=max_spread, max_rounds=max_rounds, channels_last=channels_last,
                              autocast_dtype=autocast_dtype)


def measure_peak_memory(model: nn.Module, batch_size: int, resolution: tuple[int, int], *, mode: Mode = "infer",
                        device: torch.device | str | None = None, timeout_s: float = 600.0,
                        autocast_dtype: torch.dtype | None = None) -> MemoryMeasurement:
    """Peak bytes of one step (under `autocast_dtype`, as timed): CUDA allocator peak on GPU,
    peak RSS growth of a fresh process on CPU."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        return _cuda_peak_memory(model, batch_size, resolution, mode=mode, device=device,
                                 autocast_dtype=autocast_dtype)
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on cuda or cpu, not {device.type}")
    return _cpu_peak_memory(model, batch_size, resolution, mode=mode, timeout_s=timeout_s,
                            autocast_dtype=autocast_dtype)


def tensor_bytes(model: nn.Module) -> int:
    """Bytes held by the parameters and buffers of `model`."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


@contextmanager
def on_device(device: torch.device) -> Iterator[None]:
    """On CUDA: `device` as the current device and cuDNN's autotuner on, for the block (see the
    module docstring); the previous settings come back afterwards. Nothing on other devices."""
    if device.type != "cuda":
        yield
        return
    autotune = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        with torch.cuda.device(device):
            yield
    finally:
        torch.backends.cudnn.benchmark = autotune


# --- internals ---------------------------------------------------------------------------


def _make_step(model: nn.Module, batch_size: int, resolution: tuple[int, int], *, mode: Mode, device: torch.device,
               channels_last: bool, autocast_dtype: torch.dtype | None):
    """A closure running one step, and the module it runs (a copy in train mode)."""
    height, width = resolution
    if mode == "train":
        model = copy.deepcopy(model)
    model = model.to(device)
    dtype = next(model.parameters(), torch.empty(0)).dtype
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, height, width, generator=generator, dtype=dtype)
    images = images.to(device).contiguous(memory_format=memory_format)
    autocast = (lambda: torch.autocast(device.type, dtype=autocast_dtype)) if autocast_dtype else nullcontext

    if mode == "infer":
        model.eval()

        def step() -> None:
            with torch.inference_mode(), autocast():
                model(images)
        return step, model

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def train_step() -> None:
        with autocast():
            loss = model(images).float().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return train_step, model


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(step, repeats: int, device: torch.device) -> list[float]:
    """Seconds of each of `repeats` steps."""
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) / 1000.0 for start, end in events]
    seconds = []
    for _ in range(repeats):
        begin = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - begin)
    return seconds


def _cuda_peak_memory(model: nn.Module, batch_size: int, resolution: tuple[int, int], *, mode: Mode,
                      device: torch.device, autocast_dtype: torch.dtype | None = None) -> MemoryMeasurement:
    # One step before the measured one: a process's first step also holds cuDNN's autotuning
    # workspaces, which made the first model measured in a process look the heaviest
    # (BENCHMARKS.md, on a GPU), and a training step's optimizer state is made there.
    with on_device(device):
        step, _ = _make_step(model, batch_size, resolution, mode=mode, device=device, channels_last=False,
                             autocast_dtype=autocast_dtype)
        step()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak = int(torch.cuda.max_memory_allocated(device))
    return MemoryMeasurement(peak_bytes=peak, method="torch.cuda.max_memory_allocated in a second step",
                             device=device_name(device), batch_size=batch_size, resolution=tuple(resolution),
                             mode=mode)


def _cpu_peak_memory(model: nn.Module, batch_size: int, resolution: tuple[int, int], *, mode: Mode,
                     timeout_s: float, autocast_dtype: torch.dtype | None = None) -> MemoryMeasurement:
    weights = tensor_bytes(model)
    try:
        growth, source = call_in_fresh_process(_peak_rss_growth, copy.deepcopy(model).cpu(), batch_size,
                                               tuple(resolution), mode, autocast_dtype, what="peak-memory",
                                               timeout=timeout_s)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:  # raised here, while pickling the model
        raise ValueError(f"CPU peak memory needs a picklable model ({exc})") from exc
    return MemoryMeasurement(
        peak_bytes=growth + weights,
        method=f"peak RSS growth of a fresh process over two steps ({source}) + weights and buffers",
        device=device_name(torch.device("cpu")), batch_size=batch_size, resolution=tuple(resolution), mode=mode,
        details={"rss_growth_bytes": growth, "weights_bytes": weights},
    )


def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_growth(model: nn.Module, batch_size: int, resolution: tuple[int, int], mode: Mode,
                     autocast_dtype: torch.dtype | None = None) -> tuple[int, str]:
    """Runs in the fresh process of `_cpu_peak_memory`: (peak RSS growth in bytes over two steps, its source)."""
    import gc
    import resource

    step, _ = _make_step(model, batch_size, resolution, mode=mode, device=torch.device("cpu"), channels_last=False,
                         autocast_dtype=autocast_dtype)
    gc.collect()
    baseline_kib = _status_kib("VmRSS")
    if baseline_kib is not None and _reset_peak_rss():
        source = "VmHWM"
    else:
        baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        source = "ru_maxrss"
    for _ in range(2):  # the second step shows steady state (e.g. AdamW's state exists from the first)
        step()
    peak_kib = _status_kib("VmHWM") if source == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(peak_kib - baseline_kib, 0) * 1024, source
