"""Opening `--data`: the demo, an ImageFolder, a saved `datasets` table, Parquet files or a hub id.

`describe_source` checks a source before any worker process starts (missing path, empty split,
unknown column, unlabelled rows, a hub dataset that is neither cached nor reachable) and says
what is wrong in one line; `open_split` builds the dataset, in each process.

What `--data` may be, tried in this order:

- `demo`: the built-in digits dataset (`litv2cli.data.demo`).
- A directory written by `datasets`' `save_to_disk` (it holds `dataset_dict.json`): a
  DatasetDict with a `train` split and a `val`/`validation`/`valid`/`test` split.
- An ImageFolder root: `train/<class>/<image>` and `val/<class>/<image>` (or `validation/`).
  Class index = position of the folder name in the sorted list of `train/` folders, as in
  torchvision; files are listed in torchvision's order, so indices agree with
  `torchvision.datasets.ImageFolder`. Only image extensions are read, hidden files are ignored.
- Parquet: one `.parquet` file, a glob (`"data/*.parquet"`), or a directory with Parquet files
  up to three levels down. A file's split is the first of its name or its parent folders that
  is a split name or starts with one followed by `-`, `_` or `.`: `train-00000-of-00004.parquet`,
  `data/validation-00000.parquet`, `val/part-0.parquet`, `default/train/0000.parquet`. The files
  are converted once into the `datasets` cache (memory-mapped Arrow, as much disk again as the
  Parquet files); `streaming=True` reads them in place instead.
- Anything else of the form `owner/name` that is not a local path is a hub dataset id, read
  through the `datasets` cache (`load_dataset`), downloaded and prepared by the launching
  process on first use. Offline (`HF_DATASETS_OFFLINE=1`) an uncached id is a UserError.
  Remote code is never run: `datasets` 4 removed dataset scripts and `trust_remote_code`, and
  nothing here passes it.

Columns of a table: the image column is the one with an `Image` feature, else one named
`image`, `img`, `jpg`, `png` or `pixel_values`; the label column is the one with a `ClassLabel`
feature, else `label`, `labels`, `target`, `class` or `cls`. `image_column`/`label_column`
name them explicitly. Class names come from the `ClassLabel`; integer labels are named "0".."max";
string labels are indexed by their sorted unique values in the train split.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from litv2cli.data.splits import FileSplit, ImageSplit, TableSplit
from litv2cli.errors import UserError

# torchvision's list, so a folder reads the same here as with torchvision's ImageFolder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
VAL_NAMES = ("val", "validation", "valid", "test")
SPLIT_NAMES = ("train", *VAL_NAMES)
IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "pixel_values")
LABEL_NAMES = ("label", "labels", "target", "class", "cls")
PARQUET_SEARCH_DEPTH = 3


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


# Which kind of source ----------------------------------------------------------------------------

def source_kind(source: str) -> str:
    """"demo", "arrow", "imagefolder", "parquet" or "hub"; a UserError when it is none of them."""
    if source == "demo":
        return "demo"
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".parquet":
            return "parquet"
        raise UserError(f"--data {source}: a file that is not Parquet; give a directory, Parquet files, a hub id or 'demo'")
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "arrow"
        if _has_class_folders(path) or not _parquet_files(path):
            return "imagefolder"
        return "parquet"
    if glob.has_magic(source):
        if not _parquet_files(Path(source)):
            raise UserError(f"--data {source}: the pattern matches no Parquet files")
        return "parquet"
    if _looks_like_hub_id(source):
        return "hub"
    raise UserError(f"--data {source}: no such file or directory")


def _looks_like_hub_id(source: str) -> bool:
    owner, _, name = source.partition("/")
    return bool(owner and name) and "/" not in name and not source.startswith((".", "~")) \
        and not name.endswith((".parquet", ".arrow", ".json"))


def _has_class_folders(root: Path) -> bool:
    return any((root / name).is_dir() and any(p.is_dir() for p in (root / name).iterdir()) for name in SPLIT_NAMES)


# Describing --------------------------------------------------------------------------------------

def describe_source(source: str, *, image_column: str | None = None, label_column: str | None = None,
                    train_split: str = "train", val_split: str = "val", streaming: bool = False) -> SourceInfo:
    """Check `source` and summarise it; every problem the user can fix is one UserError line.

    Cheap for local sources (lists files or reads table metadata and the label column). For a
    hub id this is where the dataset is downloaded and prepared into the `datasets` cache, once,
    before any training process starts; with `streaming=True` only its metadata and first row
    are read.
    """
    kind = source_kind(source)
    _refuse_streaming(source, kind, streaming)
    if kind == "demo":
        from litv2cli.data.demo import CLASS_NAMES, demo_split

        return SourceInfo("demo", len(CLASS_NAMES), CLASS_NAMES, len(demo_split("train")), len(demo_split("val")),
                          None, None, "val")
    if kind == "imagefolder":
        return _describe_folder(source, train_split, val_split)
    if streaming:
        from litv2cli.data.streaming import describe_stream

        return describe_stream(source, kind, image_column=image_column, label_column=label_column,
                               train_split=train_split, val_split=val_split)
    tables = load_tables(source, kind)
    train_name = _train_name(source, tables, train_split)
    val_name = val_split_name(source, tables, val_split)
    image_col, label_col = detect_columns(source, tables[train_name], image_column, label_column)
    labels = TableLabels.from_train(source, tables[train_name], label_col)
    sizes = []
    for name in (train_name, val_name):
        if len(tables[name]) == 0:
            raise UserError(f"--data {source}: the '{name}' split is empty")
        labels.of(source, tables[name], name)  # raises on unlabelled or out-of-range rows
        sizes.append(len(tables[name]))
    check_image_column(source, tables[train_name], image_col, train_name)
    return SourceInfo(kind, len(labels.class_names), labels.class_names, sizes[0], sizes[1], image_col, label_col,
                      val_name, train_name)


def _refuse_streaming(source: str, kind: str, streaming: bool) -> None:
    if streaming and kind not in ("hub", "parquet"):
        raise UserError(f"--data {source}: --streaming reads hub and Parquet datasets in place; "
                        f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} source is read directly, drop --streaming")


# Opening -----------------------------------------------------------------------------------------

def open_split(source: str, split: str, *, image_column: str | None = None, label_column: str | None = None,
               streaming: bool = False) -> Any:
    """Split `split` of `source`: an `ImageSplit` (map-style), or with `streaming=True` a
    `StreamingSplit` (an IterableDataset, see `litv2cli.data.streaming`).

    `split` may be "val" for a source whose validation split is called "validation" (or the
    reverse). Images are decoded in `__getitem__`, i.e. in the DataLoader workers.
    """
    kind = source_kind(source)
    _refuse_streaming(source, kind, streaming)
    if streaming:
        from litv2cli.data.streaming import open_stream

        return open_stream(source, kind, split, image_column=image_column, label_column=label_column)
    if kind == "demo":
        from litv2cli.data.demo import demo_split

        if split != "train" and split not in VAL_NAMES:
            raise UserError(f"--data demo: no '{split}' split (the demo has 'train' and 'val')")
        return demo_split("train" if split == "train" else "val")
    if kind == "imagefolder":
        return _open_folder(source, split)
    return _open_table(source, kind, split, image_column, label_column)


def _open_table(source: str, kind: str, split: str, image_column: str | None, label_column: str | None) -> ImageSplit:
    tables = load_tables(source, kind)
    name = split_name(source, tables, split)
    train_name = _train_name(source, tables, "train") if "train" in tables else name
    image_col, label_col = detect_columns(source, tables[name], image_column, label_column)
    labels = TableLabels.from_train(source, tables[train_name], label_col)
    return TableSplit(tables[name], image_col, labels.of(source, tables[name], name), labels.class_names,
                      name=f"{source} [{name}]")


# ImageFolder -------------------------------------------------------------------------------------

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


def _describe_folder(source: str, train_split: str, val_split: str) -> SourceInfo:
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


def _open_folder(source: str, split: str) -> FileSplit:
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


# Tables: save_to_disk, Parquet, hub ----------------------------------------------------------------

def _parquet_files(path: Path) -> list[Path]:
    if glob.has_magic(str(path)):
        return sorted(Path(p) for p in glob.glob(str(path), recursive=True) if p.endswith(".parquet"))
    if path.is_file():
        return [path]
    found: list[Path] = []
    for depth in range(1, PARQUET_SEARCH_DEPTH + 1):
        found += path.glob("/".join(["*"] * (depth - 1) + ["*.parquet"]))
    return sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(path).parts))


def parquet_split_of(path: Path, root: Path) -> str | None:
    """The split named by the file name or, failing that, its nearest parent folder under `root`."""
    parts = path.relative_to(root).parts if path != root and root in path.parents else (path.name,)
    for part in reversed(parts):
        lowered = part.lower()
        for name in SPLIT_NAMES:
            if lowered == name or lowered.startswith((name + "-", name + "_", name + ".")):
                return name
    return None


def parquet_data_files(source: str) -> dict[str, list[str]]:
    """{split: [files]} following the naming convention in this module's docstring."""
    path = Path(source).expanduser()
    files = _parquet_files(path)
    if glob.has_magic(source):
        prefix = source.split("*")[0].split("?")[0].split("[")[0]  # the folder the pattern starts in
        root = Path(prefix).expanduser() if prefix.endswith("/") else Path(prefix).expanduser().parent
    else:
        root = path if path.is_dir() else path.parent
    by_split: dict[str, list[str]] = {}
    for file in files:
        split = parquet_split_of(file, root)
        if split is None:
            raise UserError(f"--data {source}: cannot tell the split of {file}; name files train-*.parquet and "
                            "val-*.parquet, or put them in train/ and val/ folders")
        by_split.setdefault(split, []).append(str(file))
    return by_split


