"""Training recipes: one typed, validated object per run.

A recipe YAML lists only what differs from the defaults below (the paper's ImageNet recipe
for LITv2-S); `load_recipe` rejects unknown keys, wrong types and out-of-range values with
one line naming the key and the file. Command-line flags override recipe keys through
`Recipe.with_overrides`, and the fully resolved recipe is saved into the run directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from litv2cli.defaults import PAPER_ALPHA, PAPER_WINDOW, fits_model, read_resolution
from litv2cli.errors import UserError
from litv2cli.files import write_text_atomic


def package_file(name: str) -> Path:
    """A file or folder shipped inside the package (package data, so a wheel holds it). Wheels
    and editable installs put the package on disk, so this is a real path, which accelerate and
    DeepSpeed need (they take file names)."""
    return Path(str(resources.files("litv2cli").joinpath(name)))


# The shipped recipes. In a checkout, the top-level `recipes/` is a link to this folder.
RECIPES_DIR = package_file("recipes")
VARIANT_NAMES = ("t", "s", "m", "b")
# Variants with the paper's ImageNet recipe, `recipes/litv2-<variant>.yaml`. LITv2-T is ours, not
# from the paper: it has no such recipe and starts from the defaults below with its own sizes.
PAPER_VARIANTS = ("s", "m", "b")
DEMO_RECIPE = "litv2-t-demo.yaml"  # LITv2-T on the built-in digits (`--data demo`)


class Recipe(BaseModel):
    """Everything that defines a training run except machine-specific paths."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    description: str | None = None

    # Model (the architecture itself lives in the variant registry).
    variant: Literal["t", "s", "m", "b"] = "s"
    alpha: float = Field(PAPER_ALPHA, ge=0.0, le=1.0)
    window: tuple[int, int, int, int] = PAPER_WINDOW
    drop_path: float = Field(0.2, ge=0.0, lt=1.0)
    num_classes: int | None = Field(None, ge=1, description="None: taken from the data")

    # Schedule. LRs are given at `reference_batch` and scaled linearly with the real total
    # batch (world size x per-device batch x accumulation), as the official code does.
    epochs: int = Field(300, ge=1)
    warmup_epochs: float = Field(20, ge=0)
    batch_size: int = Field(128, ge=1, description="per device")
    accum: int = Field(1, ge=1)
    base_lr: float = Field(1e-3, gt=0)
    warmup_lr: float = Field(1e-6, ge=0)
    min_lr: float = Field(1e-5, ge=0)
    reference_batch: int = Field(1024, ge=1)
    weight_decay: float = Field(0.05, ge=0)
    offset_lr_scale: float = Field(0.01, gt=0, description="LR multiplier of the DTM offset convs")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    clip_grad: float | None = Field(5.0, gt=0)

    # Loss and augmentation (timm's implementations).
    res: tuple[int, int] = (224, 224)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    mixup: float = Field(0.8, ge=0)
    cutmix: float = Field(1.0, ge=0)
    mixup_prob: float = Field(1.0, ge=0, le=1)
    mixup_switch_prob: float = Field(0.5, ge=0, le=1)
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    color_jitter: float = Field(0.4, ge=0)
    reprob: float = Field(0.25, ge=0, le=1)
    hflip: float = Field(0.5, ge=0, le=1)
    train_scale: tuple[float, float] = (0.08, 1.0)
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    eval_crop_pct: float | None = Field(0.875, gt=0, le=1, description="None: resize straight to res")
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    # Run behaviour.
    seed: int = 0
    ema: bool = False
    ema_decay: float = Field(0.9998, gt=0, lt=1)
    eval_every_epochs: int = Field(1, ge=1)

    provenance: dict[str, Any] | None = None

    @field_validator("res", mode="before")
    @classmethod
    def _parse_res(cls, value: Any) -> tuple[int, int]:
        try:
            height, width = read_resolution(value)
        except (TypeError, ValueError):
            raise ValueError("expected 224, '384x512' or [384, 512]") from None
        if not fits_model(height, width):
            raise ValueError(f"{height}x{width} is not a multiple of 32")
        return (height, width)

    @field_validator("window")
    @classmethod
    def _check_window(cls, value: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        if any(v < 0 for v in value) or any(v < 1 for v in value[2:]):
            raise ValueError("HiLo stages (3 and 4) need window sizes >= 1; stages 1-2 hold no attention")
        return value

    @model_validator(mode="after")
    def _check_schedule(self) -> "Recipe":
        if self.warmup_epochs >= self.epochs and self.epochs > 1:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be shorter than epochs ({self.epochs})")
        return self

    @model_validator(mode="after")
    def _check_mixup_batch(self) -> "Recipe":
        # Mixup/CutMix mix each image with its partner in the flipped batch: an odd batch leaves one out.
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ValueError(f"batch_size {self.batch_size}: Mixup/CutMix pairs images, so the batch must be even")
        return self

    def scaled_lrs(self, total_batch: int) -> tuple[float, float, float]:
        """(lr, warmup_lr, min_lr) scaled linearly from `reference_batch` to `total_batch`."""
        factor = total_batch / self.reference_batch
        return self.base_lr * factor, self.warmup_lr * factor, self.min_lr * factor

    def with_overrides(self, **overrides: Any) -> "Recipe":
        """A copy with the given (non-None) keys replaced and re-validated. Fewer epochs than the
        warm-up (a short run of an ImageNet recipe) shrink the warm-up to a tenth of the run,
        none for one epoch, unless the warm-up is given too."""
        values = self.model_dump()
        overrides = {k: v for k, v in overrides.items() if v is not None}
        epochs = overrides.get("epochs")
        if epochs is not None and "warmup_epochs" not in overrides and epochs <= values["warmup_epochs"]:
            overrides["warmup_epochs"] = 0 if epochs == 1 else epochs / 10
        values.update(overrides)
        return _validate(values, "command-line overrides")

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        data["res"] = f"{self.res[0]}x{self.res[1]}"
        return yaml.safe_dump(data, sort_keys=False)


def _validate(values: dict[str, Any], origin: str) -> Recipe:
    try:
        return Recipe.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise UserError(f"{origin}: unknown recipe key {key!r}") from None
        if not key:  # a rule across keys: its message names them
            raise UserError(f"{origin}: {first['msg'].removeprefix('Value error, ')}") from None
        raise UserError(f"{origin}: recipe key {key!r}: {first['msg']}") from None


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a recipe file, read with a safe YAML loader (a recipe is untrusted input)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read recipe ({exc.__class__.__name__})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping of keys to values")
    return data


def default_recipe(variant: str) -> Recipe:
    """The recipe `variant` starts from without `--recipe`: the paper's for S, M and B
    (`recipes/litv2-<variant>.yaml`, which must be there), the defaults for LITv2-T (no paper recipe)."""
    if variant in PAPER_VARIANTS:
        return shipped_recipe(f"litv2-{variant}.yaml")
    return _validate({"variant": variant}, f"variant {variant}")


def shipped_recipe(name: str) -> Recipe:
    """A recipe of the package; a missing one is an error, never a silent fall back to defaults."""
    path = RECIPES_DIR / name
    if not path.is_file():
        raise UserError(f"the shipped recipe {name} is missing from {RECIPES_DIR}; reinstall litv2cli")
    return load_recipe(path)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe; `base: other.yaml` inherits from another recipe first."""
    path = Path(path)
    data = read_recipe_file(path)
    base = data.pop("base", None)
    if base is not None:
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        merged = load_recipe(base_path).model_dump()
        merged.update(data)
        data = merged
    return _validate(data, str(path))


def save_recipe(recipe: Recipe, path: str | Path) -> Path:
    """Write the fully resolved recipe atomically, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, recipe.to_yaml())
    return path
