"""Train and eval transforms: the official recipe's sizes and steps, square and non-square."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import RandAugment
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from litv2cli.data import build_eval_transform, build_train_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RECIPE = dict(auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4, re_prob=0.25, hflip=0.5, interpolation="bicubic")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A 500x375 (ImageNet-like) image with structure everywhere, so crops and resizes show."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:375, 0:500]
    pixels = np.stack([(x * 0.5) % 256, (y * 0.7) % 256, ((x + y) * 0.3) % 256], axis=-1)
    pixels = pixels + rng.normal(0, 10, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _normalised(image: Image.Image) -> torch.Tensor:
    return T.Normalize(MEAN, STD)(F.to_tensor(image))


def test_eval_with_crop_pct_resizes_short_side_to_256_then_centre_crops_224(photo):
    transform = build_eval_transform((224, 224), crop_pct=0.875, interpolation="bicubic", mean=MEAN, std=STD)
    expected = _normalised(F.center_crop(F.resize(photo, 256, InterpolationMode.BICUBIC), [224, 224]))
    out = transform(photo)
    assert out.shape == (3, 224, 224)
    assert torch.allclose(out, expected, atol=1e-6)


def test_eval_with_crop_pct_at_384_resizes_short_side_to_438(photo):
    transform = build_eval_transform((384, 384), crop_pct=0.875, interpolation="bicubic", mean=MEAN, std=STD)
    expected = _normalised(F.center_crop(F.resize(photo, 438, InterpolationMode.BICUBIC), [384, 384]))
    assert torch.allclose(transform(photo), expected, atol=1e-6)


def test_eval_without_crop_resizes_straight_to_hxw(photo):
    for resolution in ((384, 384), (224, 320)):
        transform = build_eval_transform(resolution, crop_pct=None, interpolation="bicubic", mean=MEAN, std=STD)
        expected = _normalised(F.resize(photo, list(resolution), InterpolationMode.BICUBIC))
        out = transform(photo)
        assert out.shape == (3, *resolution)
        assert torch.allclose(out, expected, atol=1e-6)


def test_eval_with_crop_pct_on_non_square_resolution_keeps_the_aspect_ratio(photo):
    # A 4:3 image to 160x320 (1:2): covering (182, 365) with the ratio kept scales by 0.73 to
    # 274x365, then the centre 160x320 is cut; squashing to 160x320 would give something else.
    transform = build_eval_transform((160, 320), crop_pct=0.875, interpolation="bicubic", mean=MEAN, std=STD)
    out = transform(photo)
    assert out.shape == (3, 160, 320)
    kept = _normalised(F.center_crop(F.resize(photo, [274, 365], InterpolationMode.BICUBIC), [160, 320]))
    squashed = _normalised(F.resize(photo, [160, 320], InterpolationMode.BICUBIC))
    assert (out - kept).abs().mean() < 0.05
    assert (out - squashed).abs().mean() > 0.2


def test_eval_transform_is_deterministic_and_rejects_random_interpolation(photo):
    transform = build_eval_transform((224, 224), crop_pct=0.875, interpolation="bicubic")
    assert torch.equal(transform(photo), transform(photo))
    with pytest.raises(ValueError, match="random"):
        build_eval_transform((224, 224), crop_pct=0.875, interpolation="random")


@pytest.mark.parametrize("resolution", [(224, 224), (192, 288)])
def test_train_transform_gives_normalised_tensor_of_the_resolution(photo, resolution):
    transform = build_train_transform(resolution, **RECIPE, mean=MEAN, std=STD)
    torch.manual_seed(0)
    outs = [transform(photo) for _ in range(4)]
    assert all(out.shape == (3, *resolution) and out.dtype == torch.float32 for out in outs)
    assert not torch.equal(outs[0], outs[1])  # random crops differ
    assert all(-3 < out.mean() < 3 for out in outs)  # normalised, not 0..255


def test_train_transform_is_the_official_recipe_with_jitter_off_under_randaugment():
    steps = build_train_transform((224, 224), **RECIPE).transforms
    names = [type(step).__name__ for step in steps]
    assert names[:2] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip"]
    crop = steps[0]
    assert crop.scale == (0.08, 1.0) and crop.size == (224, 224)
    assert any(isinstance(step, RandAugment) for step in steps)
    assert "ColorJitter" not in names
    erasing = next(step for step in steps if isinstance(step, RandomErasing))
    assert erasing.probability == 0.25 and erasing.mode == "pixel"


def test_train_transform_without_randaugment_keeps_colour_jitter_and_scale():
    steps = build_train_transform((32, 32), auto_augment=None, color_jitter=0.4, re_prob=0.0, hflip=0.0,
                                  interpolation="bicubic", scale=(0.7, 1.0)).transforms
    names = [type(step).__name__ for step in steps]
    assert "ColorJitter" in names and "RandomHorizontalFlip" not in names and "RandomErasing" not in names
    assert steps[0].scale == (0.7, 1.0)


def test_randaugment_posterize_keeping_zero_bits_gives_black_instead_of_raising():
    # Magnitude 10 (reached by m9 + mstd 0.5 draws) makes timm ask Pillow for 0 bits; Pillow 13
    # raises on that, which would kill a DataLoader worker about once every 650 images.
    transform = build_train_transform((224, 224), **RECIPE)
    randaugment = next(step for step in transform.transforms if isinstance(step, RandAugment))
    op = next(op for op in randaugment.ops if op.name == "PosterizeIncreasing")
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    image = Image.new("RGB", (32, 32), (200, 120, 40))
    assert np.asarray(op(image)).max() == 0
    op.magnitude = 5  # 2 bits kept: posterized, not black
    assert np.asarray(op(image)).tolist()[0][0] == [192, 64, 0]


def test_fused_to_tensor_and_normalize_matches_torchvision(photo):
    from litv2cli.data.transforms import ToNormalizedTensor

    crop = photo.crop((10, 20, 234, 244))
    ours = ToNormalizedTensor(MEAN, STD)(crop)
    assert ours.dtype == torch.float32 and ours.is_contiguous() and ours.shape == (3, 224, 224)
    assert (ours - _normalised(crop)).abs().max() < 1e-6
    for transform in (build_train_transform((224, 224), **RECIPE), build_eval_transform((224, 224))):
        names = [type(step).__name__ for step in transform.transforms]
        assert "ToNormalizedTensor" in names and "MaybeToTensor" not in names and "Normalize" not in names
