"""The built-in digits dataset: sizes, classes, stratified split, determinism."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from litv2cli.data import build_eval_transform, describe_source, open_split


def _fingerprint(split) -> str:
    digest = hashlib.sha256()
    for i in range(len(split)):
        image, label = split[i]
        digest.update(np.asarray(image).tobytes())
        digest.update(bytes([label]))
    return digest.hexdigest()


def test_demo_is_ten_digit_classes_split_80_20_by_class():
    info = describe_source("demo")
    assert info.kind == "demo"
    assert info.class_names == tuple("0123456789") and info.num_classes == 10
    assert (info.train_size, info.val_size) == (1437, 360)
    train, val = open_split("demo", "train"), open_split("demo", "val")
    assert (len(train), len(val)) == (1437, 360)
    train_counts = np.bincount(train.labels, minlength=10)
    val_counts = np.bincount(val.labels, minlength=10)
    assert np.all(np.abs(val_counts - 0.2 * (train_counts + val_counts)) <= 1)  # stratified


def test_demo_images_are_32px_rgb_digits_not_blank():
    image, label = open_split("demo", "train")[0]
    assert image.mode == "RGB" and image.size == (32, 32)
    pixels = np.asarray(image)
    assert pixels.max() > 200 and pixels.min() < 30  # ink on a dark background
    assert 0 <= label < 10


def test_demo_validation_name_is_accepted_for_val():
    assert _fingerprint(open_split("demo", "validation")) == _fingerprint(open_split("demo", "val"))


def test_demo_split_is_rebuilt_identically():
    from litv2cli.data import demo

    before = _fingerprint(open_split("demo", "val")), _fingerprint(open_split("demo", "train"))
    demo._pixels_and_labels.cache_clear()
    demo._split_indices.cache_clear()
    assert (_fingerprint(open_split("demo", "val")), _fingerprint(open_split("demo", "train"))) == before


def test_demo_train_and_val_share_no_image():
    train = {np.asarray(open_split("demo", "train")[i][0]).tobytes() for i in range(1437)}
    val = [np.asarray(image).tobytes() for image, _ in (open_split("demo", "val")[i] for i in range(360))]
    assert sum(v in train for v in val) <= 2  # the digits scans hold a couple of exact duplicates at most


def test_demo_goes_through_the_eval_transform_to_a_tensor():
    split = open_split("demo", "val")
    split.set_transform(build_eval_transform((32, 32), crop_pct=None, interpolation="bicubic"))
    image, label = split[3]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 32, 32)
    assert split.describe(3) == "demo val image 3"
