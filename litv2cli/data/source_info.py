"""`SourceInfo`, the summary of a `--data` source that `describe_source` returns.

In a module of its own because each kind of source (ImageFolder, streamed tables, ...) fills
one in, and none of them should have to import the module that dispatches between them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceInfo:
    """What `describe_source` found. Sizes are 0 when a streamed split does not record them."""

    kind: str  # "demo" | "imagefolder" | "arrow" | "parquet" | "hub"
    num_classes: int
    class_names: tuple[str, ...]
    train_size: int
    val_size: int
    image_column: str | None  # None for demo and ImageFolder sources
    label_column: str | None
    val_split: str  # the split actually used for validation ("val", "validation", ...)
    train_split: str = "train"
