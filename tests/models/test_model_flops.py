"""Params and FLOPs (MACs) match what the official counter reports for the paper's table."""

import pytest
import torch

from litv2cli.models import VARIANTS, count_flops, count_params, create_model, describe
from litv2cli.models.flops import hilo_flops


def meta_model(variant, **kwargs):
    with torch.device("meta"):  # sizes only: no memory, no init time
        return create_model(variant, **kwargs)


@pytest.mark.parametrize(("variant", "resolution", "params_m", "gflops"), [
    ("s", 224, 27.84, 3.734),
    ("m", 224, 48.83, 7.479),
    ("b", 224, 86.52, 13.194),
    ("b", 384, 86.52, 39.709),
])
def test_params_and_flops_match_the_paper_table(variant, resolution, params_m, gflops):
    model = meta_model(variant)
    assert count_params(model) / 1e6 == pytest.approx(params_m, abs=0.01)
    assert count_flops(model, (resolution, resolution)) / 1e9 == pytest.approx(gflops, abs=0.001)


@pytest.mark.parametrize(("alpha", "gflops"), [
    (0.0, 3.965), (0.2, 3.881), (0.4, 3.815), (0.5, 3.769), (0.7, 3.742), (0.9, 3.734), (1.0, 3.746),
])
def test_litv2_s_flops_by_alpha_match_the_official_counter(alpha, gflops):
    assert count_flops(meta_model("s", alpha=alpha), (224, 224)) / 1e9 == pytest.approx(gflops, abs=0.001)


def test_flops_count_the_padded_map():
    # 14x14 with window 4 runs as 16x16, and is counted so.
    assert hilo_flops(384, 64, 320, 4, 14, 14) == hilo_flops(384, 64, 320, 4, 16, 16)
    assert hilo_flops(384, 64, 320, 4, 14, 14) > hilo_flops(384, 64, 320, 2, 14, 14)


def test_counting_needs_no_weights_and_ignores_the_device():
    real = create_model("t")
    assert count_flops(real, (64, 96)) == count_flops(meta_model("t"), (64, 96))
    assert count_params(real) == count_params(meta_model("t"))


def test_non_square_flops_lie_between_the_squares_around_them():
    model = meta_model("s")
    small, wide, large = (count_flops(model, r) for r in [(256, 256), (256, 320), (320, 320)])
    assert small < wide < large


def test_describe_reports_stage_layout_of_litv2_s():
    report = describe("s", (224, 224), 0.9, (0, 0, 2, 1))
    assert report["params_m"] == pytest.approx(27.84, abs=0.01)
    assert report["gflops"] == pytest.approx(3.734, abs=0.001)
    assert [s["resolution"] for s in report["stages"]] == [[56, 56], [28, 28], [14, 14], [7, 7]]
    assert [s["channels"] for s in report["stages"]] == [96, 192, 384, 768]
    assert [(s["hifi_heads"], s["lofi_heads"]) for s in report["stages"]] == [(0, 0), (0, 0), (2, 10), (0, 24)]
    assert not describe("t")["from_paper"] and all(describe(v)["from_paper"] for v in VARIANTS if v != "t")
