"""Every registered variant runs at 224, 384 and a non-square size, for windows 1, 2, 4 and alpha 0, 0.5, 1."""

import itertools

import pytest
import torch

from litv2cli.models import ATTENTIONS, VARIANTS, create_model

RESOLUTIONS = [(224, 224), (384, 384), (256, 320)]
WINDOWS = [1, 2, 4]
ALPHAS = [0.0, 0.5, 1.0]


@pytest.mark.parametrize(("window", "alpha"), list(itertools.product(WINDOWS, ALPHAS)))
def test_tiny_variant_classifies_every_size_window_and_alpha(window, alpha):
    # Window in both HiLo stages, so stage 4 (7x7, 12x12, 8x10) is padded as well.
    model = create_model("t", num_classes=7, alpha=alpha, local_ws=(0, 0, window, window)).eval()
    with torch.no_grad():
        for height, width in RESOLUTIONS:
            features = model.forward_features(torch.randn(1, 3, height, width))
            assert features.shape == (1, model.num_features, height // 32, width // 32)
            logits = model.forward_head(features)
            assert logits.shape == (1, 7)
            assert torch.isfinite(logits).all()


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "t"])
def test_paper_variant_runs_non_square_with_padded_windows(variant):
    model = create_model(variant, num_classes=5, alpha=0.5, local_ws=(0, 0, 4, 2)).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 256, 320))
    assert logits.shape == (1, 5)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(("window", "alpha"), list(itertools.product(WINDOWS, ALPHAS)))
def test_hilo_layers_of_every_variant_keep_shape_at_every_size(variant, window, alpha):
    # The attention layers at their real widths and map sizes; cheap enough for the whole grid.
    spec = VARIANTS[variant]
    for stage in (2, 3):
        dim, heads = spec.embed_dim * 2**stage, spec.num_heads[stage]
        attn = ATTENTIONS["hilo"](dim, heads, window, alpha).eval()
        for height, width in RESOLUTIONS:
            h, w = height // 4 // 2**stage, width // 4 // 2**stage
            x = torch.randn(1, h * w, dim)
            with torch.no_grad():
                assert attn(x, h, w).shape == (1, h * w, dim)


def test_tiny_variant_runs_at_32_pixels_with_a_one_by_one_last_stage():
    model = create_model("t", num_classes=10).eval()
    with torch.no_grad():
        stages = model.forward_intermediates(torch.randn(2, 3, 32, 32), intermediates_only=True)
    assert [tuple(s.shape[-2:]) for s in stages] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_training_step_reaches_every_parameter():
    model = create_model("t", num_classes=3, local_ws=(0, 0, 3, 1)).train()
    loss = model(torch.randn(2, 3, 64, 96)).logsumexp(dim=1).mean()
    loss.backward()
    # Offset convs start at zero but still receive gradients; nothing is left out of the graph.
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_channels_last_model_gives_the_same_logits():
    torch.manual_seed(0)
    model = create_model("t", num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_stochastic_depth_rises_linearly_to_the_variant_rate():
    model = create_model("s")
    rates = [getattr(block.drop_path, "drop_prob", 0.0) for stage in model.layers for block in stage.blocks]
    assert rates[0] == 0.0
    assert rates[-1] == pytest.approx(VARIANTS["s"].drop_path_rate)
    steps = [b - a for a, b in zip(rates, rates[1:])]
    assert max(steps) - min(steps) < 1e-6
    assert create_model("t", drop_path_rate=0.0).layers[-1].blocks[-1].drop_path.__class__.__name__ == "Identity"
