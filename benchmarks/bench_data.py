"""Data pipeline throughput: images/s per DataLoader worker, ours against timm's own loader.

Both sides read the same JPEG files (an ImageFolder generated at ImageNet size, 500x375) and do
the same work per image: decode to RGB, the paper's training transform at 224 built by timm
(RandomResizedCrop bicubic, flip, RandAugment rand-m9-mstd0.5-inc1, colour jitter 0.4 which
RandAugment switches off, normalise, random erasing 0.25 in pixel mode), then batch with the
default collate. timm: `timm.data.create_dataset` + `create_loader(use_prefetcher=False)` (the
prefetcher would move normalisation and erasing out of the workers, onto a GPU), with the same
0-bit Posterize repair as ours (`keep_zero_bit_posterize`; without it timm's workers crash under
Pillow 13). Ours:
`open_split` + `build_train_transform` + `collate_skip_corrupt`, from the ImageFolder and from
the same JPEG bytes saved with `datasets` (Arrow), and the ImageFolder wrapped in the trainer's
per-item seeding (`SeededItems`).

Protocol: same batch size, shuffle, drop_last and persistent workers on every side, and the same
random draws: the main process's torch RNG is reseeded before every epoch (same shuffle order,
same worker base seed) and our workers are seeded as timm's `worker_seeding="all"` does (numpy
too, which RandAugment's op choice uses), so timm and our ImageFolder and Arrow loaders apply
the same crops and ops to the same images; the script checks that their first batches agree
(to 1e-5, the float rounding of the fused normalisation). The per-item seeding row cannot share
those draws (it reseeds per item by design), so it differs by sampling noise as well. One warm-up
epoch per loader, then `--reps` timed epochs per loader, interleaved (the order rotates each
round) so that load from other processes hits all sides alike; the median epoch time is reported
as images/s per worker = images / seconds / workers.

    python benchmarks/bench_data.py                       # 256 images, workers 1 and 2, 5 reps
    python benchmarks/bench_data.py --images 512 --workers 1 2 4 --reps 7 --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

RESOLUTION = (224, 224)
RECIPE = dict(auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4, re_prob=0.25, hflip=0.5,
              interpolation="bicubic", scale=(0.08, 1.0))


def natural_image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A photo-like image: smooth colour fields, a few hard-edged shapes and sensor noise, so the
    JPEG size and decode cost are in ImageNet's range rather than those of flat or pure-noise images."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), dtype=np.float32)
    for channel in range(3):
        for _ in range(4):
            fx, fy, phase = rng.uniform(0.002, 0.05), rng.uniform(0.002, 0.05), rng.uniform(0, 6.3)
            image[..., channel] += rng.uniform(15, 45) * np.sin(fx * x + fy * y + phase)
    image += rng.uniform(60, 160, size=3)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(15, 90)
        inside = (x - cx) ** 2 + (y - cy) ** 2 < r**2
        image[inside] = image[inside] * 0.4 + rng.uniform(0, 255, size=3) * 0.6
    image += rng.normal(0, 7, size=image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def make_jpeg_folder(root: Path, images: int, classes: int = 8, size: tuple[int, int] = (500, 375),
                     seed: int = 0) -> Path:
    """root/train/<class>/*.JPEG and a small root/val/, written once and reused."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", images), ("val", classes)):
        for index in range(count):
            folder = root / split / f"n{index % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{split}_{index:05d}.JPEG"
            if not path.exists():
                natural_image(rng, size).save(path, quality=90)
    return root


def make_arrow_copy(folder: Path, out: Path) -> Path:
    """The same JPEG bytes as a `datasets` DatasetDict saved to disk."""
    import datasets

    if (out / "dataset_dict.json").is_file():
        return out
    datasets.disable_progress_bars()
    classes = sorted(p.name for p in (folder / "train").iterdir())
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    splits = {}
    for split in ("train", "val"):
        rows: dict[str, list] = {"image": [], "label": []}
        for index, name in enumerate(classes):
            for path in sorted((folder / split / name).iterdir()):
                rows["image"].append({"bytes": path.read_bytes(), "path": path.name})
                rows["label"].append(index)
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(out))
    return out


def timm_loader(folder: Path, workers: int, batch_size: int) -> DataLoader:
    from timm.data import create_dataset, create_loader

    from litv2cli.data.transforms import keep_zero_bit_posterize

    dataset = create_dataset("", root=str(folder / "train"), split="train", is_training=True)
    loader = create_loader(
        dataset, input_size=(3, *RESOLUTION), batch_size=batch_size, is_training=True, use_prefetcher=False,
        re_prob=RECIPE["re_prob"], re_mode="pixel", re_count=1, scale=RECIPE["scale"], hflip=RECIPE["hflip"],
        color_jitter=RECIPE["color_jitter"], auto_augment=RECIPE["auto_augment"],
        interpolation=RECIPE["interpolation"], num_workers=workers, persistent_workers=True, device=torch.device("cpu"),
    )
    # With Pillow 13, timm's RandAugment raises on a 0-bit Posterize about once per 700 images;
    # give timm's side the same repair as ours (workers start at the first epoch, after this).
    keep_zero_bit_posterize(loader.dataset.transform)
    return loader


def seed_worker_like_timm(worker_id: int) -> None:
    """What timm's loader does in each worker with worker_seeding="all": numpy from the worker seed."""
    np.random.seed(torch.utils.data.get_worker_info().seed % (2**32 - 1))


def our_loader(source: str, workers: int, batch_size: int, *, seeded: bool = False) -> DataLoader:
    from litv2cli.data import build_train_transform, collate_skip_corrupt, open_split

    split = open_split(source, "train")
    split.set_transform(build_train_transform(RESOLUTION, **RECIPE))
    dataset = split
    if seeded:
        from litv2cli.data.seeding import SeededItems

        dataset = SeededItems(split, seed=0)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      collate_fn=collate_skip_corrupt, persistent_workers=workers > 0,
                      worker_init_fn=seed_worker_like_timm)


def time_epoch(loader: DataLoader, seed: int) -> tuple[int, float]:
    """(images delivered, seconds) for one pass; the main process only counts."""
    torch.manual_seed(seed)  # shuffle order and worker base seed
    start = time.perf_counter()
    images = 0
    for batch in loader:
        assert batch[0].shape[1:] == (3, *RESOLUTION)
        images += batch[0].shape[0]
    return images, time.perf_counter() - start


def measure(loaders: dict[str, Callable[[], DataLoader]], reps: int) -> dict[str, dict[str, float]]:
    from litv2cli.measure.protocol import interleaved

    built = {name: make() for name, make in loaders.items()}
    for loader in built.values():  # warm-up: worker start, page cache, lazy imports
        time_epoch(loader, seed=0)
    # Every loader's epoch r (counted from 1) is seeded r, whatever its place in the rotation.
    epochs = interleaved({name: lambda loader=loader, seeds=itertools.count(1): time_epoch(loader, seed=next(seeds))
                          for name, loader in built.items()}, reps)
    del built
    results = {}
    for name, runs in epochs.items():
        times = [seconds for _, seconds in runs]
        results[name] = {"images": runs[-1][0], "median_s": statistics.median(times), "min_s": min(times),
                         "max_s": max(times)}
    return results


def first_batches_agree(folder: Path, arrow: Path, batch_size: int) -> float:
    """Max |difference| between timm's first two batches and ours (ImageFolder, Arrow), one worker
    each, same seeds: the check that both sides did the same work. Raises if the files differ."""
    from timm.data import create_dataset

    timm_files = [(Path(p).name, t) for p, t in create_dataset("", root=str(folder / "train"), split="train").reader.samples]
    ours = our_loader(str(folder), 1, batch_size).dataset
    assert timm_files == [(Path(ours.describe(i)).name, int(ours.labels[i])) for i in range(len(ours))], "file order"
    worst = 0.0
    reference = None
    for loader in (timm_loader(folder, 1, batch_size), our_loader(str(folder), 1, batch_size),
                   our_loader(str(arrow), 1, batch_size)):
        torch.manual_seed(0)
        batches = [batch[:2] for _, batch in zip(range(2), loader)]
        if reference is None:
            reference = batches
            continue
        for (images, labels), (ref_images, ref_labels) in zip(batches, reference):
            assert torch.equal(labels, ref_labels), "labels differ"
            worst = max(worst, float((images - ref_images).abs().max()))
    return worst


def to_tensor_step_ms(repeats: int = 500) -> dict[str, float]:
    """ms per 224x224 image, one thread: timm's MaybeToTensor + Normalize against ours."""
    from timm.data.transforms import MaybeToTensor
    from torchvision import transforms as T

    from litv2cli.data.transforms import ToNormalizedTensor

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    image = natural_image(np.random.default_rng(1), RESOLUTION[::-1])
    steps = {"timm MaybeToTensor + Normalize": T.Compose([MaybeToTensor(), T.Normalize(torch.tensor(mean),
                                                                                       torch.tensor(std))]),
             "ours ToNormalizedTensor": ToNormalizedTensor(mean, std)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(5):  # interleaved rounds, median
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(repeats // 5):
                step(image)
            times[name].append((time.perf_counter() - start) / (repeats // 5) * 1e3)
    torch.set_num_threads(threads)
    return {name: statistics.median(t) for name, t in times.items()}


def machine() -> dict[str, str]:
    import PIL
    import PIL.features
    import timm

    return {
        "cpu": platform.processor() or platform.machine(), "cores": str(os.cpu_count()),
        "python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
        "pillow": PIL.__version__, "libjpeg_turbo": str(PIL.features.check_feature("libjpeg_turbo")),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "load_average_at_start": " ".join(f"{v:.1f}" for v in os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="training images generated (500x375 JPEG)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5, help="timed epochs per loader")
    parser.add_argument("--data-dir", type=Path, default=None, help="where to write (and reuse) the images")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    data_dir = args.data_dir or Path(tempfile.gettempdir()) / f"litv2-bench-data-{args.images}"
    folder = make_jpeg_folder(data_dir / "folder", args.images)
    arrow = make_arrow_copy(folder, data_dir / "arrow")
    sizes = [p.stat().st_size for p in (folder / "train").rglob("*.JPEG")]
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    print(f"data: {len(sizes)} JPEGs 500x375, mean {np.mean(sizes) / 1024:.0f} KiB; train transform at "
          f"{RESOLUTION[0]}x{RESOLUTION[1]}: {RECIPE}; batch {args.batch_size}; "
          f"{args.reps} interleaved epochs per loader after one warm-up, median")
    results = {"machine": info, "images": len(sizes), "batch_size": args.batch_size, "reps": args.reps, "runs": {}}
    results["first_batches_max_abs_difference"] = first_batches_agree(folder, arrow, args.batch_size)
    print(f"same work: first two batches of timm and ours (ImageFolder, Arrow) differ by at most "
          f"{results['first_batches_max_abs_difference']:.2e}")
    if results["first_batches_max_abs_difference"] > 1e-5:
        print("warning: the loaders did not draw the same augmentations; ratios include sampling noise")
    results["to_tensor_step_ms"] = to_tensor_step_ms()
    print("tensor conversion + normalisation, ms per 224x224 image (1 thread, median of 5): " +
          ", ".join(f"{name} {ms:.3f}" for name, ms in results["to_tensor_step_ms"].items()))
    for workers in args.workers:
        loaders = {
            "timm": lambda: timm_loader(folder, workers, args.batch_size),
            "ours (ImageFolder)": lambda: our_loader(str(folder), workers, args.batch_size),
            "ours (Arrow)": lambda: our_loader(str(arrow), workers, args.batch_size),
            "ours (ImageFolder, trainer's per-item seeding)":
                lambda: our_loader(str(folder), workers, args.batch_size, seeded=True),
        }
        measured = measure(loaders, args.reps)
        base = measured["timm"]["images"] / measured["timm"]["median_s"]
        print(f"\nworkers {workers}:")
        print(f"  {'loader':48s} {'img/s/worker':>12s} {'ratio to timm':>14s} {'epoch s (min..max)':>20s}")
        for name, m in measured.items():
            rate = m["images"] / m["median_s"]
            m.update(images_per_s_per_worker=rate / workers, ratio_to_timm=rate / base)
            print(f"  {name:48s} {rate / workers:12.1f} {rate / base:14.3f} "
                  f"{m['median_s']:8.2f} ({m['min_s']:.2f}..{m['max_s']:.2f})")
        results["runs"][str(workers)] = measured
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
