"""What loading weights reports: each key of the model or the checkpoint in exactly one list."""

from __future__ import annotations

import pytest

from litv2cli.errors import UserError
from litv2cli.models import create_model
from litv2cli.weights.reading import load_into


@pytest.fixture(scope="module")
def ten_class_weights() -> dict:
    return create_model("t", num_classes=10).state_dict()


def test_a_new_class_count_reinitialises_the_head_and_loads_everything_else(ten_class_weights):
    model = create_model("t", num_classes=7)
    report = load_into(model, ten_class_weights, source="ckpt", allow_new_head=True)
    assert report.reinitialised == ["head.weight", "head.bias"] and report.ignored == []
    assert set(report.loaded) == set(ten_class_weights) - {"head.weight", "head.bias"}
    assert not set(report.loaded) & set(report.reinitialised)
    assert report.summary() == f"loaded {len(report.loaded)} tensors; re-initialised head.weight, head.bias"
    assert model.head.weight.shape[0] == 7


def test_the_same_class_count_loads_every_key(ten_class_weights):
    report = load_into(create_model("t", num_classes=10), ten_class_weights, source="ckpt", allow_new_head=True)
    assert sorted(report.loaded) == sorted(ten_class_weights) and not report.reinitialised and not report.ignored


def test_a_checkpoint_head_the_model_does_not_have_is_ignored(ten_class_weights):
    model = create_model("t", num_classes=7)
    model.head.bias = None  # a head without bias: the checkpoint's has nowhere to go
    report = load_into(model, ten_class_weights, source="ckpt", allow_new_head=True)
    assert report.reinitialised == ["head.weight"] and report.ignored == ["head.bias"]
    assert not {"head.weight", "head.bias"} & set(report.loaded)


def test_a_new_head_without_permission_is_refused(ten_class_weights):
    with pytest.raises(UserError, match="--num-classes"):
        load_into(create_model("t", num_classes=7), ten_class_weights, source="ckpt", allow_new_head=False)
