"""Low precision: HiLo, the DTM and LITv2 under bf16/fp16 autocast with float32 weights
(accelerate's mixed precision) and cast to bf16/fp16 with inputs to match (DeepSpeed's), against
their float32 reference forms, forward and backward.

Errors are relative to the output's scale (max |error| / max |reference|; gradients by norm) and
counted in machine epsilons of the low dtype (bf16 2^-7, fp16 2^-10). Rounding the weights and
inputs alone costs up to half an epsilon per value, and every rounded step along the path as
much again. Outputs and single layers' gradients stay within 2.5 epsilons over seeds, so 4 leave
room for that while a wrong head, window, bias or padding (errors of order 1) cannot pass; the
whole model's gradients, rounded through some twenty layers forward and back (and magnified by
batch statistics over LITv2-T's 2 x 3 maps), stay within 4 and are held to 8.
"""

import contextlib
import copy
import itertools
from unittest import mock

import pytest
import torch
from torchvision.ops import deform_conv2d

from litv2cli.models import HiLo, HiLoReference, create_model, native
from litv2cli.models.dtm import DTM, deform_conv2d_gather
from litv2cli.models.hilo import pad_to_window, uses_bands
from tests.helpers.model_fixtures import with_learned_offsets
from tests.models.test_model_dtm import CASES as DEFORM_CASES
from tests.models.test_model_dtm import deform_inputs
from tests.models.test_model_hilo import fast_and_reference

LOW_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# "autocast": float32 weights and inputs, torch.autocast; "cast": module and inputs in the low
# dtype; "cast-parameters": DeepSpeed's form, parameters and inputs cast, buffers left in float32.
PRECISIONS = [pytest.param(LOW_DTYPES[name], form, id=f"{name}-{form}")
              for name, form in itertools.product(LOW_DTYPES, ("autocast", "cast", "cast-parameters"))]
DIM, HEADS = 32, 4
WINDOWS = [1, 2, 3, 4]
# (alpha, qkv_bias): Hi-Fi only, both branches with and without qkv bias, Lo-Fi only.
BRANCHES = [(0.0, True), (0.5, True), (0.5, False), (1.0, True)]
# Unpadded for s = 1, 2, 4 (4 x 4) and s = 3 (3 x 66), padded otherwise; 3 x 66 is wide enough
# that every s > 1 attends over partitioned windows instead of masked bands.
MAPS = [(4, 4), (5, 3), (3, 66)]
EPSILONS = 4  # outputs, and the gradients of one layer (see the module docstring)
MODEL_GRADIENT_EPSILONS = 8


def tolerance(dtype: torch.dtype, epsilons: int = EPSILONS) -> float:
    return epsilons * torch.finfo(dtype).eps


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected).abs().max() / expected.abs().max()).item()


def norm_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected).norm() / expected.norm()).item()


def in_precision(module: torch.nn.Module, inputs: torch.Tensor, dtype: torch.dtype, form: str):
    """(module, inputs, context) as `form` runs them: the same module under autocast, or a copy
    cast to `dtype` (parameters and buffers) with the inputs cast too and no autocast."""
    if form == "autocast":
        return module, inputs, torch.autocast("cpu", dtype)
    cast = copy.deepcopy(module)
    if form == "cast-parameters":  # DeepSpeed's bf16/fp16: buffers (running statistics) stay float32
        for parameter in cast.parameters():
            parameter.data = parameter.data.to(dtype)
    else:
        cast = cast.to(dtype)
    return cast, inputs.to(dtype), contextlib.nullcontext()


def parameter_grads(module: torch.nn.Module, skip: tuple[str, ...] = ()) -> torch.Tensor:
    return torch.cat([p.grad.float().flatten() for name, p in module.named_parameters() if name not in skip])


def hilo_pair(window: int, alpha: float, qkv_bias: bool) -> tuple[HiLo, HiLoReference]:
    return fast_and_reference(window, alpha, qkv_bias, dim=DIM, heads=HEADS)


