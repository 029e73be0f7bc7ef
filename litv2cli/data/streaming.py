"""Streamed splits, for hub (or Parquet) datasets too large to keep on disk.

`open_split(source, split, streaming=True)` returns a `StreamingSplit`: a torch
`IterableDataset` over `datasets`' streaming reader that yields the same items as an
`ImageSplit` (`(transform(image), label)`, or `None` for an undecodable image or an unlabelled
row) and has the same `num_classes`, `class_names`, `set_transform` and `describe`.

A stream has no random access, so the trainer's index sampler does not apply. Instead:

    split = open_split("ILSVRC/imagenet-1k", "train", streaming=True)
    split.set_transform(train_transform)
    rank_split = split.for_rank(rank, world_size, seed=seed, epoch=epoch, skip=items_done_by_this_rank,
                                batch_size=batch_size)
    loader = DataLoader(rank_split, batch_size=..., num_workers=..., collate_fn=collate_skip_corrupt)

`for_rank` shuffles with a buffer (seeded, reshuffled per epoch) and gives this rank its part
with `datasets.distributed.split_dataset_by_node` (whole files per rank when the number of files
divides by the world size, else every rank reads everything and keeps 1/world of the rows).
`skip` resumes mid-epoch: it is the number of items of this rank's stream already delivered, a
multiple of `batch_size`. The DataLoader takes batches from its W workers in turn, starting with
worker 0, and `datasets` gives each worker its own files, so worker w skips (without decoding)
the rows of the batches w, w + W, ... it had produced. The resumed epoch then delivers exactly
the items not yet seen, each once (while every worker still has rows); their order is also the uninterrupted order when `skip` is a
multiple of W x `batch_size` (always with `num_workers=0`), otherwise the first W batches come
from the workers in a different turn. Skipped rows are still read from storage.

Streams share the sources' rules (columns, split names, Parquet naming) by importing them from
the modules of each kind; `litv2cli.data.sources` calls this module, never the reverse.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from itertools import islice
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from litv2cli.data.arrow import parquet_data_files, parquet_rows
from litv2cli.data.columns import detect_columns
from litv2cli.data.hub import short_reason
from litv2cli.data.source_info import SourceInfo
from litv2cli.data.split_names import split_name, val_split_name
from litv2cli.data.splits import DECODE_ERRORS, Transform, decode_image, encoded_image
from litv2cli.errors import UserError


@lru_cache(maxsize=4)
def load_streams(source: str, kind: str) -> dict[str, Any]:
    """{split name: datasets.IterableDataset} of a Parquet or hub source; nothing is downloaded."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if kind == "parquet":
            return dict(datasets.load_dataset("parquet", data_files=parquet_data_files(source), streaming=True))
        return dict(datasets.load_dataset(source, streaming=True))
    except UserError:
        raise
    except Exception as exc:  # the hub client raises many types for unreachable or missing datasets
        where = "the hub dataset could not be reached" if kind == "hub" else f"cannot read the {kind} files"
        raise UserError(f"--data {source}: {where} for streaming ({short_reason(exc)})") from None


def _class_names(source: str, stream: Any, label_column: str) -> tuple[str, ...]:
    from datasets import ClassLabel

    feature = (stream.features or {}).get(label_column)
    if not isinstance(feature, ClassLabel):
        raise UserError(f"--data {source}: streaming needs a ClassLabel label column to know the classes without "
                        f"reading the whole split; {label_column!r} is {feature}")
    return tuple(feature.names)


