"""Train and eval transforms: timm's ImageNet pipelines, configured as the official recipe.

Training is timm's `create_transform` (RandomResizedCrop, flip, RandAugment, random erasing in
pixel mode; timm drops colour jitter whenever RandAugment is on). Evaluation is timm's eval
pipeline: `crop_pct=0.875` (the official ImageNet eval) resizes to size / 0.875 with the aspect
ratio kept (256 for 224) and centre-crops; `crop_pct=None` (the official 384 fine-tune eval)
resizes straight to HxW, no crop.

Two changes to timm's pipelines, both after the augmentations. `ToNormalizedTensor` replaces
ToTensor + Normalize with the same values, but converts to float once and normalises in place
instead of allocating three float images (BENCHMARKS.md, data pipeline). `keep_zero_bit_posterize`
gives back Pillow 12's black image for a 0-bit Posterize, which timm's RandAugment asks for about
once in 650 images with the paper's recipe and on which Pillow 13 raises, killing the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data import auto_augment as timm_auto_augment
from timm.data.transforms import MaybeToTensor
from torchvision import transforms as T

INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming", "random")


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r}: use one of {', '.join(INTERPOLATIONS)}")


def build_train_transform(resolution: tuple[int, int], *, auto_augment: str | None, color_jitter: float,
                          re_prob: float, hflip: float, interpolation: str,
                          scale: tuple[float, float] = (0.08, 1.0),
                          mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                          std: Sequence[float] = IMAGENET_DEFAULT_STD) -> Callable:
    """PIL image -> normalised (3, H, W) float tensor with the paper's augmentation.

    `color_jitter=0` means none; with `auto_augment` set, timm ignores `color_jitter` (the
    official configs set 0.4 and RandAugment; only RandAugment runs).
    """
    _check_interpolation(interpolation)
    transform = keep_zero_bit_posterize(create_transform(
        input_size=(3, *resolution), is_training=True, scale=tuple(scale), hflip=hflip,
        color_jitter=color_jitter or None, auto_augment=auto_augment, interpolation=interpolation,
        mean=tuple(mean), std=tuple(std), re_prob=re_prob, re_mode="pixel", re_count=1,
    ))
    return fuse_to_tensor_and_normalize(transform, mean, std)


def posterize_zero_bits_black(image: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    """timm's posterize, except that keeping 0 bits gives a black image (Pillow <= 12 behaviour)."""
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return timm_auto_augment.posterize(image, bits_to_keep, **kwargs)


def keep_zero_bit_posterize(transform: Callable) -> Callable:
    """Point every Posterize op of timm's RandAugment/AutoAugment/AugMix inside `transform`
    (a Compose) at `posterize_zero_bits_black`; returns `transform`, changed in place."""
    for step in getattr(transform, "transforms", [transform]):
        ops = list(getattr(step, "ops", []))
        for sub_policy in getattr(step, "policy", []):
            ops += list(sub_policy)
        for op in ops:
            if getattr(op, "aug_fn", None) is timm_auto_augment.posterize:
                op.aug_fn = posterize_zero_bits_black
    return transform


def build_eval_transform(resolution: tuple[int, int], *, crop_pct: float | None = 0.875,
                         interpolation: str = "bicubic", mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                         std: Sequence[float] = IMAGENET_DEFAULT_STD) -> Callable:
    """PIL image -> normalised (3, H, W) float tensor, deterministic (see the module docstring)."""
    _check_interpolation(interpolation)
    if interpolation == "random":
        raise ValueError("interpolation 'random' is for training; evaluation needs a fixed one")
    if crop_pct is not None and not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct {crop_pct}: must be in (0, 1] or None")
    transform = create_transform(
        input_size=(3, *resolution), is_training=False, interpolation=interpolation,
        crop_pct=1.0 if crop_pct is None else crop_pct, crop_mode="squash" if crop_pct is None else "center",
        mean=tuple(mean), std=tuple(std),
    )
    return fuse_to_tensor_and_normalize(transform, mean, std)


class ToNormalizedTensor:
    """PIL RGB image -> (3, H, W) float32 `(pixel / 255 - mean) / std`, contiguous.

    One uint8 HWC -> CHW copy, one conversion to float, then subtract and scale in place with
    `mean` and `1 / std` premultiplied by 255. Tensors (already converted) are normalised as
    torchvision's Normalize would.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._offset = torch.tensor(self.mean, dtype=torch.float32).mul(255).view(-1, 1, 1)
        self._scale = torch.tensor(self.std, dtype=torch.float32).mul(255).reciprocal().view(-1, 1, 1)

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            return T.functional.normalize(image, list(self.mean), list(self.std))
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()  # (3, H, W) uint8
        return pixels.to(torch.float32).sub_(self._offset).mul_(self._scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(mean={self.mean}, std={self.std})"


def fuse_to_tensor_and_normalize(transform: Callable, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Replace the MaybeToTensor + Normalize(mean, std) pair of a timm Compose by
    `ToNormalizedTensor`; returns `transform`, changed in place (unchanged without the pair)."""
    steps = getattr(transform, "transforms", None)
    if steps is None:
        return transform
    for index in range(len(steps) - 1):
        first, second = steps[index], steps[index + 1]
        if isinstance(first, MaybeToTensor) and isinstance(second, T.Normalize) and not second.inplace:
            steps[index:index + 2] = [ToNormalizedTensor(mean, std)]
            break
    return transform
