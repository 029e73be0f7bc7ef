"""How `litv2 bench` measures: one settings object, device-dependent defaults, and the line of
protocol printed with every table (batch, dtype, memory format, compile mode, resolution,
device, timing)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from litv2cli.measure.fresh_process import omp_wait_policy
from litv2cli.measure.protocol import default_device, device_name
from litv2cli.models import native
from litv2cli.precision import autocast_dtype

# The paper's protocol on a GPU (batch 64, median of 30 steps, mixed precision); on a 2-core CPU
# the same table must finish in minutes, so the batch shrinks there (and --repeats can cut the
# steps). A median of a handful of steps on a shared CPU is whatever the neighbours did, so the
# 30 steps stay the default.
# A round whose spread is above 10% is measured again (`litv2cli.measure.protocol`); on a shared CPU that
# would triple the run, so there the spread is reported instead.
GPU_DEFAULTS = dict(batch_size=64, warmup=10, repeats=30, max_rounds=3)
CPU_DEFAULTS = dict(batch_size=4, warmup=2, repeats=30, max_rounds=1)
# --dtype: "auto" picks per device (`default_settings`); the others name the autocast dtype, or
# float32 for none. The weights stay float32 either way, as under accelerate's mixed precision.
DTYPE_AUTOCAST: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16,
                                                  "float16": torch.float16}
DTYPES = ("auto", *DTYPE_AUTOCAST)


@dataclass(frozen=True)
class BenchSettings:
    """Everything that decides a benchmark number, fixed before the first model is built."""

    device: torch.device
    batch_size: int
    warmup: int
    repeats: int
    autocast_dtype: torch.dtype | None  # bf16 or fp16 autocast; by default bf16 on CUDA, none (float32) on CPU
    compile_mode: str | None  # None: eager; otherwise a torch.compile mode ("default", "max-autotune", ...)
    measure_memory: bool = True
    max_rounds: int = 1
    step_budget_s: float | None = None  # CPU: a step slower than this is marked, not measured further

    @property
    def dtype_label(self) -> str:
        if self.autocast_dtype is None:
            return "float32"
        return f"float32 weights, autocast {str(self.autocast_dtype).removeprefix('torch.')}"

    def native_kernels(self) -> str:
        """Whether HiLo's CPU inference runs on the compiled kernels, which are float32 only:
        under autocast they never run, whatever `native.status()` says of this machine."""
        return "not used (float32 only)" if self.autocast_dtype is not None else native.status()

    def protocol(self, resolution: str) -> str:
        compiled = "eager" if self.compile_mode is None else f"torch.compile(mode={self.compile_mode!r})"
        timer = "CUDA events" if self.device.type == "cuda" else (
            f"perf_counter in a fresh process with OMP_WAIT_POLICY={omp_wait_policy()}")
        kernels = f"; HiLo's native CPU kernels {self.native_kernels()}" if self.device.type == "cpu" else ""
        return (f"batch {self.batch_size}, {resolution}, {self.dtype_label}, contiguous (NCHW) input, {compiled}, "
                f"{device_name(self.device)}, torch {torch.__version__}; {self.warmup} warm-up steps, median of "
                f"{self.repeats} steps timed by {timer}, models interleaved step by step{kernels}")


def default_settings(*, batch_size: int | None = None, warmup: int | None = None, repeats: int | None = None,
                     dtype: str = "auto", compile_mode: str | None = None, measure_memory: bool = True,
                     step_budget_s: float | None = None, device: torch.device | None = None) -> BenchSettings:
    """Settings for the device at hand, the device's defaults filling whatever is None."""
    device = device or default_device()
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    if dtype == "auto":
        autocast = autocast_dtype("auto", device)  # what training's --precision auto runs
    elif dtype in DTYPE_AUTOCAST:
        autocast = DTYPE_AUTOCAST[dtype]
    else:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return BenchSettings(
        device=device,
        batch_size=batch_size or defaults["batch_size"],
        warmup=defaults["warmup"] if warmup is None else warmup,
        repeats=repeats or defaults["repeats"],
        autocast_dtype=autocast,
        compile_mode=compile_mode,
        measure_memory=measure_memory,
        max_rounds=defaults["max_rounds"],
        step_budget_s=step_budget_s if device.type == "cpu" else None,
    )
