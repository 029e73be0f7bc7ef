"""HiLo's two attentions as C++ kernels compiled on this machine at first use, for CPU inference.

On a CPU, HiLo's attention is thousands of tiny problems (per image and head: 196 queries
against 49 pooled keys for Lo-Fi, 2 x 2 windows for Hi-Fi) on which
`scaled_dot_product_attention` spends more time in blocking and bookkeeping than in arithmetic;
`kernels/hilo_cpu.cpp` does the same sums with the shapes fixed at compile time and adds the
projection biases itself (BENCHMARKS.md has the measured gain). The kernels are built for this
CPU by the compiler on PATH (`CXX`, else g++), linked to the OpenMP runtime PyTorch loaded (one
thread pool), and cached under ~/.cache/litv2cli/kernels (`LITV2_CACHE_DIR`, `XDG_CACHE_HOME`). Autograd,
torch.compile and export, a machine without a compiler, and LITV2_NATIVE=0 take
scaled_dot_product_attention: the same outputs, slower. `status()` says which and why.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from litv2cli.models.capture import capturing

SOURCE = Path(__file__).with_name("kernels") / "hilo_cpu.cpp"
HEAD_DIMS = (16, 32, 48, 64)  # the kernels keep 4 queries x HD / 16 output vectors in registers
# Lo-Fi keys per image up to which the kernels beat SDPA's blocked kernel (196: a 28 x 28 map at
# s = 2); their lead shrinks as keys grow and is gone beyond this (BENCHMARKS.md, HiLo layer,
# `python benchmarks/bench_hilo.py keys`).
MAX_KEYS = 196

_lock = threading.Lock()
_libraries: dict[tuple, ctypes.CDLL] = {}
_failure: str | None = None
_I64, _PTR, _F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
NO_COMPILER = "no C++ compiler: install g++ or set CXX"


class BuildError(RuntimeError):
    """The kernels could not be compiled or loaded here (the reason is in `status()`)."""


def disabled_reason() -> str | None:
    if os.environ.get("LITV2_NATIVE", "1") == "0":
        return "turned off by LITV2_NATIVE=0"
    if not sys.platform.startswith("linux"):
        return "built on Linux only"
    return _failure


def status() -> str:
    """One line for reports: whether HiLo's CPU inference runs on the compiled kernels."""
    reason = disabled_reason() or (None if find_compiler() else NO_COMPILER)
    if reason:
        return f"off ({reason}): scaled_dot_product_attention instead"
    return f"on (compiled for this CPU, {'built' if _libraries else 'built on first use'})"


