"""The search space: HiLo's split ratio alpha and the window size s of the HiLo stages.

A *point* is one distinct architecture: alphas that give the same number of Lo-Fi heads in every
windowed stage build the same network (the model's own `split_heads` decides), so they are one
point, not several trials, and with `--window 1` every alpha collapses into one. Windows are
shared by the HiLo stages by default, with the last stage global as in the paper (`--window 2`
means per-stage windows (0, 0, 2, 1)); `per_stage_window` searches stages 3 and 4 separately.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from litv2cli.defaults import PAPER_ALPHA, PAPER_WINDOW
from litv2cli.errors import UserError

HILO_STAGES = (2, 3)  # zero-based indices of the stages that hold HiLo attention
DEFAULT_ALPHAS = "0:1:0.1"
DEFAULT_WINDOWS = "1,2,4"
STAGE_STRIDES = (4, 8, 16, 32)  # feature-map stride of each stage


@dataclass(frozen=True)
class Point:
    """One distinct configuration of the searched variant."""

    alpha: float  # the alpha written to the recipe (of `alphas`, the one nearest the paper's 0.9)
    window: tuple[int, int, int, int]  # per-stage window sizes, as in the recipe
    lofi_heads: tuple[int | None, ...]  # Lo-Fi heads per HiLo stage; None where the stage is global
    alphas: tuple[float, ...]  # every requested alpha that builds this same network

    @property
    def label(self) -> str:
        """Stable, readable id, used as the Optuna parameter value: 'a0.9-w2.1'."""
        return f"a{self.alpha:g}-w{'.'.join(str(self.window[i]) for i in HILO_STAGES)}"


@dataclass(frozen=True)
class SearchSpace:
    """The requested grid for one variant before de-duplication."""

    variant: str
    num_heads: tuple[int, ...]  # heads per stage of the variant
    alphas: tuple[float, ...]
    windows: tuple[int, ...]
    per_stage_window: bool
    resolution: tuple[int, int]

    def window_options(self) -> list[tuple[int, int, int, int]]:
        if self.per_stage_window:
            return [(0, 0, w3, w4) for w3, w4 in itertools.product(self.windows, self.windows)]
        return [(0, 0, w, 1) for w in self.windows]

    def points(self) -> list[Point]:
        """The distinct configurations, ordered by window then alpha."""
        groups: dict[tuple, list[float]] = {}
        for window in self.window_options():
            for alpha in self.alphas:
                groups.setdefault((window, lofi_split(self.num_heads, alpha, window)), []).append(alpha)
        points = [Point(alpha=representative_alpha(alphas), window=window, lofi_heads=split, alphas=tuple(alphas))
                  for (window, split), alphas in groups.items()]
        if not points:
            raise UserError("the search space is empty: give at least one alpha and one window size")
        return sorted(points, key=lambda p: (tuple(p.window[i] for i in HILO_STAGES), p.alpha))

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this space in a study (checked when a study is resumed)."""
        return {"variant": self.variant, "resolution": list(self.resolution),
                "points": [p.label for p in self.points()]}


def lofi_split(num_heads: tuple[int, ...], alpha: float, window: tuple[int, ...]) -> tuple[int | None, ...]:
    """Lo-Fi heads per HiLo stage, by the model's own rule; None for a global (window 1) stage."""
    from litv2cli.models.hilo import split_heads

    return tuple(None if window[stage] == 1 else split_heads(num_heads[stage], window[stage], alpha)[1]
                 for stage in HILO_STAGES)


def representative_alpha(alphas: list[float]) -> float:
    """Of alphas building the same network, the one nearest the paper's 0.9 (the larger on a tie)."""
    return min(alphas, key=lambda a: (abs(a - PAPER_ALPHA), -a))


def paper_default_label(points: list[Point], num_heads: tuple[int, ...]) -> str | None:
    """The label of the point that builds the paper's network (alpha 0.9, window 2), if searched."""
    key = (PAPER_WINDOW, lofi_split(num_heads, PAPER_ALPHA, PAPER_WINDOW))
    for point in points:
        if (point.window, point.lofi_heads) == key:
            return point.label
    return None


def parse_alphas(text: str) -> tuple[float, ...]:
    """'0:1:0.1' (start:stop:step, stop included), '0.5,0.9' or '0.9' -> sorted distinct alphas."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step <= 0:
                raise UserError(f"--alpha {text}: the step must be positive")
            count = math.floor((stop - start) / step + 1e-9) + 1
            values = [round(start + i * step, 6) for i in range(max(count, 0))]
        else:
            values = [round(float(p), 6) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UserError(f"--alpha {text!r}: use start:stop:step such as 0:1:0.1, or a list such as 0.5,0.9") from None
    bad = [v for v in values if not 0.0 <= v <= 1.0 or math.isnan(v)]
    if bad:
        raise UserError(f"--alpha {text}: alpha {bad[0]:g} is outside [0, 1] (alpha is the fraction of Lo-Fi heads)")
    if not values:
        raise UserError(f"--alpha {text}: no alpha values (empty grid)")
    return tuple(sorted(set(values)))


def parse_windows(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4): window sizes s of the HiLo stages, each >= 1 (1 = global attention)."""
    try:
        values = [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise UserError(f"--window {text!r}: use comma-separated integers such as 1,2,4") from None
    if not values:
        raise UserError(f"--window {text!r}: no window sizes (empty grid)")
    bad = [v for v in values if v < 1]
    if bad:
        raise UserError(f"--window {text}: window size {bad[0]} is invalid; HiLo windows must be >= 1 "
                        "(1 means plain global attention)")
    return tuple(sorted(set(values)))


def check_windows_fit(windows: tuple[int, ...], resolution: tuple[int, int], per_stage_window: bool) -> None:
    """A window larger than a HiLo stage's feature map cannot be partitioned: refuse it up front."""
    height, width = resolution
    stages = HILO_STAGES if per_stage_window else HILO_STAGES[:1]
    for stage in stages:
        side = min(height, width) // STAGE_STRIDES[stage]
        too_big = [w for w in windows if w > side]
        if too_big:
            raise UserError(f"--window {too_big[0]} does not fit stage {stage + 1}, whose feature map is "
                            f"{height // STAGE_STRIDES[stage]}x{width // STAGE_STRIDES[stage]} at {height}x{width}")


def build_space(variant: str, num_heads: tuple[int, ...], *, alphas: str = DEFAULT_ALPHAS,
                windows: str = DEFAULT_WINDOWS, per_stage_window: bool = False,
                resolution: tuple[int, int] = (224, 224)) -> SearchSpace:
    """Parse and validate the flags into a space; raises UserError on a bad or empty space."""
    window_values = parse_windows(windows)
    check_windows_fit(window_values, resolution, per_stage_window)
    return SearchSpace(variant=variant, num_heads=tuple(num_heads), alphas=parse_alphas(alphas),
                       windows=window_values, per_stage_window=per_stage_window, resolution=tuple(resolution))
