"""The shared rules of defaults.py and files.py: one statement each, checked here once."""

import pytest

from litv2cli.defaults import (PAPER_ALPHA, PAPER_WINDOW, epoch_seed, fits_model, read_resolution,
                               variant_key)
from litv2cli.files import write_text_atomic


def test_paper_values_are_the_papers():
    assert PAPER_ALPHA == 0.9 and PAPER_WINDOW == (0, 0, 2, 1)


@pytest.mark.parametrize(("value", "expected"), [(224, (224, 224)), ("224", (224, 224)), ("800x1280", (800, 1280)),
                                                 ("384 X 512", (384, 512)), ([384, 512], (384, 512))])
def test_read_resolution_accepts_every_written_form(value, expected):
    assert read_resolution(value) == expected


@pytest.mark.parametrize("value", ["abc", "1x2x3", "x224", True, "", [1, 2, 3]])
def test_read_resolution_refuses_what_is_not_a_size(value):
    with pytest.raises(ValueError):
        read_resolution(value)


def test_fits_model_wants_positive_multiples_of_32():
    assert fits_model(224, 224) and fits_model(800, 1280)
    assert not fits_model(225, 224) and not fits_model(0, 224) and not fits_model(-32, 224)


def test_variant_key_strips_every_spelling():
    assert {variant_key(name) for name in ("s", "S", "litv2_s", "LITv2-S", "litv2-s")} == {"s"}


def test_epoch_seeds_differ_across_epochs_and_seeds():
    seeds = {epoch_seed(seed, epoch) for seed in range(5) for epoch in range(300)}
    assert len(seeds) == 5 * 300


def test_write_text_atomic_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "run.json"
    write_text_atomic(target, "first")
    write_text_atomic(target, "second")
    assert target.read_text() == "second"
    assert [path.name for path in tmp_path.iterdir()] == ["run.json"]