def short_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:200]}" if text else exc.__class__.__name__


@lru_cache(maxsize=4)
def load_tables(source: str, kind: str) -> dict[str, Any]:
    """{split name: datasets.Dataset} of an Arrow, Parquet or hub source (memory-mapped)."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if kind == "arrow":
            _refuse_empty_saved_splits(source)
            loaded = datasets.load_from_disk(str(Path(source).expanduser()))
            return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        if kind == "parquet":
            data_files = parquet_data_files(source)
            _refuse_empty_parquet_splits(source, data_files)
            return dict(datasets.load_dataset("parquet", data_files=data_files))
        return dict(datasets.load_dataset(source))
    except UserError:
        raise
    except Exception as exc:  # datasets and the hub client raise many types for unreadable or unreachable data
        if kind == "hub":
            raise UserError(f"--data {source}: not a local path, and the hub dataset is not in the datasets cache "
                            f"and could not be fetched ({short_reason(exc)})") from None
        raise UserError(f"--data {source}: cannot read the {kind} dataset ({short_reason(exc)})") from None


def _refuse_empty_saved_splits(source: str) -> None:
    """`load_from_disk` fails with an IndexError on a saved split with no rows; say what it is."""
    import json

    root = Path(source).expanduser()
    listing = root / "dataset_dict.json"
    names = json.loads(listing.read_text())["splits"] if listing.is_file() else []
    for name in names:
        state = root / name / "state.json"
        if state.is_file() and not json.loads(state.read_text()).get("_data_files"):
            raise UserError(f"--data {source}: the '{name}' split is empty")


def parquet_rows(files: list[str]) -> int:
    """Rows of Parquet files, from their footers: no row is read."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(file).metadata.num_rows for file in files)