def _columns(source: str, stream: Any, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    if stream.features is None:
        raise UserError(f"--data {source}: the stream does not declare its features; "
                        "streaming needs an Image and a ClassLabel column")
    return detect_columns(source, stream.features, image_column, label_column)


def describe_stream(source: str, kind: str, *, image_column: str | None, label_column: str | None,
                    train_split: str, val_split: str) -> SourceInfo:
    """Like `describe_source`, from the stream's metadata and first row (sizes 0 when unrecorded)."""
    streams = load_streams(source, kind)
    if train_split not in streams:
        raise UserError(f"--data {source}: no '{train_split}' split (found: {', '.join(streams) or 'none'})")
    val_name = val_split_name(source, streams, val_split)
    image_col, label_col = _columns(source, streams[train_split], image_column, label_column)
    names = _class_names(source, streams[train_split], label_col)
    sizes = []
    for name in (train_split, val_name):
        stream = streams[name]
        if next(iter(stream.select_columns([label_col]).take(1)), None) is None:
            raise UserError(f"--data {source}: the '{name}' split is empty")
        recorded = stream.info.splits.get(name) if stream.info.splits else None
        if recorded is not None:
            sizes.append(int(recorded.num_examples))
        elif kind == "parquet":  # the row count is in each file's footer: no need to read the rows
            sizes.append(parquet_rows(parquet_data_files(source).get(name, [])))
        else:
            sizes.append(0)
    return SourceInfo(kind, len(names), names, sizes[0], sizes[1], image_col, label_col, val_name, train_split)


def open_stream(source: str, kind: str, split: str, *, image_column: str | None,
                label_column: str | None) -> StreamingSplit:
    streams = load_streams(source, kind)
    name = split_name(source, streams, split)
    train = streams.get("train", streams[name])
    image_col, label_col = _columns(source, streams[name], image_column, label_column)
    return StreamingSplit(streams[name], image_col, label_col, _class_names(source, train, label_col),
                          name=f"{source} [{name}]")


class StreamingSplit(IterableDataset):
    """A streamed split whose images are decoded in the DataLoader workers (see the module docstring)."""

    def __init__(self, stream: Any, image_column: str, label_column: str, class_names: tuple[str, ...],
                 name: str) -> None:
        from datasets import Image as ImageFeature

        stream = stream.select_columns([image_column, label_column])
        if isinstance((stream.features or {}).get(image_column), ImageFeature):
            stream = stream.cast_column(image_column, ImageFeature(decode=False))
        self.stream = stream
        self.image_column, self.label_column = image_column, label_column
        self.class_names = class_names
        self.name = name
        self.transform: Transform | None = None
        self.skip, self.batch_size = 0, 1

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def set_transform(self, transform: Transform | None) -> None:
        self.transform = transform

    def describe(self, index: int) -> str:
        return f"{self.name}, item {self.skip + index} of this stream"

    def for_rank(self, rank: int, world_size: int, *, seed: int | None = None, epoch: int = 0, skip: int = 0,
                 batch_size: int = 1, buffer_size: int = 10_000) -> StreamingSplit:
        """This rank's part of the stream, shuffled when `seed` is given, resuming after `skip` items.

        `skip` counts the items this rank's DataLoader had delivered (a multiple of `batch_size`,
        the DataLoader's batch size); see the module docstring for how workers share it.
        """
        from datasets.distributed import split_dataset_by_node

        if skip % batch_size:
            raise ValueError(f"skip={skip} must be a multiple of batch_size={batch_size}")
        stream = self.stream
        if seed is not None:
            stream = stream.shuffle(seed=seed, buffer_size=buffer_size)
        stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        stream.set_epoch(epoch)
        part = replace_stream(self, stream)
        part.skip, part.batch_size = skip, batch_size
        return part

    def _rows_to_skip(self) -> int:
        """Rows of this worker's stream that went into the `skip` items already delivered."""
        worker = get_worker_info()
        if worker is None or not self.skip:
            return self.skip
        batches = self.skip // self.batch_size
        return self.batch_size * len(range(worker.id, batches, worker.num_workers))

    def __iter__(self) -> Iterator[tuple[Any, int] | None]:
        for row in islice(self.stream, self._rows_to_skip(), None):
            label = row[self.label_column]
            if label is None or not 0 <= int(label) < len(self.class_names):
                yield None  # unlabelled rows (-1) are counted with the unreadable images
                continue
            try:
                image = decode_image(encoded_image(row[self.image_column]))
            except DECODE_ERRORS:
                yield None
                continue
            yield (self.transform(image) if self.transform is not None else image), int(label)


def replace_stream(split: StreamingSplit, stream: Any) -> StreamingSplit:
    """A copy of `split` reading `stream` (same columns, classes and transform)."""
    copy = StreamingSplit.__new__(StreamingSplit)
    copy.__dict__.update(split.__dict__)
    copy.stream = stream
    return copy
