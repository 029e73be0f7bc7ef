"""Options shared by several commands, declared once as `Annotated` aliases, and their parsers.

Parsers raise `UserError` so every command reports bad input the same way: one line, exit 2.
"""

from __future__ import annotations

from typing import Annotated

import typer

from litv2cli.defaults import PAPER_WINDOW, fits_model, read_resolution, variant_key
from litv2cli.errors import UserError

Variant = Annotated[str, typer.Option("--variant", "-v", help="Model variant: t, s, m or b.")]
Resolution = Annotated[
    str, typer.Option("--res", help="Input resolution: 224, or HxW such as 800x1280 (multiples of 32).")
]
Alpha = Annotated[
    float | None, typer.Option("--alpha", help="HiLo split ratio alpha in [0, 1] (fraction of Lo-Fi heads).")
]
Window = Annotated[
    str | None,
    typer.Option(
        "--window",
        help="HiLo window size s: one value for the windowed HiLo stages (the last stage stays "
        "global, as in the paper), or four comma-separated per-stage values such as 0,0,2,1.",
    ),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]


def parse_resolution(text: str | int) -> tuple[int, int]:
    """'224' -> (224, 224); '800x1280' -> (800, 1280). Both sides must be multiples of 32."""
    try:
        height, width = read_resolution(str(text))
    except ValueError:
        raise UserError(f"--res {text!r} is not a resolution; use 224 or HxW such as 800x1280") from None
    if not fits_model(height, width):
        raise UserError(f"--res {text}: height and width must be positive multiples of 32 (LITv2 downsamples 32x)")
    return height, width


def parse_window(text: str | None, default: tuple[int, ...] = PAPER_WINDOW) -> tuple[int, int, int, int]:
    """'2' -> (0, 0, 2, 1); '0,0,4,2' -> (0, 0, 4, 2). Stages 1-2 hold no attention, so they stay 0."""
    if text is None:
        return tuple(default)  # type: ignore[return-value]
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise UserError(f"--window {text!r} is not a window size; use 2 or four values such as 0,0,2,1") from None
    if len(values) == 1:
        values = [0, 0, values[0], 1]
        hilo = values[2:3]
    elif len(values) == 4:
        hilo = values[2:]
    else:
        raise UserError(f"--window {text!r}: give one value or four per-stage values, not {len(values)}")
    if any(v < 1 for v in hilo):
        raise UserError(f"--window {text}: HiLo window sizes must be >= 1 (1 means plain global attention)")
    if any(v < 0 for v in values):
        raise UserError(f"--window {text}: window sizes cannot be negative")
    return tuple(values)  # type: ignore[return-value]


def check_alpha(alpha: float | None) -> float | None:
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise UserError(f"--alpha {alpha}: alpha is the fraction of Lo-Fi heads and must lie in [0, 1]")
    return alpha


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`, else one line that lists them."""
    if value not in choices:
        raise UserError(f"{option} {value!r}: choose one of {', '.join(choices)}")
    return value


def check_variant(variant: str) -> str:
    # The names without the models (and torch): a wrong one is refused at once.
    from litv2cli.recipe import VARIANT_NAMES

    name = variant_key(variant)
    if name not in VARIANT_NAMES:
        raise UserError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANT_NAMES)}")
    return name
