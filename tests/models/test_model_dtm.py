"""DTM's deformable conv: the gather form equals torchvision's op (values and gradients), and
the fast LITv2 equals its reference form."""

import pytest
import torch
from torchvision.ops import deform_conv2d

from litv2cli.models import HiLo, HiLoReference, create_model
from litv2cli.models.dtm import DTM, DeformConv2d, deform_conv2d_gather
from tests.helpers.model_fixtures import with_learned_offsets

# (kernel, stride, height, width): DTM's 2x2 stride 2, odd sizes that drop a row and a column,
# an overlapping 3x3 stride 1, and the smallest map DTM meets (LITv2-T at 32 x 32 has 2 x 2).
CASES = [(2, 2, 8, 8), (2, 2, 7, 9), (3, 1, 6, 5), (2, 2, 2, 2), (1, 1, 4, 3)]


def deform_inputs(kernel: int, stride: int, height: int, width: int, scale: float = 2.0):
    generator = torch.Generator().manual_seed(kernel * 100 + height * 10 + width)
    x = torch.randn(3, 5, height, width, generator=generator)
    out_h, out_w = (height - kernel) // stride + 1, (width - kernel) // stride + 1
    offset = torch.randn(3, 2 * kernel * kernel, out_h, out_w, generator=generator) * scale
    weight = torch.randn(7, 5, kernel, kernel, generator=generator) * 0.3
    bias = torch.randn(7, generator=generator)
    return x, offset, weight, bias


@pytest.mark.parametrize(("kernel", "stride", "height", "width"), CASES)
def test_gather_form_equals_torchvision_deform_conv(kernel, stride, height, width):
    x, offset, weight, bias = deform_inputs(kernel, stride, height, width)
    # Offsets of about two pixels put samples outside the map, where zero padding must apply.
    rows = torch.arange(offset.shape[2]).view(1, 1, -1, 1) * stride + offset[:, 0::2]
    assert (rows <= -1).any() and (rows >= height).any()
    expected = deform_conv2d(x, offset, weight, bias, stride=stride)
    actual = deform_conv2d_gather(x, offset, weight, bias, stride=stride)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= 1e-5


@pytest.mark.parametrize(("kernel", "stride", "height", "width"), CASES)
def test_gather_form_gradients_equal_torchvision(kernel, stride, height, width):
    inputs = deform_inputs(kernel, stride, height, width)
    upstream = None
    grads = {}
    for name, op in (("torchvision", deform_conv2d), ("gather", deform_conv2d_gather)):
        leaves = [tensor.clone().requires_grad_() for tensor in inputs]
        out = op(*leaves, stride=stride)
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)) if upstream is None else upstream
        (out * upstream).sum().backward()
        grads[name] = [leaf.grad for leaf in leaves]
    for expected, actual, what in zip(grads["torchvision"], grads["gather"], ("x", "offset", "weight", "bias")):
        assert torch.allclose(actual, expected, rtol=1e-4, atol=1e-5), (what, (actual - expected).abs().max())


def test_gather_form_of_a_channels_last_map_needs_no_copy_and_gives_channels_last():
    x, offset, weight, bias = deform_inputs(2, 2, 8, 8)
    x = x.contiguous(memory_format=torch.channels_last)
    out = deform_conv2d_gather(x, offset, weight, bias, stride=2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - deform_conv2d(x.contiguous(), offset, weight, bias, stride=2)).abs().max() <= 1e-5


def test_fast_dtm_returns_contiguous_tokens_equal_to_the_reference():
    torch.manual_seed(0)
    fast, reference = DTM(16), DTM(16, reference=True)
    with_learned_offsets(fast)
    reference.load_state_dict(fast.state_dict(), strict=True)
    tokens = torch.randn(2, 10 * 6, 16)
    out, height, width = fast(tokens, 10, 6)
    expected, *size = reference(tokens, 10, 6)
    assert (height, width) == tuple(size) == (5, 3)
    assert out.shape == (2, 15, 32) and out.is_contiguous()
    assert (out - expected).abs().max() <= 1e-5


def test_reference_model_swaps_every_fast_layer_and_keeps_the_state_dict():
    fast, reference = create_model("t"), create_model("t", reference=True)
    layers = {type(m) for m in reference.modules()}
    assert HiLoReference in layers and HiLo not in layers
    assert all(m.reference for m in reference.modules() if isinstance(m, DeformConv2d))
    assert not any(m.reference for m in fast.modules() if isinstance(m, DeformConv2d))
    assert reference.state_dict().keys() == fast.state_dict().keys()


@pytest.mark.parametrize("variant", ["t", "s"])
def test_fast_model_equals_reference_model_in_inference_and_training(variant):
    torch.manual_seed(0)
    fast = with_learned_offsets(create_model(variant, num_classes=10, drop_path_rate=0.0))
    reference = create_model(variant, num_classes=10, drop_path_rate=0.0, reference=True)
    reference.load_state_dict(fast.state_dict(), strict=True)
    images = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        assert (fast.eval()(images) - reference.eval()(images)).abs().max() <= 1e-5
    for model in (fast, reference):  # batch statistics in BatchNorm, gradients through every layer
        model.train()(images).square().mean().backward()
    for (name, expected), actual in zip(reference.named_parameters(), fast.parameters()):
        # The absolute term is for the deformable convs' biases: BatchNorm with batch statistics
        # follows them, so their true gradient is 0 and both sides hold rounding noise (~1e-8).
        assert (actual.grad - expected.grad).norm() <= 1e-4 * expected.grad.norm() + 1e-6, name


def test_the_gather_form_runs_on_a_cpu_and_torchvision_elsewhere(monkeypatch):
    """CUDA has no bf16 backward for the gather's weighted embedding_bag, and torchvision's CUDA
    kernel is the faster one there: a model on any other device must not take the gather."""
    from litv2cli.models import dtm

    assert dtm.gather_is_faster(torch.zeros(1))
    assert not dtm.gather_is_faster(torch.zeros(1, device="meta"))
    calls = []
    monkeypatch.setattr(dtm, "deform_conv2d_gather", lambda *args, **kwargs: calls.append("gather") or args[0])
    monkeypatch.setattr(dtm, "gather_is_faster", lambda x: False)
    layer = DeformConv2d(5, 7).eval()
    x = torch.randn(2, 5, 8, 8)
    with torch.no_grad():
        out = layer(x)
    assert calls == [] and out.shape == (2, 7, 4, 4)
    monkeypatch.setattr(dtm, "gather_is_faster", lambda x: True)
    with torch.no_grad():
        layer(x)
    assert calls == ["gather"]
