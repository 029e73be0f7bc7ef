"""ImageFolder sources: `train/<class>/<image>` and `val/<class>/<image>` (or `validation/`).

Class index = position of the folder name in the sorted list of `train/` folders, as in
torchvision; files are listed in torchvision's order, so indices agree with
`torchvision.datasets.ImageFolder`. Only image extensions are read, hidden files are ignored.
Files are only listed here; images are decoded later, by the `FileSplit`, in the workers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from litv2cli.data.source_info import SourceInfo
from litv2cli.data.split_names import SPLIT_NAMES, VAL_NAMES
from litv2cli.data.splits import FileSplit
from litv2cli.errors import UserError

# torchvision's list, so a folder reads the same here as with torchvision's ImageFolder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def has_class_folders(root: Path) -> bool:
    """Whether `root` has a split folder (train, val, ...) holding at least one folder."""
    return any((root / name).is_dir() and any(p.is_dir() for p in (root / name).iterdir()) for name in SPLIT_NAMES)


def _folder_classes(root: Path, train_split: str) -> list[str]:
    train_dir = root / train_split
    if not train_dir.is_dir():
        raise UserError(f"--data {root}: no '{train_split}' folder (expected {train_split}/<class>/<image> "
                        "and val/<class>/<image>)")
    classes = sorted(entry.name for entry in os.scandir(train_dir) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise UserError(f"--data {root}: '{train_split}/' holds no class folders (expected {train_split}/<class>/<image>)")
    return classes


def _folder_val_name(root: Path, requested: str) -> str:
    for name in dict.fromkeys((requested, *VAL_NAMES)):
        if (root / name).is_dir():
            return name
    raise UserError(f"--data {root}: no validation folder (looked for {', '.join(dict.fromkeys((requested, *VAL_NAMES)))})")


def _is_image_file(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def list_folder_split(split_dir: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """(paths relative to `split_dir`, class indices), in torchvision ImageFolder's order."""
    extra = sorted(entry.name for entry in os.scandir(split_dir)
                   if entry.is_dir() and not entry.name.startswith(".") and entry.name not in classes)
    if extra:
        raise UserError(f"{split_dir}: class folder(s) {', '.join(extra[:5])} are not in the training split")
    paths: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            continue
        for dirpath, _, filenames in sorted(os.walk(folder, followlinks=True)):
            relative = os.path.relpath(dirpath, split_dir)
            for filename in sorted(filenames):
                if _is_image_file(filename):
                    paths.append(os.path.join(relative, filename))
                    labels.append(index)
    return paths, labels


def _refuse_empty_classes(source: str, split_dir: Path, classes: list[str], labels: list[int]) -> None:
    """Every class of the training split needs an image file: a class with none could never be
    learnt, and dropping its folder would renumber every class after it."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    if not counts.any():
        raise UserError(f"--data {source}: the '{split_dir.name}' split holds no images "
                        f"({', '.join(IMAGE_EXTENSIONS)})")
    if (counts == 0).any():
        empty = [classes[i] for i in np.flatnonzero(counts == 0)]
        raise UserError(f"{split_dir}: class folder(s) {', '.join(empty[:5])} hold no images")


def describe_folder(source: str, train_split: str, val_split: str) -> SourceInfo:
    """`describe_source` for an ImageFolder: every training class has images, validation is not empty."""
    root = Path(source).expanduser()
    classes = _folder_classes(root, train_split)
    _, labels = list_folder_split(root / train_split, classes)
    _refuse_empty_classes(source, root / train_split, classes, labels)
    val_name = _folder_val_name(root, val_split)
    val_paths, _ = list_folder_split(root / val_name, classes)
    if not val_paths:
        raise UserError(f"--data {source}: the '{val_name}' split holds no images")
    return SourceInfo("imagefolder", len(classes), tuple(classes), len(labels), len(val_paths), None, None,
                      val_name, train_split)


def open_folder(source: str, split: str) -> FileSplit:
    """Split `split` of an ImageFolder ("val" also finds `validation/`, ...), its files listed."""
    root = Path(source).expanduser()
    classes = _folder_classes(root, "train")
    name = split if (root / split).is_dir() else _folder_val_name(root, split) if split in VAL_NAMES else None
    if name is None:
        raise UserError(f"--data {source}: no '{split}' folder")
    paths, labels = list_folder_split(root / name, classes)
    if name == "train":
        _refuse_empty_classes(source, root / name, classes, labels)
    if not paths:
        raise UserError(f"--data {source}: the '{name}' split holds no images")
    return FileSplit(str(root / name), paths, labels, classes)
