"""The paper's values and the naming rules every layer shares, each stated once.

Torch-free, so the CLI can check a flag against them before anything heavy loads.
"""

from __future__ import annotations

# HiLo's split (Section 4.2: alpha 0.9 of the heads to Lo-Fi) and window sizes per stage
# (stages 1-2 hold no attention; s = 2 in stage 3, and stage 4's 7x7 map at 224 is one window).
PAPER_ALPHA = 0.9
PAPER_WINDOW: tuple[int, int, int, int] = (0, 0, 2, 1)

# Every size LITv2 takes is a multiple of its total downsampling: 4 (patch embedding) x 2 x 2 x 2.
RESOLUTION_MULTIPLE = 32


def variant_key(name: str) -> str:
    """'S', 'litv2_s' or 'litv2-s' -> 's' (whether that variant exists is for the caller to say)."""
    return name.lower().removeprefix("litv2-").removeprefix("litv2_")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle and augmentation draws: distinct per (seed, epoch)."""
    return seed * 1_000_003 + epoch


def read_resolution(value: object) -> tuple[int, int]:
    """224, '224', '800x1280' or [800, 1280] -> (height, width); ValueError for anything else.
    Whether the model takes that size is `fits_model`'s question."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a resolution")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    parts = str(value).lower().replace(" ", "").split("x")
    if len(parts) not in (1, 2):
        raise ValueError(f"{value!r} is not a resolution")
    sizes = [int(part) for part in parts]  # ValueError for a non-number
    return (sizes[0], sizes[-1])


def fits_model(height: int, width: int) -> bool:
    """Whether LITv2 takes a height x width input: positive multiples of RESOLUTION_MULTIPLE."""
    return height > 0 and width > 0 and not height % RESOLUTION_MULTIPLE and not width % RESOLUTION_MULTIPLE
