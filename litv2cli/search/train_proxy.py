"""The `train` accuracy proxy: a short training of one point on the user's data, through the
same loop as `litv2 pretrain` (`litv2cli.train.loop.train`), with a smaller budget.

Validation top-1 goes to Optuna after every epoch, so the study's pruner can stop hopeless points
early. The budget recipe is the variant's with the budget's epochs, resolution, batch and
precision (the search's own, so that points are trained as they are timed), the learning rate as
given (linear scaling from batch 1024 would leave a few-epoch run with a uselessly small LR), and
no warm-up, drop path, Mixup/CutMix, RandAugment or random erasing: heavy regularisation only pays
off over hundreds of epochs and would hide the differences a short run can show.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from litv2cli.recipe import Recipe, default_recipe
from litv2cli.search.space import Point


@dataclass(frozen=True)
class TrainBudget:
    data: str
    epochs: int = 3
    resolution: tuple[int, int] = (64, 64)
    batch_size: int = 32
    lr: float = 1e-3
    max_steps: int | None = None  # stop each run after this many optimizer steps
    seed: int = 0
    workers: int = 0
    precision: str = "auto"  # as `litv2 pretrain --precision`

    def fingerprint(self) -> dict[str, Any]:
        return {"data": self.data, "epochs": self.epochs, "resolution": list(self.resolution),
                "batch_size": self.batch_size, "lr": self.lr, "max_steps": self.max_steps, "seed": self.seed,
                "precision": self.precision}


def budget_recipe(variant: str, point: Point, budget: TrainBudget) -> Recipe:
    values = default_recipe(variant).model_dump()
    values.update(
        alpha=point.alpha, window=tuple(point.window), epochs=budget.epochs, warmup_epochs=0,
        batch_size=budget.batch_size, accum=1, base_lr=budget.lr, reference_batch=budget.batch_size,
        warmup_lr=budget.lr * 1e-3, min_lr=budget.lr * 1e-2, res=budget.resolution, drop_path=0.0,
        mixup=0.0, cutmix=0.0, auto_augment=None, reprob=0.0, color_jitter=0.0, ema=False,
        eval_every_epochs=1, seed=budget.seed, num_classes=None, provenance=None,
        description=f"training proxy of litv2 search for {point.label}",
    )
    return Recipe.model_validate(values)


def train_point(trial: optuna.Trial, variant: str, point: Point, budget: TrainBudget, run_dir: Path) -> float:
    """Final validation top-1 (%) after the budget; raises TrialPruned when the pruner stops it
    and KeyboardInterrupt when a signal stopped the loop."""
    from litv2cli.train.loop import train
    from litv2cli.train.spec import RunSpec, read_metrics

    if run_dir.exists():
        shutil.rmtree(run_dir)  # a leftover of an interrupted attempt: this trial starts afresh
    run_dir.mkdir(parents=True)
    recipe = budget_recipe(variant, point, budget)
    spec = RunSpec(recipe=recipe.model_dump(mode="json"), data=budget.data, output=str(run_dir),
                   workers=budget.workers, keep=1, max_steps=budget.max_steps, progress=False, log_with=[],
                   precision=budget.precision)
    pruned: list[int] = []

    def on_eval(step: int, record: dict[str, Any]) -> bool:
        trial.report(float(record["top1"]), step)
        if trial.should_prune():
            pruned.append(step)
            return True
        return False

    last = train(spec, on_eval=on_eval, stop_hint="run the same search again to train this point afresh")
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    _drop_weights(run_dir)
    if any(r.get("event") == "stopped" for r in records):
        raise KeyboardInterrupt
    if pruned:
        trial.set_user_attr("pruned_at_step", pruned[0])
        raise optuna.TrialPruned(f"{point.label} pruned at step {pruned[0]} with top-1 {last.get('top1')}")
    if "top1" not in last:
        raise RuntimeError(f"training {point.label} ended without a validation result")
    trial.set_user_attr("train_steps", int(last.get("step", 0)))
    trial.set_user_attr("val_images", int(last.get("val_images", 0)))
    return float(last["top1"])


def _drop_weights(run_dir: Path) -> None:
    """Keep the metrics of a proxy run, not its checkpoints and weights (they are never reused)."""
    for path in run_dir.iterdir():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.suffix == ".safetensors":
            path.unlink(missing_ok=True)
