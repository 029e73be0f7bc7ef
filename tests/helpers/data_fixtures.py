"""Tiny generated datasets for tests: a JPEG ImageFolder and the same images as Arrow or Parquet;
and the tiny training recipe the end-to-end tests run on them.

Plain functions so any test module can import them (`from data_fixtures import ...`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CORRUPT_KINDS = ("truncated", "empty", "text")


def synthetic_image(class_index: int, size: int | tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A smooth RGB image whose dominant channel and stripe direction encode the class, so a small
    model learns it in a few steps; `size` is an int or (width, height)."""
    width, height = (size, size) if isinstance(size, int) else size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), dtype=np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    for channel in range(3):
        image[..., channel] = 70 + 40 * np.sin(x / (7 + 5 * channel) + y / 11 + phase[channel])
    image[..., class_index % 3] += 110
    stripes = ((y if class_index % 2 else x) // 4) % 2 == 0
    image[stripes] *= 0.5
    image += rng.normal(0, 6, size=image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def write_corrupt_file(path: Path, kind: str, valid_jpeg: bytes) -> None:
    """A file with an image name that no decoder can read fully."""
    if kind == "truncated":
        path.write_bytes(valid_jpeg[: len(valid_jpeg) // 3])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not an image, only named like one\n")
    else:
        raise ValueError(f"corrupt kind {kind!r}: use one of {CORRUPT_KINDS}")


def make_image_folder(root: Path, num_classes: int = 3, per_class: int = 8, size: int | tuple[int, int] = 40,
                      corrupt: int = 0, seed: int = 0, val_per_class: int | None = None) -> Path:
    """root/train/class_<c>/NNN.jpg (`per_class` each) and root/val/class_<c>/NNN.jpg
    (`val_per_class` each, default a quarter of `per_class`, at least 2).

    `corrupt` unreadable files are added to train/class_0, named corrupt_<i>.jpg and cycling
    through a truncated JPEG, a zero-byte file and a text file; they sort after the good images.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    val_count = val_per_class if val_per_class is not None else max(2, per_class // 4)
    for split, count in (("train", per_class), ("val", val_count)):
        for c in range(num_classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                synthetic_image(c, size, rng).save(folder / f"{i:03d}.jpg", quality=90)
    first = root / "train" / "class_0"
    if corrupt:
        valid = sorted(first.glob("*.jpg"))[0].read_bytes()
        for i in range(corrupt):
            write_corrupt_file(first / f"corrupt_{i}.jpg", CORRUPT_KINDS[i % len(CORRUPT_KINDS)], valid)
    return root


def make_arrow_dataset(image_folder_root: Path, out_dir: Path, fmt: str = "save_to_disk", shards: int = 1) -> Path:
    """The images and labels of an ImageFolder (same order, same classes, corrupt files included as
    their raw bytes) as a `datasets` DatasetDict with `train` and `val` splits, either written with
    `save_to_disk` or as Parquet files `<split>-<k>-of-<n>.parquet` (`shards` files per split)."""
    import datasets

    if fmt not in ("save_to_disk", "parquet"):
        raise ValueError(f"fmt {fmt!r}: use 'save_to_disk' or 'parquet'")
    root = Path(image_folder_root)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    splits = {}
    for split in ("train", "val"):
        rows: dict[str, list] = {"image": [], "label": []}
        for index, name in enumerate(classes):
            folder = root / split / name
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
            for path in files:
                rows["image"].append({"bytes": path.read_bytes(), "path": f"{split}/{name}/{path.name}"})
                rows["label"].append(index)
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    dataset = datasets.DatasetDict(splits)
    out_dir = Path(out_dir)
    datasets.disable_progress_bars()
    if fmt == "save_to_disk":
        dataset.save_to_disk(str(out_dir))
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, table in dataset.items():
        for k in range(shards):
            table.shard(shards, k, contiguous=True).to_parquet(str(out_dir / f"{split}-{k:05d}-of-{shards:05d}.parquet"))
    return out_dir


def tiny_recipe_text(**overrides) -> str:
    """LITv2-T at 32 x 32 for 2 epochs with no augmentation, so equality tests compare
    optimisation, not random crops; `overrides` replace or add recipe keys."""
    recipe = dict(variant="t", res=32, epochs=2, warmup_epochs=1, mixup=0, cutmix=0, auto_augment=None, reprob=0,
                  color_jitter=0, reference_batch=8, drop_path=0.1)
    return yaml.safe_dump({**recipe, **overrides}, sort_keys=False)
