"""HiLo: the fast module equals the paper-style reference, window 1 is plain attention, branches are what they claim."""

import contextlib
import itertools
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from torch import nn

from litv2cli.models import ATTENTIONS, HiLo, HiLoReference, native
from litv2cli.models.hilo import pad_to_window, split_heads, uses_bands

# Multiples of the window and sizes that need padding; the last one is wide enough that every
# window > 1 takes the window-partition path instead of masked bands (`uses_bands`).
MAPS = [(8, 8), (7, 9), (5, 3), (14, 14), (3, 70)]
WINDOWS = [1, 2, 3, 4]
ALPHAS = [0.0, 0.3, 0.5, 0.9, 1.0]


@contextlib.contextmanager
def inference_on_sdpa():
    with mock.patch.dict(os.environ, {"LITV2_NATIVE": "0"}), torch.inference_mode():
        yield


# With autograd the output projections are concatenated; without, they share one buffer, and
# inference runs on the compiled kernels (`native`) where a compiler exists, else on SDPA.
GRAD_MODES = {"autograd": contextlib.nullcontext, "inference": torch.inference_mode,
              "inference on SDPA": inference_on_sdpa}
needs_compiler = pytest.mark.skipif(not native.find_compiler(), reason="no C++ compiler for the native kernels")


def fast_and_reference(window: int, alpha: float, qkv_bias: bool = True, dim: int = 96, heads: int = 6):
    torch.manual_seed(window)
    fast = HiLo(dim, heads, window, alpha, qkv_bias=qkv_bias)
    reference = HiLoReference(dim, heads, window, alpha, qkv_bias=qkv_bias)
    reference.load_state_dict(fast.state_dict(), strict=True)
    return fast, reference


