"""Map-style image datasets that never crash on a bad image.

Every source (the built-in demo, an ImageFolder, an Arrow/Parquet/hub table) becomes an
`ImageSplit` whose item `i` is `(transform(image), label)`, or `None` when the image cannot be
read or decoded. Decoding happens inside DataLoader workers, and the collate function drops the
`None`s and counts them, so a corrupt JPEG costs one sample, not a run. Per-item state is kept in
flat numpy arrays, not lists of Python objects: for an ImageNet split (1.28M items) a list of
`Path`s costs hundreds of MB that every forked worker slowly copies as reference counts touch
its pages.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

# What PIL and the OS raise for truncated, zero-byte, non-image, vanished or over-sized files.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, TypeError, struct.error, Image.DecompressionBombError)

Transform = Callable[[Image.Image], Any]

# Longest side over shortest side beyond which an image is refused as unreadable. The eval
# transform resizes the short side to about the input size, so a 1x30000 strip would become a
# 256x7.7M image (6 GB) at 224; no photograph is that elongated.
MAX_ASPECT_RATIO = 100


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any PIL mode; 16-bit and float greyscale are rescaled to 8 bits, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
        if image.mode == "F":
            scale = 255.0 / (float(array.max()) or 1.0)
        else:
            scale = 255.0 / (65535.0 if float(array.max()) > 255 else 255.0)
        image = Image.fromarray(np.clip(array * scale, 0, 255).astype(np.uint8), mode="L")
    elif image.mode in ("P", "PA", "LA"):
        # Palette/alpha images go through RGBA so a transparent palette entry is handled by PIL
        # instead of warning on every item.
        image = image.convert("RGBA")
    return image.convert("RGB")


def decode_image(data: str | bytes) -> Image.Image:
    """Decode a file path or encoded bytes fully, here and now.

    PIL opens lazily; loading explicitly makes a truncated file fail inside this call, where
    the caller turns it into `None`, instead of later inside a transform. Images larger than
    PIL's decompression-bomb limit (about 179M pixels) and strips more elongated than
    `MAX_ASPECT_RATIO` raise here too, before any pixel is decoded. Warnings (corrupt
    EXIF, large images) are silenced so that a bad file does not print once per epoch per worker.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else open(data, "rb")
        with handle, Image.open(handle) as image:
            if max(image.size) > MAX_ASPECT_RATIO * max(min(image.size), 1):
                raise ValueError(f"{image.size[0]}x{image.size[1]} image is more elongated than "
                                 f"{MAX_ASPECT_RATIO}:1")
            image.load()
            return to_rgb(image)


class ImageSplit(Dataset):
    """One split of a source. Subclasses say how to read image `i` and where it came from."""

    def __init__(self, labels: np.ndarray, class_names: Sequence[str]) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = tuple(class_names)
        self.transform: Transform | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def set_transform(self, transform: Transform | None) -> None:
        """Set the transform applied to each decoded PIL image (in the DataLoader workers)."""
        self.transform = transform

    def read_image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """Where item `index` comes from (a path or a row), for messages about it."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        try:
            image = self.read_image(index)
        except DECODE_ERRORS:
            return None
        return (self.transform(image) if self.transform is not None else image), int(self.labels[index])


class InMemorySplit(ImageSplit):
    """Small decoded images held as one uint8 array (the built-in demo)."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, class_names: Sequence[str], name: str) -> None:
        super().__init__(labels, class_names)
        self.pixels = pixels  # (N, H, W, 3) uint8
        self.name = name

    def read_image(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index], mode="RGB")

    def describe(self, index: int) -> str:
        return f"{self.name} image {index}"


class FileSplit(ImageSplit):
    """Image files under `root` (an ImageFolder split), paths stored as one bytes array."""

    def __init__(self, root: str, relative_paths: Sequence[str], labels: Sequence[int],
                 class_names: Sequence[str]) -> None:
        super().__init__(np.asarray(labels, dtype=np.int64), class_names)
        self.root = str(root)
        self.relative_paths = np.asarray([p.encode("utf-8", "surrogateescape") for p in relative_paths], dtype=bytes)

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.relative_paths[index].decode("utf-8", "surrogateescape"))

    def read_image(self, index: int) -> Image.Image:
        return decode_image(self.path(index))

    def describe(self, index: int) -> str:
        return self.path(index)


class TableSplit(ImageSplit):
    """One split of a `datasets` table; the image column is read as bytes and decoded here.

    The column is cast to `Image(decode=False)`, so `datasets` hands over the encoded bytes (or
    a path) and PIL decodes them in `read_image`: a corrupt row becomes `None` instead of an
    exception raised inside `datasets`' formatter. Only the image column is selected, so a
    row access formats one cell.
    """

    def __init__(self, table: Any, image_column: str, labels: np.ndarray, class_names: Sequence[str],
                 name: str) -> None:
        from datasets import Image as ImageFeature

        super().__init__(labels, class_names)
        table = table.select_columns([image_column])
        if isinstance(table.features[image_column], ImageFeature):
            table = table.cast_column(image_column, ImageFeature(decode=False))
        self.table = table
        self.image_column = image_column
        self.name = name

    def read_image(self, index: int) -> Image.Image:
        return decode_image(encoded_image(self.table[index][self.image_column]))

    def describe(self, index: int) -> str:
        cell = self.table[index][self.image_column]
        path = cell.get("path") if isinstance(cell, dict) else cell if isinstance(cell, str) else None
        return f"{self.name} row {index}" + (f" ({path})" if path else "")


def encoded_image(cell: Any) -> str | bytes:
    """The bytes or path held by an image cell: `{"bytes", "path"}`, raw bytes, or a path string."""
    if isinstance(cell, dict):
        if cell.get("bytes") is not None:
            return cell["bytes"]
        if cell.get("path"):
            return cell["path"]
    elif isinstance(cell, (bytes, str)):
        return cell
    raise ValueError("empty image cell")
