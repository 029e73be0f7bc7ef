"""Trainer overhead: `litv2 pretrain` against a bare PyTorch loop over the same model, data and batch.

Both sides do the same training math from the same recipe: timm's train transforms in
DataLoader workers, Mixup/CutMix with the soft-target loss, AdamW with our param groups,
grad-norm clipping and the per-step cosine schedule. The bare loop has nothing else; the
trainer adds what it is for: accelerate (prepare, accumulate, backward), the per-step reduce of
the non-finite/stop flags, per-item seeding for exact resume, metrics lines and the progress bar.

Protocol: each side runs in its own fresh process (`litv2 pretrain --max-steps N` and this script's
`--bare` mode), in rounds whose order alternates (engine first, then bare first, ...) so load
from other processes hits both alike. Each side times windows of `--log-every` steps with the
same clock placement (data loading included); the first window (worker start, warm-up) is
dropped. Reported: images/s as the median over rounds of each round's steady-state images/s,
and the overhead 1 - engine/bare as the median of per-round ratios.

    python benchmarks/bench_trainer.py                     # t variant, 224, batch 16, 3 rounds
    python benchmarks/bench_trainer.py --rounds 5 --steps 25 --json trainer.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "litv2-s.yaml"


def make_folder(root: Path, classes: int, per_class: int) -> Path:
    """ImageNet-sized JPEGs (500x375) of smooth random texture, one folder per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 2)):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                small = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
                Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def steady_images_per_s(windows: list[float]) -> float:
    """Images/s over the windows after the first (the first holds worker start-up and warm-up)."""
    if len(windows) < 2:
        raise SystemExit("need at least two logging windows: raise --steps or lower --log-every")
    return statistics.median(windows[1:])


def run_engine(args, data: Path, out: Path) -> float:
    cmd = [sys.executable, "-m", "litv2cli.cli.main", "pretrain", "--recipe", str(RECIPE), "--variant", args.variant,
           "--data", str(data), "--res", str(args.res), "--batch-size", str(args.batch_size),
           "--max-steps", str(args.steps), "--log-every", str(args.log_every), "--workers", str(args.workers),
           "--no-progress", "--output", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return steady_images_per_s([line["images_per_s"] for line in lines if "images_per_s" in line and line["step"] > 1])


def run_bare(args, data: Path) -> float:
    cmd = [sys.executable, __file__, "--bare", "--data", str(data), "--variant", args.variant, "--res", str(args.res),
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--log-every", str(args.log_every),
           "--workers", str(args.workers)]
    result = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return steady_images_per_s(json.loads(result.stdout.strip().splitlines()[-1]))


def bare_loop(args) -> list[float]:
    """The same math as the trainer's step, written as the plainest PyTorch loop."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from litv2cli.recipe import load_recipe
    from litv2cli.data import build_train_transform, collate_skip_corrupt, open_split
    from litv2cli.train.losses import build_loss
    from litv2cli.models import create_model
    from litv2cli.train.optim import build_optimizer, build_scheduler

    recipe = load_recipe(RECIPE).model_copy(update={"variant": args.variant, "res": (args.res, args.res),
                                                    "batch_size": args.batch_size})
    torch.manual_seed(recipe.seed)
    dataset = open_split(str(args.data), "train")
    dataset.set_transform(build_train_transform(
        recipe.res, auto_augment=recipe.auto_augment, color_jitter=recipe.color_jitter, re_prob=recipe.reprob,
        hflip=recipe.hflip, interpolation=recipe.interpolation, scale=recipe.train_scale,
        mean=recipe.mean, std=recipe.std))
    model = create_model(recipe.variant, num_classes=dataset.num_classes, drop_path_rate=recipe.drop_path,
                         alpha=recipe.alpha, local_ws=tuple(recipe.window))
    lr, warmup_lr, min_lr = recipe.scaled_lrs(args.batch_size)
    optimizer = build_optimizer(model, lr=lr, weight_decay=recipe.weight_decay,
                                offset_lr_scale=recipe.offset_lr_scale, betas=recipe.betas, eps=recipe.eps)
    steps_per_epoch = len(dataset) // args.batch_size
    scheduler = build_scheduler(optimizer, total_steps=steps_per_epoch * recipe.epochs,
                                warmup_steps=round(recipe.warmup_epochs * steps_per_epoch),
                                warmup_lr=warmup_lr, min_lr=min_lr)
    mixup, criterion = build_loss(recipe, dataset.num_classes)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=RandomSampler(dataset), drop_last=True,
                        num_workers=args.workers, collate_fn=collate_skip_corrupt)
    model.train()
    windows, start, images_seen, step = [], time.perf_counter(), 0, 0
    for images, labels, _ in loader:
        images, targets = mixup(images, labels)
        loss = criterion(model(images), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        scheduler.step_update(step)
        images_seen += images.shape[0]
        loss.item()  # the trainer reads the loss every step for its log; so does this loop
        if step % args.log_every == 0:
            windows.append(images_seen / (time.perf_counter() - start))
            start, images_seen = time.perf_counter(), 0
        if step >= args.steps:
            break
    return windows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="t")
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run (within one epoch)")
    parser.add_argument("--log-every", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare:
        print(json.dumps(bare_loop(args)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        per_class = (args.steps + 2) * args.batch_size // 8 + 1  # one epoch holds every timed step
        data = make_folder(Path(tmp) / "data", classes=8, per_class=per_class)
        engine, bare, ratios = [], [], []
        for round_index in range(args.rounds):
            sides = ["engine", "bare"] if round_index % 2 == 0 else ["bare", "engine"]
            result = {}
            for side in sides:
                result[side] = (run_engine(args, data, Path(tmp) / f"run{round_index}") if side == "engine"
                                else run_bare(args, data))
            engine.append(result["engine"])
            bare.append(result["bare"])
            ratios.append(result["engine"] / result["bare"])
            print(f"round {round_index + 1}: engine {result['engine']:.2f} images/s, bare {result['bare']:.2f} "
                  f"images/s, ratio {ratios[-1]:.3f}", flush=True)
    import torch

    summary = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "config": {k: v for k, v in vars(args).items() if k not in ("bare", "data", "json")},
        "engine_images_per_s": statistics.median(engine), "bare_images_per_s": statistics.median(bare),
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "overhead_pct": 100 * (1 - statistics.median(ratios)),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