def _refuse_empty_parquet_splits(source: str, data_files: dict[str, list[str]]) -> None:
    """`datasets` rejects a Parquet split with no rows with a message about "instructions"; the
    row counts are in each file's footer, so check them first."""
    for name, files in data_files.items():
        if parquet_rows(files) == 0:
            raise UserError(f"--data {source}: the '{name}' split is empty ({', '.join(files[:3])})")


def _train_name(source: str, tables: dict[str, Any], requested: str) -> str:
    if requested not in tables:
        raise UserError(f"--data {source}: no '{requested}' split (found: {', '.join(tables) or 'none'})")
    return requested


def split_name(source: str, tables: dict[str, Any], split: str) -> str:
    """`split` if present; for a validation name ("val", ...), else whichever of them is."""
    if split in tables:
        return split
    if split in VAL_NAMES:
        return val_split_name(source, tables, split)
    raise UserError(f"--data {source}: no '{split}' split (found: {', '.join(tables)})")


def val_split_name(source: str, tables: dict[str, Any], requested: str) -> str:
    """`requested` if present, else the first of val/validation/valid/test that is."""
    candidates = tuple(dict.fromkeys((requested, *VAL_NAMES)))
    for name in candidates:
        if name in tables:
            return name
    raise UserError(f"--data {source}: no validation split (found: {', '.join(tables)}; looked for {', '.join(candidates)})")


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