def test_test_maps_cover_bands_windows_and_padding():
    for window in WINDOWS[1:]:
        padded = [(-height % window, -width % window) != (0, 0) for height, width in MAPS]
        bands = {uses_bands(window, width + -width % window) for _, width in MAPS}
        assert any(padded) and not all(padded) and bands == {True, False}, window


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize(("dtype", "form"), PRECISIONS)
def test_hilo_inference_in_low_precision_matches_the_float32_reference(dtype, form, window):
    # Without autograd the output projections add into one buffer in place (`HiLo.project_out`),
    # which autocast does not convert; the float32-only kernels must never be taken.
    for alpha, qkv_bias in BRANCHES:
        fast, reference = hilo_pair(window, alpha, qkv_bias)
        for height, width in MAPS:
            x = torch.randn(2, height * width, DIM)
            with torch.no_grad():
                expected = reference(x, height, width)
            module, inputs, context = in_precision(fast, x, dtype, form)
            kernels = mock.patch.object(HiLo, "forward_native", side_effect=AssertionError("float32 kernels taken"))
            with kernels, torch.inference_mode(), context:
                assert not native.applies(pad_to_window(inputs.reshape(2, height, width, DIM), window))
                out = module(inputs, height, width)
            assert out.dtype == dtype
            error = relative_error(out, expected)
            assert error <= tolerance(dtype), (alpha, qkv_bias, height, width, error)


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize(("dtype", "form"), PRECISIONS)
def test_hilo_training_in_low_precision_matches_the_float32_reference(dtype, form, window):
    for alpha, qkv_bias in BRANCHES:
        fast, reference = hilo_pair(window, alpha, qkv_bias)
        for height, width in MAPS:
            x = torch.randn(2, height * width, DIM)
            upstream = torch.randn(2, height * width, DIM)
            x_reference = x.clone().requires_grad_()
            expected = reference(x_reference, height, width)
            (expected * upstream).sum().backward()
            module, inputs, context = in_precision(fast, x, dtype, form)
            inputs = inputs.clone().requires_grad_()
            with context:
                out = module(inputs, height, width)
            (out.float() * upstream).sum().backward()
            assert out.dtype == dtype
            where = (alpha, qkv_bias, height, width)
            assert relative_error(out, expected.detach()) <= tolerance(dtype), where
            assert relative_error(inputs.grad, x_reference.grad) <= tolerance(dtype), where
            assert norm_error(parameter_grads(module), parameter_grads(reference)) <= tolerance(dtype), where
            fast.zero_grad(set_to_none=True)
            reference.zero_grad(set_to_none=True)


@pytest.mark.parametrize(("kernel", "stride", "height", "width"), DEFORM_CASES)
@pytest.mark.parametrize(("dtype", "form"), PRECISIONS)
def test_gather_in_low_precision_matches_torchvision_in_float32(dtype, form, kernel, stride, height, width):
    # Inputs the low dtype holds exactly, so that both sides sample at the same points: a sample
    # moved across a pixel boundary by rounding its offset has another bilinear gradient.
    inputs = [tensor.to(dtype).float() for tensor in deform_inputs(kernel, stride, height, width)]
    leaves = [tensor.clone().requires_grad_() for tensor in inputs]
    expected = deform_conv2d(*leaves, stride=stride)
    upstream = torch.randn(expected.shape, generator=torch.Generator().manual_seed(0))
    (expected * upstream).sum().backward()
    if form != "autocast":  # a function has no buffers: both cast forms are the same here
        inputs = [tensor.to(dtype) for tensor in inputs]
    low = [tensor.clone().requires_grad_() for tensor in inputs]
    with torch.autocast("cpu", dtype) if form == "autocast" else contextlib.nullcontext():
        out = deform_conv2d_gather(*low, stride=stride)
    (out.float() * upstream).sum().backward()
    assert out.dtype == dtype
    assert relative_error(out, expected.detach()) <= tolerance(dtype)
    for actual, reference, what in zip(low, leaves, ("x", "offset", "weight", "bias")):
        assert norm_error(actual.grad, reference.grad) <= tolerance(dtype), what


