"""The same images as an ImageFolder, a `save_to_disk` dataset and Parquet give the same items,
map-style and streamed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from tests.helpers.data_fixtures import make_arrow_dataset, make_image_folder
from litv2cli.data import build_eval_transform, collate_skip_corrupt, describe_source, open_split

EVAL = build_eval_transform((32, 32), crop_pct=0.875, interpolation="bicubic")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("same")
    folder = make_image_folder(base / "folder", num_classes=3, per_class=6, size=(48, 40), corrupt=3)
    return {
        "imagefolder": str(folder),
        "arrow": str(make_arrow_dataset(folder, base / "saved")),
        "parquet": str(make_arrow_dataset(folder, base / "parquet", fmt="parquet", shards=2)),
    }


def _items(split) -> list[tuple[torch.Tensor, int] | None]:
    split.set_transform(EVAL)
    return [split[i] for i in range(len(split))]


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return torch.equal(a[0], b[0]) and a[1] == b[1]


@pytest.mark.parametrize("split", ["train", "val"])
def test_folder_saved_and_parquet_give_identical_tensors_per_index(sources, split):
    reference = _items(open_split(sources["imagefolder"], split))
    assert len(reference) == (21 if split == "train" else 6)
    assert sum(item is None for item in reference) == (3 if split == "train" else 0)
    for kind in ("arrow", "parquet"):
        items = _items(open_split(sources[kind], split))
        assert len(items) == len(reference)
        assert all(_same(a, b) for a, b in zip(items, reference)), kind


def test_all_kinds_report_the_same_classes_and_sizes(sources):
    infos = {kind: describe_source(source) for kind, source in sources.items()}
    assert {(i.class_names, i.train_size, i.val_size) for i in infos.values()} == \
        {(("class_0", "class_1", "class_2"), 21, 6)}
    assert [i.kind for i in infos.values()] == ["imagefolder", "arrow", "parquet"]


def test_folder_and_table_give_the_same_batches_through_a_loader(sources):
    def batches(source):
        split = open_split(source, "train")
        split.set_transform(EVAL)
        loader = DataLoader(split, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5),
                            collate_fn=collate_skip_corrupt)
        return list(loader)

    reference = batches(sources["imagefolder"])
    for kind in ("arrow", "parquet"):
        for (images, labels, skipped), (ref_images, ref_labels, ref_skipped) in zip(batches(sources[kind]), reference):
            assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels) and skipped == ref_skipped


def test_imagefolder_indices_match_torchvision(sources):
    ours = open_split(sources["imagefolder"], "train")
    theirs = ImageFolder(str(Path(sources["imagefolder"]) / "train"))
    assert list(ours.class_names) == theirs.classes
    assert [(ours.describe(i), int(ours.labels[i])) for i in range(len(ours))] == \
        [(path, label) for path, label in theirs.samples]


def test_streamed_parquet_yields_the_map_style_items(sources):
    for split in ("train", "val"):
        stream = open_split(sources["parquet"], split, streaming=True)
        stream.set_transform(EVAL)
        assert stream.class_names == ("class_0", "class_1", "class_2")
        streamed = list(stream)
        reference = _items(open_split(sources["imagefolder"], split))
        assert len(streamed) == len(reference)
        assert all(_same(a, b) for a, b in zip(streamed, reference))


def _stream_items(split, workers: int, batch_size: int = 2) -> list[tuple[int, float] | None]:
    out: list = []
    loader = DataLoader(split, batch_size=batch_size, num_workers=workers, collate_fn=lambda batch: batch)
    for batch in loader:
        out += [None if item is None else (item[1], round(float(item[0].sum()), 3)) for item in batch]
    return out


def test_streaming_ranks_partition_the_split(sources):
    stream = open_split(sources["parquet"], "train", streaming=True)
    stream.set_transform(EVAL)
    whole = _stream_items(stream.for_rank(0, 1), 0)
    parts = [_stream_items(stream.for_rank(rank, 2), 0) for rank in (0, 1)]
    assert len(parts[0]) + len(parts[1]) == len(whole) == 21
    key = lambda item: (item is None, item)
    assert sorted(parts[0] + parts[1], key=key) == sorted(whole, key=key)


@pytest.fixture
def no_shutdown_sleep(monkeypatch):
    """`datasets` sleeps 5 s after iterating a shuffled multi-file stream (an Arrow threading
    workaround); harmless once per epoch, but it would dominate these tiny streams."""
    import datasets

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_resume_skips_exactly_the_items_already_delivered(sources, workers, no_shutdown_sleep):
    stream = open_split(sources["parquet"], "train", streaming=True)
    stream.set_transform(EVAL)
    whole = _stream_items(stream.for_rank(0, 1, seed=3, epoch=2, buffer_size=8), workers)
    resumed = _stream_items(stream.for_rank(0, 1, seed=3, epoch=2, buffer_size=8, skip=8, batch_size=2), workers)
    assert resumed == whole[8:]
    assert sum(item is None for item in whole) == 3


def test_streaming_reshuffles_each_epoch_with_the_same_seed(sources, no_shutdown_sleep):
    stream = open_split(sources["parquet"], "train", streaming=True)
    stream.set_transform(EVAL)
    epochs = [_stream_items(stream.for_rank(0, 1, seed=3, epoch=e, buffer_size=8), 0) for e in (2, 2, 3)]
    assert epochs[0] == epochs[1] and epochs[0] != epochs[2]
