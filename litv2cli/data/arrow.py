"""Table sources on disk: a directory written by `datasets`' `save_to_disk`, and Parquet files.

A saved directory holds `dataset_dict.json` (a DatasetDict with a `train` split and a
`val`/`validation`/`valid`/`test` split) or `state.json` (one Dataset, read as `train`).

Parquet: one `.parquet` file, a glob (`"data/*.parquet"`), or a directory with Parquet files
up to three levels down. A file's split is the first of its name or its parent folders that
is a split name or starts with one followed by `-`, `_` or `.`: `train-00000-of-00004.parquet`,
`data/validation-00000.parquet`, `val/part-0.parquet`, `default/train/0000.parquet`. The files
are converted once into the `datasets` cache (memory-mapped Arrow, as much disk again as the
Parquet files); `streaming=True` reads them in place instead (`litv2cli.data.streaming`).

Both read into `datasets.Dataset` tables; which columns hold images and labels is
`litv2cli.data.columns`' business.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from litv2cli.data.split_names import SPLIT_NAMES
from litv2cli.errors import UserError

PARQUET_SEARCH_DEPTH = 3


def read_saved(source: str) -> dict[str, Any]:
    """{split name: datasets.Dataset} of a `save_to_disk` directory (memory-mapped)."""
    import datasets

    _refuse_empty_saved_splits(source)
    loaded = datasets.load_from_disk(str(Path(source).expanduser()))
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def read_parquet(source: str) -> dict[str, Any]:
    """{split name: datasets.Dataset} of Parquet files, converted into the `datasets` cache once."""
    import datasets

    data_files = parquet_data_files(source)
    _refuse_empty_parquet_splits(source, data_files)
    return dict(datasets.load_dataset("parquet", data_files=data_files))


def parquet_files(path: Path) -> list[Path]:
    """The Parquet files of a file, a glob, or a directory (up to PARQUET_SEARCH_DEPTH deep, no hidden paths)."""
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
    files = parquet_files(path)
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
