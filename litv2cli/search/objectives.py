"""The objectives a search can trade off, each with its direction and unit."""

from __future__ import annotations

from dataclasses import dataclass

from litv2cli.errors import UserError


@dataclass(frozen=True)
class Objective:
    name: str
    direction: str  # "maximize" or "minimize"
    unit: str
    help: str

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("throughput", "maximize", "images/s", "measured images/s at --batch-size (median)"),
    Objective("latency", "minimize", "ms", "measured milliseconds per image at batch 1 (median)"),
    Objective("memory", "minimize", "bytes", "measured peak memory of one step at --batch-size"),
    Objective("top1", "maximize", "", "accuracy proxy: zero-cost rank score in [0, 1], or val top-1 % (train)"),
    Objective("params", "minimize", "", "number of parameters"),
    Objective("flops", "minimize", "MACs", "multiply-accumulates of one image, counted the paper's way"),
)}

# Measured on the device and recorded by the measurement study; `top1` comes from the proxy.
MEASURED = ("throughput", "latency", "memory", "params", "flops")


def parse_objectives(text: str) -> tuple[Objective, ...]:
    """'throughput,top1' -> the objectives in the given order; unknown or repeated names are errors."""
    names = [n.strip().lower() for n in str(text).split(",") if n.strip()]
    if not names:
        raise UserError("--objective: give at least one of " + ", ".join(OBJECTIVES))
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise UserError(f"--objective {text}: unknown objective {unknown[0]!r}; choose from {', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise UserError(f"--objective {text}: an objective is listed twice")
    return tuple(OBJECTIVES[n] for n in names)


def parse_bytes(text: str | None) -> int | None:
    """'8GB', '512MiB', '1.5e9' -> bytes (decimal and binary suffixes)."""
    if text is None:
        return None
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30}
    raw = str(text).strip().lower().replace(" ", "")
    number = raw.rstrip("kmgtib")
    suffix = raw[len(number):]
    try:
        value = float(number) * units[suffix]
    except (ValueError, KeyError):
        raise UserError(f"--max-memory {text!r}: use bytes or a size such as 8GB or 512MiB") from None
    if value <= 0:
        raise UserError(f"--max-memory {text}: must be positive")
    return int(value)