def applies(x: torch.Tensor) -> bool:
    """Whether a HiLo forward on `x` may take the kernels: float32 CPU inference run eagerly."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not capturing() and not torch.is_autocast_enabled("cpu") and disabled_reason() is None)


def lofi_kernel(keys: int, head_dim: int) -> Callable[..., None] | None:
    """Lo-Fi attention over `keys` keys per image, or None where the kernels do not apply."""
    if keys > MAX_KEYS or head_dim not in HEAD_DIMS:
        return None
    library = _library(KEYS=keys, HD=head_dim)
    if library is None:
        return None

    def lofi(q, q_bias, k, k_bias, v, v_bias, out, batch: int, heads: int, tokens: int) -> None:
        """q, k, v, out: (rows, columns) views of row-major buffers; the heads side by side."""
        _check_rows(q, k, v, out)
        library.lofi(q.data_ptr(), q_bias.data_ptr(), q.stride(0), k.data_ptr(), k_bias.data_ptr(),
                     v.data_ptr(), v_bias.data_ptr(), k.stride(0), out.data_ptr(), out.stride(0),
                     batch, heads, tokens, head_dim ** -0.5)
    return lofi


def hifi_kernel(window: int, head_dim: int) -> Callable[..., None] | None:
    """Hi-Fi attention inside `window` x `window` windows, or None where the kernels do not apply."""
    if window * window > 64 or head_dim not in HEAD_DIMS:
        return None
    library = _library(WIN=window, HD=head_dim)
    if library is None:
        return None

    def hifi(qkv, bias, out, batch: int, height: int, width: int, heads: int) -> None:
        """qkv: (tokens, >= 3 * heads * head_dim) in map order; out: (tokens, >= heads * head_dim)."""
        _check_rows(qkv, out)
        library.hifi(qkv.data_ptr(), bias.data_ptr(), qkv.stride(0), out.data_ptr(), out.stride(0),
                     batch, height, width, heads, head_dim ** -0.5)
    return hifi


def _check_rows(*tensors: torch.Tensor) -> None:
    # The kernels index raw pointers: anything but rows of contiguous float32 would be read wrong.
    for tensor in tensors:
        if tensor.dim() != 2 or tensor.stride(1) != 1 or tensor.dtype != torch.float32:
            raise ValueError(f"native HiLo kernels need row-major float32 rows, got {tuple(tensor.shape)} "
                             f"with strides {tensor.stride()} ({tensor.dtype})")


def _library(**constants: int) -> ctypes.CDLL | None:
    global _failure
    key = tuple(sorted(constants.items()))
    with _lock:
        if key not in _libraries:
            if disabled_reason() is not None:
                return None
            try:
                _libraries[key] = _build(constants)
            except (OSError, RuntimeError) as exc:  # BuildError, or a missing source, cache or home
                _failure = str(exc) if isinstance(exc, BuildError) else f"cannot build the kernels: {exc}"
                return None
        return _libraries[key]


def _build(constants: dict[str, int]) -> ctypes.CDLL:
    compiler = find_compiler()
    if not compiler:
        raise BuildError(NO_COMPILER)
    runtime = _openmp_runtime()
    if runtime is None:
        raise BuildError("the OpenMP runtime PyTorch uses was not found")
    defines = [f"-D{name}={value}" for name, value in sorted(constants.items())]
    flags = ["-O3", "-march=native", "-fPIC", "-std=c++17", *defines]
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"cannot run the C++ compiler {compiler}: {exc}") from None
    # A cache shared by machines must never hand one CPU another's instructions.
    digest = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join(flags), str(runtime),
                                       _cpu_signature()]).encode()).hexdigest()[:16]
    name = "_".join(f"{k.lower()}{v}" for k, v in sorted(constants.items()))
    target = _cache_dir() / f"hilo_{name}_{digest}.so"
    library = None
    for attempt in range(2):  # a cached library that does not load (damaged, wrong libc) is rebuilt once
        if attempt or not target.exists():
            _compile(compiler, flags, runtime, target)
        try:
            library = ctypes.CDLL(str(target))
            break
        except OSError as exc:
            if attempt:
                raise BuildError(f"cannot load {target}: {exc}") from None
    if "KEYS" in constants:
        library.lofi.argtypes = [_PTR, _PTR, _I64, _PTR, _PTR, _PTR, _PTR, _I64, _PTR, _I64, _I64, _I64, _I64, _F32]
    if "WIN" in constants:
        library.hifi.argtypes = [_PTR, _PTR, _I64, _PTR, _I64, _I64, _I64, _I64, _I64, _F32]
    return library


def _compile(compiler: str, flags: list[str], runtime: Path, target: Path) -> None:
    """Compile with -fopenmp but link to PyTorch's own runtime (not the compiler's), so the
    kernels and PyTorch share one thread pool; written under a temporary name, then renamed,
    so concurrent processes never load a half-written library."""
    partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.part")
    objects = partial.with_suffix(".o")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        for command in ([compiler, *flags, "-fopenmp", "-c", str(SOURCE), "-o", str(objects)],
                        [compiler, "-shared", str(objects), str(runtime), f"-Wl,-rpath,{runtime.parent}",
                         "-o", str(partial)]):
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if result.returncode:
                last = (result.stderr.strip().splitlines() or ["no message"])[-1]
                raise BuildError(f"{Path(compiler).name} failed to build the kernels: {last}")
        os.replace(partial, target)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"cannot build the kernels in {target.parent}: {exc}") from None
    finally:
        for leftover in (partial, objects):
            with contextlib.suppress(OSError):
                leftover.unlink(missing_ok=True)


def find_compiler() -> str | None:
    """The C++ compiler the kernels are built with, or None."""
    return os.environ.get("CXX") or shutil.which("g++")


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _openmp_runtime() -> Path | None:
    """The OpenMP library libtorch_cpu itself calls. Other packages bring their own copies
    (scikit-learn's wheels bundle a libgomp), so whatever OpenMP the process has loaded will not do."""
    torch_cpu = _loaded_library("libtorch_cpu")
    if torch_cpu is None:
        return None
    info = _DlInfo()
    try:
        # dlsym on libtorch_cpu's handle searches it, then its own dependencies, in their order.
        function = ctypes.CDLL(str(torch_cpu)).omp_get_max_threads
        if not ctypes.CDLL(None).dladdr(ctypes.cast(function, ctypes.c_void_p), ctypes.byref(info)):
            return None
    except (OSError, AttributeError):
        return None
    return Path(os.fsdecode(info.dli_fname)) if info.dli_fname else None


def _loaded_library(stem: str) -> Path | None:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = Path(line.split()[-1])
        if path.name.startswith(stem + ".so"):
            return path
    return None


def _cpu_signature() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return "\n".join(next((line for line in lines if line.startswith(key)), "") for key in ("model name", "flags"))


def _cache_dir() -> Path:
    if os.environ.get("LITV2_CACHE_DIR"):
        return Path(os.environ["LITV2_CACHE_DIR"]) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "litv2cli" / "kernels"
