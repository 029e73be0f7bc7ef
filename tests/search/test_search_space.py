"""The search space: distinct points, de-duplication by head split, and refusal of bad spaces."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
import yaml

from litv2cli.errors import UserError
from litv2cli.models import VARIANTS, create_model
from litv2cli.search.space import (
    DEFAULT_ALPHAS, DEFAULT_WINDOWS, build_space, paper_default_label, parse_alphas, parse_windows,
)

REPO = Path(__file__).resolve().parents[2]


def test_alpha_range_includes_its_stop_without_float_noise():
    assert parse_alphas("0:1:0.1") == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert parse_alphas("0.9,0.5,0.5") == (0.5, 0.9)


def test_full_s_grid_has_23_distinct_points_because_window_one_ignores_alpha():
    space = build_space("s", VARIANTS["s"].num_heads)
    points = space.points()
    assert len(space.alphas) * len(space.window_options()) == 33
    # 12 heads: every alpha step changes int(12 * alpha) for s = 2 and s = 4; s = 1 is global.
    assert len(points) == 23
    global_points = [p for p in points if p.window == (0, 0, 1, 1)]
    assert len(global_points) == 1 and len(global_points[0].alphas) == 11


def test_alphas_with_the_same_head_split_merge_into_one_point_with_the_alpha_nearest_the_paper():
    space = build_space("t", VARIANTS["t"].num_heads, alphas="0:1:0.1", windows="2", resolution=(64, 64))
    points = space.points()
    # t has 4 heads in stage 3: int(4 * alpha) takes the values 0..4.
    assert [p.lofi_heads for p in points] == [(0, None), (1, None), (2, None), (3, None), (4, None)]
    zero_lofi = points[0]
    assert zero_lofi.alphas == (0.0, 0.1, 0.2) and zero_lofi.alpha == 0.2
    assert next(p for p in points if 0.9 in p.alphas).alpha == 0.9


def test_merged_points_build_identical_networks_and_distinct_points_do_not():
    space = build_space("t", VARIANTS["t"].num_heads, alphas="0.5,0.6,0.75", windows="2", resolution=(64, 64))
    points = space.points()
    assert len(points) == 2  # 0.5 and 0.6 give 2 Lo-Fi heads of 4, 0.75 gives 3

    def shapes(alpha: float) -> dict[str, tuple[int, ...]]:
        model = create_model("t", num_classes=10, alpha=alpha, local_ws=(0, 0, 2, 1))
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    assert shapes(0.5) == shapes(0.6)
    assert shapes(0.5) != shapes(0.75)
    torch.manual_seed(0)
    image = torch.randn(1, 3, 64, 64)
    outputs = []
    for alpha in (0.5, 0.6):
        torch.manual_seed(1)
        model = create_model("t", num_classes=10, alpha=alpha, local_ws=(0, 0, 2, 1)).eval()
        outputs.append(model(image))
    torch.testing.assert_close(outputs[0], outputs[1])


def test_per_stage_window_searches_stage_four_and_counts_its_heads():
    space = build_space("t", VARIANTS["t"].num_heads, alphas="0.5", windows="1,2", per_stage_window=True,
                        resolution=(64, 64))
    assert sorted(p.window for p in space.points()) == [(0, 0, 1, 1), (0, 0, 1, 2), (0, 0, 2, 1), (0, 0, 2, 2)]
    assert next(p for p in space.points() if p.window == (0, 0, 2, 2)).lofi_heads == (2, 4)


def test_paper_default_point_is_found_even_when_0_9_is_not_requested():
    heads = VARIANTS["s"].num_heads
    points = build_space("s", heads, alphas="0.85,0.5", windows="2").points()  # int(12 * 0.85) = 10 = int(12 * 0.9)
    assert paper_default_label(points, heads) == "a0.85-w2.1"
    assert paper_default_label(build_space("s", heads, alphas="0.5", windows="2").points(), heads) is None


@pytest.mark.parametrize("alphas, message", [
    ("1.5", "outside [0, 1]"),
    ("-0.1,0.5", "outside [0, 1]"),
    ("0:2:0.5", "outside [0, 1]"),
    ("0.8:0.2:0.1", "empty grid"),
    ("0:1:0", "step must be positive"),
    ("0:1", "start:stop:step"),
    ("abc", "start:stop:step"),
    ("", "empty grid"),
])
def test_bad_alphas_are_refused_with_a_clear_message(alphas, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_alphas(alphas)


@pytest.mark.parametrize("windows, message", [
    ("0", "must be >= 1"), ("2,-1", "must be >= 1"), ("", "empty grid"), ("two", "comma-separated integers"),
])
def test_bad_windows_are_refused_with_a_clear_message(windows, message):
    with pytest.raises(UserError, match=message):
        parse_windows(windows)


def test_a_window_larger_than_the_stage_map_is_refused():
    with pytest.raises(UserError, match="does not fit stage 3, whose feature map is 2x2"):
        build_space("t", VARIANTS["t"].num_heads, windows="4", resolution=(32, 32))


def test_shipped_default_space_file_matches_the_defaults():
    spec = yaml.safe_load((REPO / "search" / "default-space.yaml").read_text())
    assert spec["alpha"] == DEFAULT_ALPHAS and spec["window"] == DEFAULT_WINDOWS
    from litv2cli.cli.search import search

    defaults = {name: p.default for name, p in inspect.signature(search).parameters.items()}
    for key in ("alpha", "window", "per_stage_window", "batch_size", "mode", "objective", "proxy", "zero_cost",
                "sampler", "pick"):
        assert spec[key] == defaults[key], key
    assert str(spec["res"]) == defaults["res"]
