"""Evaluation reports the loss it measured (cross-entropy, as training's evaluation does) and no
loss when it measured none."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import Dataset

from litv2cli.train.evaluate import evaluate


class Points(Dataset):
    def __init__(self, count: int = 11) -> None:
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(count, 4, generator=generator)
        self.labels = torch.randint(0, 3, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.inputs[index], int(self.labels[index])


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    return Accelerator(cpu=True), nn.Linear(4, 3), Points()


def test_the_loss_is_the_mean_cross_entropy_over_every_image(setup):
    accelerator, model, points = setup
    result = evaluate(accelerator, model, points, batch_size=4, workers=0,
                      criterion=nn.CrossEntropyLoss(reduction="sum"))
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(points.inputs), points.labels).item()
    assert result["count"] == 11 and result["loss"] == pytest.approx(expected, rel=1e-6)


def test_no_criterion_means_no_loss_key_rather_than_a_zero(setup):
    accelerator, model, points = setup
    result = evaluate(accelerator, model, points, batch_size=4, workers=0)
    assert "loss" not in result and result["count"] == 11
