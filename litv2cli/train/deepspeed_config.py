"""DeepSpeed configs: shipped presets and the filling of their "auto" fields from the recipe.

Our JSON files stay thin ("auto" for batch, accumulation and clipping); the optimizer and
scheduler are built in our code, so there is one source of truth. We fill the fields ourselves
instead of letting accelerate do it because (a) accelerate derives the bucket sizes from
`model.config.hidden_size`, which a vision model does not have, and (b) on CPU accelerate has
reported a world size of 1 while DeepSpeed ran several ranks, so its batch arithmetic is wrong.
"""

from __future__ import annotations

import os
import json
from pathlib import Path
from typing import Any

from litv2cli.recipe import RECIPES_DIR, Recipe
from litv2cli.errors import UserError

PRESETS = ("zero1", "zero2", "zero3", "zero3-offload")


def resolve_config_path(choice: str) -> Path:
    """A preset name (`zero2`) or the path of the user's own JSON file."""
    if choice in PRESETS:
        preset = RECIPES_DIR / "deepspeed" / f"{choice}.json"
        if not preset.is_file():
            raise UserError(f"--deepspeed {choice}: the shipped preset is missing from {preset.parent}; "
                            "reinstall litv2cli")
        return preset
    path = Path(choice)
    if not path.is_file():
        raise UserError(f"--deepspeed {choice!r}: neither a preset ({', '.join(PRESETS)}) nor an existing JSON file")
    return path.resolve()


def read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable DeepSpeed JSON config ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a DeepSpeed config must be a JSON object")
    for key in ("optimizer", "scheduler"):
        if key in data:
            raise UserError(f"{path}: remove the {key!r} section; litv2 builds the optimizer and schedule from the recipe")
    return data


def fill_config(config: dict[str, Any], *, micro_batch: int, accum: int, world_size: int,
                clip_grad: float | None, precision: str, hidden_size: int, origin: str) -> dict[str, Any]:
    """Replace "auto" values; explicit values must agree with the run or it is refused up front."""
    config = json.loads(json.dumps(config))
    wanted = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro_batch * accum * world_size,
    }
    for key, value in wanted.items():
        given = config.get(key, "auto")
        if given != "auto" and int(given) != value:
            raise UserError(
                f"{origin}: {key} is {given} but this run has {value} (batch {micro_batch} x accum {accum} x "
                f"{world_size} processes); set it to \"auto\" or make them agree"
            )
        config[key] = value
    if config.get("gradient_clipping", "auto") == "auto":
        config["gradient_clipping"] = clip_grad or 0.0
    config["bf16"] = {**config.get("bf16", {}), "enabled": precision == "bf16"}
    config["fp16"] = {**config.get("fp16", {}), "enabled": precision == "fp16"}
    zero = config.setdefault("zero_optimization", {})
    auto_sizes = {
        "reduce_bucket_size": hidden_size * hidden_size,
        "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
        "stage3_param_persistence_threshold": 10 * hidden_size,
    }
    for key, value in auto_sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value
    return config


def zero_stage(config: dict[str, Any]) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def check_recipe(recipe: Recipe, config: dict[str, Any]) -> None:
    """Refuse a recipe this DeepSpeed config cannot train: an EMA under ZeRO-3 would average only
    this rank's shard of every weight."""
    if recipe.ema and zero_stage(config) == 3:
        raise UserError("--ema with ZeRO-3 is not supported: the EMA copy would hold only this rank's shard")


def pin_deepspeed_to_cpu_without_cuda() -> None:
    """Runs without CUDA train on the CPU; tell DeepSpeed so, which it would otherwise guess and
    announce with a warning line in every process (a user's own DS_ACCELERATOR wins)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
