"""Faulty image files: every kind is decoded to RGB or skipped and counted, the class count never
changes, and a short training run reports the skipped images once per epoch.

The unreadable kinds already covered by test_data_corrupt.py (truncated JPEG, zero-byte, text
named .jpg) appear here only as part of the end-to-end run.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.helpers.data_fixtures import make_image_folder, tiny_recipe_text, write_corrupt_file
from litv2cli.cli.main import main
from litv2cli.data import describe_source, open_split
from litv2cli.train.spec import read_metrics


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, scanlines: bytes) -> bytes:
    """A PNG written chunk by chunk, for headers and depths PIL will not write (16-bit RGB, bombs)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanlines))
            + chunk(b"IEND", b""))


def rgb16_png(size: int = 40) -> bytes:
    """16 bits per channel: red full, green half, blue zero."""
    row = b"\x00" + struct.pack(">HHH", 65535, 32768, 0) * size
    return png_bytes(size, size, 16, 2, row * size)


def bomb_png() -> bytes:
    """A 40000x40000 header (1.6G pixels, over PIL's decompression-bomb limit) with 100 bytes of data."""
    return png_bytes(40000, 40000, 8, 2, b"\x00" * 100)


def palette_png() -> bytes:
    image = Image.new("P", (40, 40))
    image.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    return encode(image, "PNG", transparency=0)


