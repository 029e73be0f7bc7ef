"""Unreadable images become None, are dropped and counted by the collate, and never crash a worker."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers.data_fixtures import make_arrow_dataset, make_image_folder
from litv2cli.data import build_train_transform, collate_skip_corrupt, open_split

TRAIN = build_train_transform((32, 32), auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4, re_prob=0.25,
                              hflip=0.5, interpolation="bicubic")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    # 2 classes x 5 good images, plus a truncated JPEG, a zero-byte file and a text file named .jpg
    root = make_image_folder(tmp_path_factory.mktemp("bad") / "folder", num_classes=2, per_class=5, size=40, corrupt=3)
    (root / "train" / "class_1" / "README.txt").write_text("not listed: not an image extension")
    return root


def test_each_kind_of_corrupt_file_is_none(folder):
    split = open_split(str(folder), "train")
    bad = {Path(split.describe(i)).name for i in range(len(split)) if split[i] is None}
    assert bad == {"corrupt_0.jpg", "corrupt_1.jpg", "corrupt_2.jpg"}
    assert (folder / "train" / "class_0" / "corrupt_1.jpg").stat().st_size == 0
    assert len(split) == 13


@pytest.mark.parametrize("kind", ["imagefolder", "arrow"])
def test_loader_with_two_workers_skips_and_counts_corrupt_images(folder, tmp_path, kind):
    source = str(folder) if kind == "imagefolder" else str(make_arrow_dataset(folder, tmp_path / "saved"))
    split = open_split(source, "train")
    split.set_transform(TRAIN)
    loader = DataLoader(split, batch_size=4, shuffle=True, num_workers=2, collate_fn=collate_skip_corrupt,
                        generator=torch.Generator().manual_seed(0))
    images_seen, skipped = 0, 0
    for images, labels, num_skipped in loader:
        assert images.shape == (len(labels), 3, 32, 32)
        images_seen += len(labels)
        skipped += num_skipped
    assert (images_seen, skipped) == (10, 3)


def test_corrupt_row_of_a_table_names_its_path(folder, tmp_path):
    split = open_split(str(make_arrow_dataset(folder, tmp_path / "saved")), "train")
    assert split[5] is None
    assert split.describe(5).endswith("[train] row 5 (corrupt_0.jpg)")


def test_collate_of_only_corrupt_items_is_empty_with_the_count():
    images, labels, skipped = collate_skip_corrupt([None, None])
    assert images.numel() == 0 and labels.numel() == 0 and skipped == 2


def test_collate_stacks_the_readable_items():
    batch = [(torch.ones(3, 4, 4), 1), None, (torch.zeros(3, 4, 4), 0)]
    images, labels, skipped = collate_skip_corrupt(batch)
    assert images.shape == (2, 3, 4, 4) and labels.tolist() == [1, 0] and skipped == 1


def test_a_file_deleted_after_listing_is_skipped_not_raised(folder, tmp_path):
    import shutil

    root = Path(shutil.copytree(folder, tmp_path / "copy"))
    split = open_split(str(root), "val")
    (root / "val" / "class_0" / "000.jpg").unlink()
    assert split[0] is None and split[1] is not None
