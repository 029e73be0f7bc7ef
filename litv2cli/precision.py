"""The one rule for compute precision: what `--precision auto` means on a device, and the
autocast dtype each precision stands for. Training, evaluation, the search and the benchmarks
all ask here, so that what the search times is what training will run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

PRECISIONS = ("auto", "no", "bf16", "fp16")
AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device | str | None = None) -> bool:
    """Whether the GPU computes in bfloat16 natively (Ampere and later). Older GPUs emulate it
    slowly, which `is_bf16_supported()` counts as support unless told not to."""
    if not torch.cuda.is_available():
        return False
    index = torch.device(device).index if device is not None and torch.device(device).type == "cuda" else None
    with torch.cuda.device(index if index is not None else torch.cuda.current_device()):
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no emulation argument
            return torch.cuda.is_bf16_supported()


def resolve_precision(requested: str, device: torch.device | str | None = None) -> str:
    """`no`, `bf16` or `fp16`. `auto`: bf16 on a GPU that supports it natively, else fp16;
    no autocast on a CPU, where float32 is the faster choice for this model."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {requested!r}")
    if requested != "auto":
        return requested
    on_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if on_cuda:
        return "bf16" if native_bf16(device) else "fp16"
    return "no"


def autocast_dtype(precision: str, device: torch.device | str | None = None) -> torch.dtype | None:
    """The autocast dtype `precision` resolves to on `device` (None: float32, no autocast)."""
    return AUTOCAST_DTYPES[resolve_precision(precision, device)]


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the prepared model computes in: float32 under accelerate's autocast, bf16 or
    fp16 under DeepSpeed, which casts parameters and buffers but neither inputs nor autocasts."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def as_model_input(images: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """Images in the model's compute dtype (after Mixup, which mixes in float32) and layout."""
    images = images.to(dtype)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


@contextmanager
def step_autocast(accelerator) -> Iterator[None]:
    """The autocast of a training or evaluation step: accelerate's, which enters bf16 on any
    device and fp16 only on a GPU (it pairs fp16 with a gradient scaler it builds for GPUs),
    plus fp16 on a CPU, so that `--precision fp16` runs on a CPU as on a GPU, less the loss
    scaling. Under DeepSpeed neither applies: DeepSpeed casts the model instead."""
    from accelerate.utils import DistributedType

    on_cpu_fp16 = (accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu"
                   and accelerator.distributed_type != DistributedType.DEEPSPEED)
    with accelerator.autocast(), torch.autocast("cpu", dtype=torch.float16) if on_cpu_fp16 else nullcontext():
        yield