def test_test_maps_cover_both_hifi_paths():
    for window in WINDOWS[1:]:
        paths = {uses_bands(window, window * -(-width // window)) for _, width in MAPS}
        assert paths == {True, False}, window


@pytest.mark.parametrize("mode", GRAD_MODES)
@pytest.mark.parametrize(("window", "alpha"), list(itertools.product(WINDOWS, ALPHAS)))
def test_fast_hilo_matches_reference_on_padded_and_unpadded_maps(window, alpha, mode):
    fast, reference = fast_and_reference(window, alpha)
    for height, width in MAPS:
        x = torch.randn(2, height * width, 96)
        with GRAD_MODES[mode]():
            torch.testing.assert_close(fast(x, height, width), reference(x, height, width), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("window", "alpha"), [(1, 0.5), (2, 0.5), (2, 0.0), (3, 1.0)])
def test_fast_hilo_matches_reference_without_qkv_bias(window, alpha):
    fast, reference = fast_and_reference(window, alpha, qkv_bias=False)
    for height, width in MAPS:
        x = torch.randn(2, height * width, 96)
        torch.testing.assert_close(fast(x, height, width), reference(x, height, width), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("window", "alpha"), [(1, 0.9), (2, 0.9), (2, 0.5), (4, 0.3)])
def test_fast_hilo_gradients_match_reference(window, alpha):
    # The training step: the same gradients for the input and for every weight.
    fast, reference = fast_and_reference(window, alpha)
    for height, width in [(7, 9), (3, 70)]:
        x = torch.randn(2, height * width, 96)
        upstream = torch.randn(2, height * width, 96)
        grads = []
        for module in (fast, reference):
            module.zero_grad(set_to_none=True)
            inputs = x.clone().requires_grad_(True)
            (module(inputs, height, width) * upstream).sum().backward()
            grads.append([inputs.grad] + [param.grad for param in module.parameters()])
        for fast_grad, reference_grad in zip(*grads):
            torch.testing.assert_close(fast_grad, reference_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", GRAD_MODES)
def test_fast_hilo_matches_reference_at_litv2_s_stage_3_width(mode):
    # The benchmarked layer (dim 384, 12 heads, s = 2, alpha 0.9) on its 14 x 14 map and a padded one.
    fast, reference = fast_and_reference(2, 0.9, dim=384, heads=12)
    for height, width in [(14, 14), (13, 15)]:
        x = torch.randn(4, height * width, 384)
        with GRAD_MODES[mode]():
            torch.testing.assert_close(fast(x, height, width), reference(x, height, width), rtol=0, atol=1e-5)


def test_window_one_equals_plain_attention():
    torch.manual_seed(0)
    hilo = HiLo(64, 4, window_size=1, alpha=0.3)  # window 1 overrides alpha: all heads global
    assert (hilo.hifi_heads, hilo.lofi_heads) == (0, 4)
    mha = nn.MultiheadAttention(64, 4, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([hilo.l_q.weight, hilo.l_kv.weight]))  # q, then k, then v
        mha.in_proj_bias.copy_(torch.cat([hilo.l_q.bias, hilo.l_kv.bias]))
        mha.out_proj.weight.copy_(hilo.l_proj.weight)
        mha.out_proj.bias.copy_(hilo.l_proj.bias)
    x = torch.randn(2, 6 * 5, 64)
    expected, _ = mha(x, x, x, need_weights=False)
    torch.testing.assert_close(hilo(x, 6, 5), expected, rtol=0, atol=1e-5)


def test_head_split_follows_the_official_rule():
    assert split_heads(12, 2, 0.9) == (2, 10)  # LITv2-S stage 3
    assert split_heads(24, 1, 0.9) == (0, 24)  # LITv2-S stage 4: global attention
    assert split_heads(12, 2, 0.0) == (12, 0)
    assert split_heads(12, 2, 1.0) == (0, 12)
    assert split_heads(12, 2, 0.7) == (4, 8)  # int(8.4) floors
    with pytest.raises(ValueError):
        split_heads(12, 0, 0.5)


@pytest.mark.parametrize(("alpha", "present", "absent"), [
    (0.0, {"h_qkv", "h_proj"}, {"l_q", "l_kv", "l_proj"}),
    (1.0, {"l_q", "l_kv", "l_proj"}, {"h_qkv", "h_proj"}),
    (0.5, {"h_qkv", "h_proj", "l_q", "l_kv", "l_proj"}, set()),
])
def test_a_branch_without_heads_has_no_parameters(alpha, present, absent):
    layers = {key.split(".")[0] for key in HiLo(64, 4, 2, alpha).state_dict()}
    assert layers == present and not layers & absent
    assert all(t.numel() > 0 for t in HiLo(64, 4, 2, alpha).state_dict().values())


def test_hifi_heads_only_see_their_own_window():
    torch.manual_seed(0)
    hilo = HiLo(32, 2, window_size=2, alpha=0.0).eval()
    x = torch.randn(1, 4 * 4, 32)
    before = hilo(x, 4, 4).view(4, 4, 32)
    x.view(4, 4, 32)[0, 0] += 5.0  # perturb one token of the top-left window
    after = hilo(x, 4, 4).view(4, 4, 32)
    changed = (after - before).abs().amax(dim=-1) > 1e-6
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:2, :2] = True
    assert torch.equal(changed, expected)


def test_lofi_attends_to_average_pooled_keys():
    torch.manual_seed(0)
    hilo = HiLo(32, 2, window_size=2, alpha=1.0).eval()
    x = torch.randn(1, 4 * 4, 32)
    # Permuting tokens inside a window leaves the pooled keys/values unchanged, so Lo-Fi output
    # at a fixed query position only moves because that query's own token moved.
    swapped = x.view(4, 4, 32).clone()
    swapped[2, 2], swapped[3, 3] = x.view(4, 4, 32)[3, 3], x.view(4, 4, 32)[2, 2]
    out, out_swapped = hilo(x, 4, 4).view(4, 4, 32), hilo(swapped.view(1, 16, 32), 4, 4).view(4, 4, 32)
    torch.testing.assert_close(out_swapped[3, 3], out[2, 2], rtol=0, atol=1e-6)
    torch.testing.assert_close(out_swapped[:2], out[:2], rtol=0, atol=1e-6)


def test_registry_holds_interchangeable_attentions():
    assert {"hilo", "hilo_reference"} <= set(ATTENTIONS)
    keys = {name: set(cls(96, 6, 2, 0.5).state_dict()) for name, cls in ATTENTIONS.items()
            if name in ("hilo", "hilo_reference")}
    assert keys["hilo"] == keys["hilo_reference"]


@needs_compiler
@pytest.mark.parametrize(("window", "alpha"), [(1, 0.5), (2, 0.0), (2, 0.5), (2, 1.0), (3, 0.5), (4, 0.3)])
def test_inference_runs_on_the_compiled_kernels_where_a_compiler_exists(window, alpha):
    fast, reference = fast_and_reference(window, alpha)
    x = torch.randn(2, 7 * 9, 96)
    with torch.inference_mode():
        padded = pad_to_window(x.reshape(2, 7, 9, 96), window)
        assert native.applies(padded)
        kernels_out = fast.forward_native(padded)
        assert kernels_out is not None, native.status()
        expected = reference(x, 7, 9)
    assert native.status().startswith("on")
    torch.testing.assert_close(kernels_out[:, :7, :9].reshape(2, 63, 96), expected, rtol=0, atol=1e-5)


def test_training_export_and_other_dtypes_keep_to_the_pytorch_path():
    x = torch.randn(1, 4, 4, 96)
    with torch.inference_mode():
        assert not native.applies(x.double())
        assert not native.applies(x.to(torch.bfloat16))
    assert not native.applies(x)  # autograd on


def test_maps_with_more_keys_than_the_kernels_hold_take_sdpa():
    fast, reference = fast_and_reference(1, 0.5)  # window 1: every token is a key
    side = int(native.MAX_KEYS ** 0.5) + 1
    x = torch.randn(1, side * side, 96)
    with torch.inference_mode():
        assert fast.forward_native(x.reshape(1, side, side, 96)) is None
        torch.testing.assert_close(fast(x, side, side), reference(x, side, side), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("compiler", "cache_is_a_file", "says"), [
    ("/nonexistent/g++", False, "cannot run the C++ compiler"),
    ("false", False, "failed to build the kernels"),
    (None, True, "cannot build the kernels in"),
])
def test_without_a_working_compiler_inference_falls_back_and_says_why(compiler, cache_is_a_file, says, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setattr(native, "_libraries", {})
    monkeypatch.setattr(native, "_failure", None)
    cache = tmp_path / "cache"
    if cache_is_a_file:
        cache.write_text("not a directory")
    monkeypatch.setenv("LITV2_CACHE_DIR", str(cache))  # nothing cached from a working compiler
    if compiler:
        monkeypatch.setenv("CXX", compiler)
    elif not native.find_compiler():
        pytest.skip("no C++ compiler for the native kernels")
    fast, reference = fast_and_reference(2, 0.5)
    x = torch.randn(2, 7 * 9, 96)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x, 7, 9), reference(x, 7, 9), rtol=0, atol=1e-5)
    assert native.status().startswith("off") and says in native.status()
    assert not list(tmp_path.rglob("*.so")) and not list(tmp_path.rglob("*.part"))


@needs_compiler
def test_a_damaged_cached_kernel_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LITV2_CACHE_DIR", str(tmp_path))
    # Built by another process, as a cache is: this one must not have the library loaded.
    subprocess.run([sys.executable, "-c", "from litv2cli.models import native; assert native.hifi_kernel(2, 16)"],
                   check=True, env=os.environ.copy())
    (built,) = tmp_path.rglob("*.so")
    built.write_bytes(b"not a shared library")
    monkeypatch.setattr(native, "_libraries", {})
    fast, reference = fast_and_reference(2, 0.0)
    x = torch.randn(2, 8 * 8, 96)
    with torch.inference_mode():
        assert fast.forward_native(pad_to_window(x.reshape(2, 8, 8, 96), 2)) is not None
        torch.testing.assert_close(fast(x, 8, 8), reference(x, 8, 8), rtol=0, atol=1e-5)
    assert built.read_bytes().startswith(b"\x7fELF")


def test_the_kernels_link_the_openmp_runtime_pytorch_uses_not_another_packages():
    import sklearn.utils._openmp_helpers  # noqa: F401  scikit-learn's wheels load their own libgomp

    bundled = sorted((Path(torch.__file__).parent / "lib").glob("libgomp*.so*"))
    if not bundled:
        pytest.skip("this PyTorch build does not bundle libgomp")
    loaded = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "gomp" in line}
    assert len(loaded) > 1, "the test needs a second OpenMP runtime in the process"
    assert native._openmp_runtime() == bundled[0]