@pytest.mark.parametrize("train", [False, True], ids=["running-statistics", "batch-statistics"])
@pytest.mark.parametrize(("dtype", "form"), PRECISIONS)
def test_dtm_in_low_precision_matches_its_reference(dtype, form, train):
    # Outputs against the float32 reference. Gradients against the reference (torchvision's op,
    # which computes in float32) in the same precision: the offset conv rounds the offsets in
    # both alike, while against float32 a sample rounded across a pixel boundary changes them.
    torch.manual_seed(0)
    fast, reference = with_learned_offsets(DTM(16)).train(train), DTM(16, reference=True).train(train)
    reference.load_state_dict(fast.state_dict(), strict=True)
    # The smallest map DTM meets (2 x 2) only with running statistics: batch statistics over
    # two values per channel magnify any rounding, in float32 as well.
    for height, width in [(10, 6), (7, 9)] + ([] if train else [(2, 2)]):
        x = torch.randn(2, height * width, 16)
        upstream = torch.randn(2, height // 2 * (width // 2), 32)
        expected, *_ = copy.deepcopy(reference)(x, height, width)
        outputs, grads = [], []
        for module in (fast, reference):
            low, inputs, context = in_precision(module, x, dtype, form)
            inputs = inputs.clone().requires_grad_()
            with context:
                out, *size = low(inputs, height, width)
            (out.float() * upstream).sum().backward()
            # BatchNorm with batch statistics removes any constant: the conv bias has no gradient.
            grads.append((inputs.grad, parameter_grads(low, skip=("dconv.bias",) if train else ())))
            outputs.append(out)
            module.zero_grad(set_to_none=True)
        assert tuple(size) == (height // 2, width // 2) and outputs[0].dtype == dtype
        assert relative_error(outputs[0], expected.detach()) <= tolerance(dtype), (height, width)
        assert relative_error(outputs[1], expected.detach()) <= tolerance(dtype), (height, width)
        for actual, same_precision in zip(*grads):
            assert norm_error(actual, same_precision.float()) <= tolerance(dtype), (height, width)


def reference_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    fast = with_learned_offsets(create_model("t", num_classes=10, drop_path_rate=0.0))
    reference = create_model("t", num_classes=10, drop_path_rate=0.0, reference=True)
    reference.load_state_dict(fast.state_dict(), strict=True)
    return fast.eval(), reference.eval()


@pytest.mark.parametrize(("dtype", "form"), PRECISIONS)
def test_model_inference_in_low_precision_matches_the_float32_reference_model(dtype, form):
    fast, reference = reference_pair()
    images = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        expected = reference(images)
        outputs = []
        for model in (fast, reference):  # the reference form runs in the same precision as well
            low, inputs, context = in_precision(model, images, dtype, form)
            with context:
                outputs.append(low(inputs))
    assert outputs[0].dtype == outputs[1].dtype == dtype
    for out in outputs:
        assert relative_error(out, expected) <= tolerance(dtype)


@pytest.mark.parametrize("train", [False, True], ids=["running-statistics", "batch-statistics"])
@pytest.mark.parametrize(("dtype", "form"), PRECISIONS)
def test_model_gradients_in_low_precision_are_finite_and_close_to_float32(dtype, form, train):
    # At the offsets training starts from (zero: a plain strided conv). With learned offsets a
    # sample that rounding moves across a pixel boundary changes the gradient (the DTM test above
    # compares those against the reference in the same precision instead).
    torch.manual_seed(0)
    fast = create_model("t", num_classes=10, drop_path_rate=0.0)
    reference = create_model("t", num_classes=10, drop_path_rate=0.0, reference=True)
    reference.load_state_dict(fast.state_dict(), strict=True)
    images = torch.randn(2, 3, 64, 96)
    reference.train(train)(images).square().mean().backward()
    low, inputs, context = in_precision(fast.train(train), images, dtype, form)
    with context:
        out = low(inputs)
    out.float().square().mean().backward()
    grads = parameter_grads(low)
    assert out.dtype == dtype and torch.isfinite(grads).all()
    assert norm_error(grads, parameter_grads(reference)) <= tolerance(dtype, MODEL_GRADIENT_EPSILONS)
    running = [buffer for name, buffer in low.named_buffers() if name.endswith(("running_mean", "running_var"))]
    assert running and all(torch.isfinite(buffer).all() for buffer in running)
