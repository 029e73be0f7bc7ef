"""Zero-cost proxies: what each published score depends on, and the rank combination."""

from __future__ import annotations

import math

import pytest
import torch

from litv2cli.errors import UserError
from litv2cli.models import create_model
from litv2cli.search.proxies import combine_by_rank, naswot_score, parse_proxies, score_model


def tiny_t(alpha: float = 0.5, window: tuple[int, int, int, int] = (0, 0, 2, 1)):
    return lambda: create_model("t", num_classes=3, drop_path_rate=0.0, alpha=alpha, local_ws=window)


@pytest.fixture(scope="module")
def batches():
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(6, 3, 32, 32, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2])) for _ in range(2)]


def test_every_requested_proxy_is_finite_and_repeatable(batches):
    first = score_model(tiny_t(), batches, ("naswot", "snip", "grad_norm", "synflow"))
    second = score_model(tiny_t(), batches, ("naswot", "snip", "grad_norm", "synflow"))
    assert set(first) == {"naswot", "snip", "grad_norm", "synflow"}
    assert all(math.isfinite(v) for v in first.values())
    assert first == second
    assert first["snip"] > 0 and first["grad_norm"] > 0 and first["synflow"] > 0


def test_architectures_get_different_scores(batches):
    narrow = score_model(tiny_t(alpha=0.0), batches, ("snip", "synflow"))
    wide = score_model(tiny_t(alpha=1.0), batches, ("snip", "synflow"))
    assert narrow["snip"] != wide["snip"] and narrow["synflow"] != wide["synflow"]


def test_synflow_ignores_the_data_while_snip_depends_on_it(batches):
    other = [(images.flip(0) * 3.0, labels) for images, labels in batches]
    a = score_model(tiny_t(), batches, ("snip", "synflow"))
    b = score_model(tiny_t(), other, ("snip", "synflow"))
    assert a["synflow"] == b["synflow"]
    assert a["snip"] != b["snip"]


def test_naswot_cannot_tell_identical_images_apart():
    torch.manual_seed(0)
    model = tiny_t()()
    distinct = naswot_score(model, torch.randn(4, 3, 32, 32))
    identical = naswot_score(model, torch.randn(1, 3, 32, 32).repeat(4, 1, 1, 1))
    assert math.isfinite(distinct)
    assert identical == -math.inf  # the code kernel is singular


def test_a_non_finite_score_fails_the_point_instead_of_ranking_it():
    images = torch.randn(1, 3, 32, 32).repeat(4, 1, 1, 1)
    with pytest.raises(FloatingPointError, match="naswot"):
        score_model(tiny_t(), [(images, torch.zeros(4, dtype=torch.long))], ("naswot", "snip"))


def test_rank_combination_is_scale_free_and_shares_ranks_on_ties():
    scores = {
        "a": {"p": 1.0, "q": 1e30},
        "b": {"p": 2.0, "q": 1e10},
        "c": {"p": 3.0, "q": 1e20},
    }
    combined = combine_by_rank(scores)
    # p ranks a<b<c (1, 2, 3), q ranks b<c<a (1, 2, 3): mean ranks a 2, b 1.5, c 2.5 -> scaled by (n - 1).
    assert combined == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.75})
    tied = combine_by_rank({"a": {"p": 1.0, "q": 5.0}, "b": {"p": 1.0, "q": 5.0}})
    assert tied["a"] == tied["b"] == 0.5
    assert combine_by_rank({"only": {"p": 1.0, "q": 2.0}}) == {"only": 1.0}


def test_proxy_list_needs_two_known_names():
    assert parse_proxies("naswot, SNIP") == ("naswot", "snip")
    with pytest.raises(UserError, match="at least two"):
        parse_proxies("naswot")
    with pytest.raises(UserError, match="unknown proxy 'zen'"):
        parse_proxies("naswot,zen")
