"""Opening `--data`: which kind of source it is, and handing it to that kind's module.

`describe_source` checks a source before any worker process starts (missing path, empty split,
unknown column, unlabelled rows, a hub dataset that is neither cached nor reachable) and says
what is wrong in one line; `open_split` builds the dataset, in each process.

What `--data` may be, tried in this order:

- `demo`: the built-in digits dataset (`litv2cli.data.demo`).
- A directory written by `datasets`' `save_to_disk` (it holds `dataset_dict.json`): a
  DatasetDict with a `train` split and a `val`/`validation`/`valid`/`test` split
  (`litv2cli.data.arrow`).
- An ImageFolder root: `train/<class>/<image>` and `val/<class>/<image>` (or `validation/`)
  (`litv2cli.data.imagefolder`).
- Parquet: one `.parquet` file, a glob (`"data/*.parquet"`), or a directory with Parquet files
  up to three levels down, split by file and folder names (`litv2cli.data.arrow`).
- Anything else of the form `owner/name` that is not a local path is a hub dataset id, read
  through the `datasets` cache (`litv2cli.data.hub`).

Table columns and labels follow `litv2cli.data.columns`, split names `litv2cli.data.split_names`.
Those modules, and `litv2cli.data.streaming` (used for `streaming=True`), import nothing from
this one, so imports among the data modules only go one way.
"""

from __future__ import annotations

import glob
from functools import lru_cache
from pathlib import Path
from typing import Any

from litv2cli.data.arrow import parquet_files, read_parquet, read_saved
from litv2cli.data.columns import TableLabels, check_image_column, detect_columns
from litv2cli.data.hub import looks_like_hub_id, read_hub, short_reason
from litv2cli.data.imagefolder import describe_folder, has_class_folders, open_folder
from litv2cli.data.source_info import SourceInfo
from litv2cli.data.split_names import VAL_NAMES, split_name, train_split_name, val_split_name
from litv2cli.data.splits import ImageSplit, TableSplit
from litv2cli.errors import UserError


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
        if has_class_folders(path) or not parquet_files(path):
            return "imagefolder"
        return "parquet"
    if glob.has_magic(source):
        if not parquet_files(Path(source)):
            raise UserError(f"--data {source}: the pattern matches no Parquet files")
        return "parquet"
    if looks_like_hub_id(source):
        return "hub"
    raise UserError(f"--data {source}: no such file or directory")


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
        return describe_folder(source, train_split, val_split)
    if streaming:
        from litv2cli.data.streaming import describe_stream

        return describe_stream(source, kind, image_column=image_column, label_column=label_column,
                               train_split=train_split, val_split=val_split)
    tables = load_tables(source, kind)
    train_name = train_split_name(source, tables, train_split)
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
        return open_folder(source, split)
    return _open_table(source, kind, split, image_column, label_column)


def _open_table(source: str, kind: str, split: str, image_column: str | None, label_column: str | None) -> ImageSplit:
    tables = load_tables(source, kind)
    name = split_name(source, tables, split)
    train_name = train_split_name(source, tables, "train") if "train" in tables else name
    image_col, label_col = detect_columns(source, tables[name], image_column, label_column)
    labels = TableLabels.from_train(source, tables[train_name], label_col)
    return TableSplit(tables[name], image_col, labels.of(source, tables[name], name), labels.class_names,
                      name=f"{source} [{name}]")


# Tables: save_to_disk, Parquet, hub ----------------------------------------------------------------

@lru_cache(maxsize=4)
def load_tables(source: str, kind: str) -> dict[str, Any]:
    """{split name: datasets.Dataset} of an Arrow, Parquet or hub source (memory-mapped)."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if kind == "arrow":
            return read_saved(source)
        if kind == "parquet":
            return read_parquet(source)
        return read_hub(source)
    except UserError:
        raise
    except Exception as exc:  # datasets and the hub client raise many types for unreadable or unreachable data
        if kind == "hub":
            raise UserError(f"--data {source}: not a local path, and the hub dataset is not in the datasets cache "
                            f"and could not be fetched ({short_reason(exc)})") from None
        raise UserError(f"--data {source}: cannot read the {kind} dataset ({short_reason(exc)})") from None
