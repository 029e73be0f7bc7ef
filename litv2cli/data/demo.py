"""The built-in demo dataset: scikit-learn's handwritten digits as small RGB images.

1,797 real 8x8 scans of the digits 0-9 ship inside scikit-learn, so the main job runs end to
end with nothing to download. They are upscaled to 32x32 RGB (LITv2's four stages need a
multiple of 32) and split 80/20, stratified by class, with a fixed seed, so every process and
every run sees the same validation images. Everything lives in memory; no files are written.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from litv2cli.data.splits import InMemorySplit

CLASS_NAMES = tuple(str(digit) for digit in range(10))
SIZE = 32
VAL_FRACTION = 0.2
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _pixels_and_labels() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 32, 32, 3) uint8 images and their (1797,) labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    scans = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    pixels = np.stack([
        np.asarray(Image.fromarray(scan, mode="L").resize((SIZE, SIZE), Image.Resampling.BICUBIC).convert("RGB"))
        for scan in scans
    ])
    return pixels, digits.target.astype(np.int64)


@lru_cache(maxsize=1)
def _split_indices() -> dict[str, np.ndarray]:
    from sklearn.model_selection import train_test_split

    _, labels = _pixels_and_labels()
    train, val = train_test_split(np.arange(len(labels)), test_size=VAL_FRACTION, random_state=SPLIT_SEED,
                                  stratify=labels)
    return {"train": np.sort(train), "val": np.sort(val)}


def demo_split(split: str) -> InMemorySplit:
    """The "train" (1,437 images) or "val" (360 images) split of the digits."""
    pixels, labels = _pixels_and_labels()
    indices = _split_indices()[split]
    return InMemorySplit(pixels[indices], labels[indices], CLASS_NAMES, name=f"demo {split}")
