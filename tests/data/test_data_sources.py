"""`describe_source` / `open_split`: what each source kind is, and one clear UserError per mistake."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.helpers.data_fixtures import make_arrow_dataset, make_image_folder
from litv2cli.data import describe_source, open_split
from litv2cli.data.arrow import parquet_split_of
from litv2cli.data.sources import source_kind
from litv2cli.errors import UserError


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("src") / "folder", num_classes=3, per_class=4, size=16)


@pytest.fixture(scope="module")
def saved(folder, tmp_path_factory) -> Path:
    return make_arrow_dataset(folder, tmp_path_factory.mktemp("src") / "saved")


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _error(source: str, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        describe_source(source, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


# What is found -------------------------------------------------------------------------------

def test_imagefolder_is_described_with_sorted_classes_and_sizes(folder):
    info = describe_source(str(folder))
    assert (info.kind, info.class_names, info.train_size, info.val_size) == \
        ("imagefolder", ("class_0", "class_1", "class_2"), 12, 6)
    assert info.val_split == "val" and info.image_column is None


def test_imagefolder_ignores_non_image_and_hidden_files(folder, tmp_path):
    root = _copy(folder, tmp_path)
    (root / "train" / "class_1" / "notes.txt").write_text("labels were checked by hand")
    (root / "train" / "class_1" / "._000.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    (root / "train" / ".cache").mkdir()
    assert describe_source(str(root)).train_size == 12
    assert len(open_split(str(root), "train")) == 12


def test_validation_folder_is_used_when_val_is_absent(folder, tmp_path):
    root = _copy(folder, tmp_path)
    (root / "val").rename(root / "validation")
    info = describe_source(str(root))
    assert info.val_split == "validation" and info.val_size == 6
    assert len(open_split(str(root), "val")) == 6


def test_saved_dataset_is_described_from_its_features(saved):
    info = describe_source(str(saved))
    assert (info.kind, info.image_column, info.label_column, info.class_names, info.train_size, info.val_size) == \
        ("arrow", "image", "label", ("class_0", "class_1", "class_2"), 12, 6)


def test_parquet_directory_and_glob_are_split_by_file_name(folder, tmp_path):
    out = make_arrow_dataset(folder, tmp_path / "pq", fmt="parquet", shards=2)
    for source in (str(out), str(out / "*.parquet")):
        info = describe_source(source)
        assert (info.kind, info.train_size, info.val_size, info.num_classes) == ("parquet", 12, 6, 3)


@pytest.mark.parametrize(("relative", "split"), [
    ("train-00000-of-00004.parquet", "train"),
    ("data/validation-00000-of-00001.parquet", "validation"),
    ("val/part-0.parquet", "val"),
    ("default/train/0000.parquet", "train"),
    ("test.parquet", "test"),
    ("trainval/part-0.parquet", None),
    ("shard-0.parquet", None),
])
def test_parquet_split_naming_convention(relative, split):
    root = Path("/data/set")
    assert parquet_split_of(root / relative, root) == split


def test_string_labels_are_indexed_by_their_sorted_names(tmp_path):
    import datasets

    with (tmp_path / "a.jpg").open("wb") as handle:
        from PIL import Image

        Image.new("RGB", (8, 8), "red").save(handle, "JPEG")
    image = {"bytes": (tmp_path / "a.jpg").read_bytes(), "path": None}
    features = datasets.Features({"image": datasets.Image(), "target": datasets.Value("string")})
    table = lambda names: datasets.Dataset.from_dict({"image": [image] * len(names), "target": names}, features=features)
    datasets.DatasetDict({"train": table(["zebra", "ant", "zebra"]), "validation": table(["ant"])}).save_to_disk(
        str(tmp_path / "strings"))
    info = describe_source(str(tmp_path / "strings"))
    assert (info.label_column, info.class_names, info.val_split) == ("target", ("ant", "zebra"), "validation")
    assert [item[1] for item in open_split(str(tmp_path / "strings"), "train")] == [1, 0, 1]


# Mistakes, each one line naming what is wrong -----------------------------------------------------

def test_missing_path_is_a_user_error_naming_it(tmp_path):
    assert f"{tmp_path}/nope: no such file or directory" in _error(str(tmp_path / "nope"))


def test_file_that_is_not_parquet_is_a_user_error(tmp_path):
    (tmp_path / "labels.csv").write_text("a,b\n")
    assert "not Parquet" in _error(str(tmp_path / "labels.csv"))


def test_train_folder_without_class_folders_is_a_user_error(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    assert "'train/' holds no class folders" in _error(str(tmp_path))


def test_directory_with_no_train_folder_is_a_user_error(tmp_path):
    assert "no 'train' folder" in _error(str(tmp_path))


def test_empty_class_folder_is_a_user_error_naming_the_class(folder, tmp_path):
    root = _copy(folder, tmp_path)
    for image in (root / "train" / "class_2").iterdir():
        image.unlink()
    assert "class_2 hold no images" in _error(str(root))


def test_empty_validation_split_is_a_user_error(folder, tmp_path):
    root = _copy(folder, tmp_path)
    for image in (root / "val").rglob("*.jpg"):
        image.unlink()
    assert "the 'val' split holds no images" in _error(str(root))


def test_missing_validation_folder_is_a_user_error(folder, tmp_path):
    root = _copy(folder, tmp_path)
    shutil.rmtree(root / "val")
    assert "no validation folder" in _error(str(root))


def test_validation_class_unknown_to_train_is_a_user_error(folder, tmp_path):
    root = _copy(folder, tmp_path)
    (root / "val" / "class_9").mkdir()
    assert "class_9" in _error(str(root))


def test_empty_saved_or_parquet_split_is_a_user_error(tmp_path, saved):
    import datasets

    loaded = datasets.load_from_disk(str(saved))
    datasets.DatasetDict({"train": loaded["train"], "val": loaded["val"].select([])}).save_to_disk(str(tmp_path / "e"))
    assert "the 'val' split is empty" in _error(str(tmp_path / "e"))
    (tmp_path / "p").mkdir()
    loaded["train"].to_parquet(str(tmp_path / "p" / "train-0.parquet"))
    loaded["val"].select([]).to_parquet(str(tmp_path / "p" / "val-0.parquet"))
    assert "the 'val' split is empty" in _error(str(tmp_path / "p"))


def test_unknown_label_column_is_a_user_error_listing_the_columns(saved):
    message = _error(str(saved), label_column="class_id")
    assert "--label-column 'class_id' is not a column" in message and "image, label" in message


def test_unknown_image_column_is_a_user_error(saved):
    assert "--image-column 'pixels' is not a column" in _error(str(saved), image_column="pixels")


def test_label_column_that_is_not_class_labels_is_a_user_error(saved):
    assert "'image' is Image" in _error(str(saved), label_column="image")


def test_unlabelled_rows_are_a_user_error(tmp_path, saved):
    import datasets

    loaded = datasets.load_from_disk(str(saved))
    val = loaded["val"].cast_column("label", datasets.Value("int64")).map(lambda row: {"label": -1})
    datasets.DatasetDict({"train": loaded["train"], "val": val}).save_to_disk(str(tmp_path / "u"))
    assert "split 'val' has 6 rows whose 'label' is not a class index" in _error(str(tmp_path / "u"))


def test_parquet_file_without_a_split_name_is_a_user_error(folder, tmp_path):
    out = make_arrow_dataset(folder, tmp_path / "pq", fmt="parquet")
    (out / "train-00000-of-00001.parquet").rename(out / "shard-0.parquet")
    assert "cannot tell the split of" in _error(str(out))


def test_streaming_a_local_folder_is_a_user_error(folder):
    assert "drop --streaming" in _error(str(folder), streaming=True)


def test_streaming_a_save_to_disk_dataset_is_refused_when_described(saved):
    # Before any process starts, as `open_split` would refuse it inside every worker.
    assert "an arrow source is read directly, drop --streaming" in _error(str(saved), streaming=True)


def test_unknown_split_is_a_user_error(folder, saved):
    for source in (str(folder), str(saved), "demo"):
        with pytest.raises(UserError, match="no 'holdout'"):
            open_split(source, "holdout")


def test_owner_name_that_is_not_local_is_taken_as_a_hub_id():
    assert source_kind("ILSVRC/imagenet-1k") == "hub"


def test_uncached_hub_dataset_is_a_quick_user_error(tmp_path, monkeypatch):
    # Offline, as the test session is (conftest), with empty caches: nothing to read, nothing to fetch.
    import datasets
    import huggingface_hub.constants

    for module in (datasets.config, huggingface_hub.constants):
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.monotonic()
    message = _error("ILSVRC/imagenet-1k")
    assert time.monotonic() - start < 15
    assert message.startswith("--data ILSVRC/imagenet-1k: not a local path, and the hub dataset is not in the "
                              "datasets cache and could not be fetched")
    with pytest.raises(UserError, match="could not be reached for streaming"):
        describe_source("ILSVRC/imagenet-1k", streaming=True)


def test_image_column_that_holds_no_images_is_a_user_error(tmp_path, saved):
    import datasets

    loaded = datasets.load_from_disk(str(saved))
    with_caption = {name: split.add_column("caption", ["a photo"] * len(split)) for name, split in loaded.items()}
    datasets.DatasetDict(with_caption).save_to_disk(str(tmp_path / "c"))
    assert "rows of column 'caption' in split 'train' decode as an image" in \
        _error(str(tmp_path / "c"), image_column="caption")
    assert "column 'label' is ClassLabel" in _error(str(tmp_path / "c"), image_column="label")
