"""Which columns of a table hold the images and the labels, and what the classes are.

The image column is the one with an `Image` feature, else one named `image`, `img`, `jpg`,
`png` or `pixel_values`; the label column is the one with a `ClassLabel` feature, else `label`,
`labels`, `target`, `class` or `cls`. `image_column`/`label_column` name them explicitly. Class
names come from the `ClassLabel`; integer labels are named "0".."max"; string labels are indexed
by their sorted unique values in the train split.

Saved datasets, Parquet, hub tables and their streamed versions all go through these rules, so
they live apart from any one kind of source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from litv2cli.data.splits import TableSplit
from litv2cli.errors import UserError

IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "pixel_values")
LABEL_NAMES = ("label", "labels", "target", "class", "cls")


def detect_columns(source: str, features: Any, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    """(image column, label column) of a table or of its `features`, as named or detected."""
    from datasets import ClassLabel, Image as ImageFeature

    features = getattr(features, "features", features)
    columns = ", ".join(features) if features else "none"
    for given, flag in ((image_column, "--image-column"), (label_column, "--label-column")):
        if given is not None and given not in features:
            raise UserError(f"--data {source}: {flag} {given!r} is not a column (columns: {columns})")
    image = image_column or next((k for k, f in features.items() if isinstance(f, ImageFeature)), None) \
        or next((k for k in IMAGE_NAMES if k in features), None)
    label = label_column or next((k for k, f in features.items() if isinstance(f, ClassLabel)), None) \
        or next((k for k in LABEL_NAMES if k in features), None)
    if image is None:
        raise UserError(f"--data {source}: no image column found; name it with --image-column (columns: {columns})")
    if label is None:
        raise UserError(f"--data {source}: no label column found; name it with --label-column (columns: {columns})")
    return image, label


def check_image_column(source: str, table: Any, column: str, split: str, rows: int = 8) -> None:
    """The column holds images (an Image feature, encoded bytes or paths) and at least one of its
    first `rows` rows decodes; otherwise every item would be skipped as unreadable."""
    from datasets import Image as ImageFeature, Value

    feature = table.features[column]
    if not (isinstance(feature, ImageFeature) or isinstance(feature, Value) and feature.dtype in
            ("binary", "large_binary", "string", "large_string")):
        raise UserError(f"--data {source}: column {column!r} is {feature}, not images; "
                        "name the image column with --image-column")
    probe = TableSplit(table.select(range(min(rows, len(table)))), column, np.zeros(min(rows, len(table))), ("?",),
                       name=split)
    if all(probe[i] is None for i in range(len(probe))):
        raise UserError(f"--data {source}: none of the first {len(probe)} rows of column {column!r} in split "
                        f"'{split}' decode as an image; name the image column with --image-column")


@dataclass(frozen=True)
class TableLabels:
    """The classes of a table's label column and how to turn a split's labels into indices."""

    column: str
    class_names: tuple[str, ...]
    by_name: dict[str, int] | None  # string labels: value -> index; None for integer labels

    @classmethod
    def from_train(cls, source: str, train: Any, column: str) -> TableLabels:
        from datasets import ClassLabel, Value

        feature = train.features[column]
        if isinstance(feature, ClassLabel):
            return cls(column, tuple(feature.names), None)
        values = train.with_format("arrow")[column]
        if isinstance(feature, Value) and feature.dtype.startswith(("int", "uint")):
            high = values.to_numpy().max(initial=-1)
            if high < 0:
                raise UserError(f"--data {source}: label column {column!r} of the training split holds no labels")
            return cls(column, tuple(str(i) for i in range(int(high) + 1)), None)
        if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
            names = tuple(sorted({v for v in values.to_pylist() if v is not None}))
            return cls(column, names, {n: i for i, n in enumerate(names)})
        raise UserError(f"--data {source}: label column {column!r} is {feature}, not class labels; "
                        "name the right one with --label-column")

    def of(self, source: str, table: Any, split: str) -> np.ndarray:
        """The class index of every row of `table`; a UserError for a missing or unknown label."""
        values = table.with_format("arrow")[self.column]
        if self.by_name is not None:
            unknown = sorted({v for v in values.to_pylist() if v not in self.by_name}, key=str)
            if unknown:
                raise UserError(f"--data {source}: split '{split}' has labels not in the training split: "
                                f"{', '.join(map(str, unknown[:5]))}")
            return np.asarray([self.by_name[v] for v in values.to_pylist()], dtype=np.int64)
        if values.null_count:
            raise UserError(f"--data {source}: split '{split}' has {values.null_count} rows with no "
                            f"{self.column!r} value")
        labels = values.to_numpy().astype(np.int64, copy=False)
        bad = (labels < 0) | (labels >= len(self.class_names))
        if bad.any():
            raise UserError(f"--data {source}: split '{split}' has {int(bad.sum())} rows whose {self.column!r} is not "
                            f"a class index in 0..{len(self.class_names) - 1} (e.g. {int(labels[bad][0])}; "
                            "-1 marks unlabelled rows)")
        return labels