# name -> (bytes, the RGB pixel at (0, 0) after decoding)
DECODABLE = {
    "cmyk.jpg": (lambda: encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG", quality=95), (255, 0, 0)),
    "grey.png": (lambda: encode(Image.new("L", (40, 40), 90), "PNG"), (90, 90, 90)),
    "grey_alpha.png": (lambda: encode(Image.new("LA", (40, 40), (90, 0)), "PNG"), (90, 90, 90)),
    "grey16.png": (lambda: encode(Image.fromarray(np.full((40, 40), 32896, dtype=np.uint16)), "PNG"),
                   (128, 128, 128)),  # rescaled from 16 bits, not clipped to 255
    "rgb16.png": (rgb16_png, (255, 128, 0)),
    "rgba.png": (lambda: encode(Image.new("RGBA", (40, 40), (10, 20, 30, 0)), "PNG"), (10, 20, 30)),
    "palette_transparent.png": (palette_png, (255, 0, 0)),
    "bilevel.png": (lambda: encode(Image.new("1", (40, 40), 1), "PNG"), (255, 255, 255)),
    "float.tif": (lambda: encode(Image.fromarray(np.full((40, 40), 7.5, dtype=np.float32)), "TIFF"), (255, 255, 255)),
    "jpeg_named.png": (lambda: encode(Image.new("RGB", (40, 40), (0, 0, 250)), "JPEG", quality=100), (0, 0, 250)),
    "large.jpg": (lambda: encode(Image.new("RGB", (3000, 2000), (0, 200, 0)), "JPEG", quality=95), (0, 200, 0)),
}

UNREADABLE = {
    "bomb.png": bomb_png,
    "truncated.png": lambda: encode(Image.new("RGB", (40, 40), (1, 2, 3)), "PNG")[:60],
    "strip.png": lambda: encode(Image.new("L", (30000, 1), 9), "PNG"),  # 1x30000: 6 GB after the eval resize at 224
    "header_only.jpg": lambda: encode(Image.new("RGB", (40, 40)), "JPEG")[:20],
}


@pytest.fixture(scope="module")
def exotic_split(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("exotic") / "folder", num_classes=2, per_class=1, size=40)
    folder = root / "train" / "class_0"
    for name, (make, _) in DECODABLE.items():
        (folder / name).write_bytes(make())
    for name, make in UNREADABLE.items():
        (folder / name).write_bytes(make())
    split = open_split(str(root), "train")
    return {Path(split.describe(i)).name: split[i] for i in range(len(split))}


@pytest.mark.parametrize("name", sorted(DECODABLE))
def test_unusual_but_valid_images_decode_to_rgb(exotic_split, name):
    image, label = exotic_split[name]
    assert label == 0 and image.mode == "RGB"
    expected = DECODABLE[name][1]
    assert np.abs(np.asarray(image.getpixel((0, 0))) - expected).max() <= 2, image.getpixel((0, 0))


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_bombs_strips_and_broken_files_are_skipped_not_raised(exotic_split, name):
    assert exotic_split[name] is None


def test_a_class_whose_every_image_is_unreadable_keeps_its_place(tmp_path):
    root = make_image_folder(tmp_path / "folder", num_classes=3, per_class=2, size=32)
    broken = root / "train" / "class_1"
    valid = (broken / "000.jpg").read_bytes()
    for index, kind in enumerate(("truncated", "empty")):
        write_corrupt_file(broken / f"{index:03d}.jpg", kind, valid)
    info = describe_source(str(root))
    assert info.num_classes == 3 and info.class_names == ("class_0", "class_1", "class_2")
    split = open_split(str(root), "train")
    assert split.num_classes == 3
    assert [split[i] is None for i in range(len(split))] == [False, False, True, True, False, False]
    assert split.labels.tolist() == [0, 0, 1, 1, 2, 2]  # class_2 is still class 2


# End to end ---------------------------------------------------------------------------------------

RECIPE = tiny_recipe_text(warmup_epochs=0, batch_size=8, drop_path=0)
# Unreadable files of the training split; all of them land in some batch of an epoch (24 images, batch 8).
TRAIN_UNREADABLE = {"class_0": ["truncated", "empty", "text", "bomb", "strip"], "class_3": ["truncated"]}


def reset_accelerate_state() -> None:
    """Each in-process run builds its own Accelerator; accelerate keeps its state process-wide."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture()
def fresh_accelerate_state():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared cores: more intra-op threads than idle cores only slow tiny steps
    yield
    torch.set_num_threads(threads)
    reset_accelerate_state()


def faulty_folder(root: Path) -> Path:
    """3 classes of 5 good images, 3 decodable odd formats, 5 unreadable files in class_0, and a
    fourth class whose only image is unreadable; validation: 6 good and 2 unreadable images."""
    make_image_folder(root, num_classes=3, per_class=5, size=40, val_per_class=2)
    good = (root / "train" / "class_0" / "000.jpg").read_bytes()
    for name in ("cmyk.jpg", "grey16.png", "rgb16.png"):
        (root / "train" / "class_2" / name).write_bytes(DECODABLE[name][0]())
    (root / "train" / "class_3").mkdir()
    for folder, kinds in TRAIN_UNREADABLE.items():
        for index, kind in enumerate(kinds):
            path = root / "train" / folder / f"bad_{index}.{'png' if kind in ('bomb', 'strip') else 'jpg'}"
            if kind in ("bomb", "strip"):
                path.write_bytes(UNREADABLE[f"{kind}.png"]())
            else:
                write_corrupt_file(path, kind, good)
    (root / "val" / "class_3").mkdir()
    write_corrupt_file(root / "val" / "class_3" / "bad.jpg", "truncated", good)
    (root / "val" / "class_1" / "bomb.png").write_bytes(bomb_png())
    return root


def test_training_and_eval_count_unreadable_images_once_per_epoch_and_keep_every_class(
        tmp_path, capsys, fresh_accelerate_state):
    data = faulty_folder(tmp_path / "faulty")
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    run = tmp_path / "run"
    code = main(["pretrain", "--recipe", str(tmp_path / "tiny.yaml"), "--data", str(data), "--output", str(run),
                 "--workers", "1", "--no-progress", "--log-with", "none"])
    out = capsys.readouterr().out
    assert code == 0
    skipped = 5 + 1
    reports = [line for line in out.splitlines() if "unreadable training images" in line]
    assert reports == [f"epoch 1: skipped {skipped} unreadable training images",
                       f"epoch 2: skipped {skipped} unreadable training images"]
    evals = [r for r in read_metrics(run / "metrics.jsonl") if "top1" in r]
    assert [(r["skipped_train"], r["skipped_val"], r["val_images"]) for r in evals] == [(skipped, 2, 6)] * 2
    assert load_file(str(run / "model.safetensors"))["head.weight"].shape[0] == 4  # class_3 kept its place

    reset_accelerate_state()
    assert main(["eval", "--checkpoint", str(run), "--data", str(data), "--workers", "0"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "on 6 images" in line and "2 unreadable images skipped" in line
    reset_accelerate_state()
    assert main(["eval", "--checkpoint", str(run), "--data", str(data), "--workers", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["count"], result["skipped"]) == (6, 2)


def test_a_batch_of_only_unreadable_images_is_skipped_and_training_goes_on(tmp_path, fresh_accelerate_state):
    from litv2cli.train import loop as engine
    from litv2cli.recipe import Recipe
    from litv2cli.train.spec import RunSpec

    # 4 good and 8 unreadable images in 6 batches of 2: some batch holds only unreadable ones.
    root = make_image_folder(tmp_path / "folder", num_classes=2, per_class=2, size=64, corrupt=8)
    recipe = Recipe(variant="t", res=(64, 64), epochs=1, warmup_epochs=0, mixup=0, cutmix=0, auto_augment=None,
                    reprob=0, color_jitter=0, reference_batch=8, batch_size=2, num_classes=2)
    out = tmp_path / "run"
    out.mkdir()
    engine.train(RunSpec(recipe=recipe.model_dump(mode="json"), data=str(root), output=str(out), workers=0,
                         progress=False, log_every=1))
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "top1" in r]
    assert evals[-1]["skipped_train"] == 8
