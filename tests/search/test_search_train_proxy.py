"""The training proxy: the shared training loop, reporting to Optuna, stopped by the pruner."""

from __future__ import annotations

import optuna
import pytest
import torch

from tests.helpers.data_fixtures import make_image_folder
from litv2cli.models.litv2 import LITv2
from litv2cli.train.spec import read_metrics
from litv2cli.search.space import SearchSpace
from litv2cli.search.train_proxy import TrainBudget, budget_recipe, train_point

POINT = SearchSpace(variant="t", num_heads=(1, 2, 4, 8), alphas=(0.5,), windows=(2,), per_stage_window=False,
                    resolution=(32, 32)).points()[0]

optuna.logging.set_verbosity(optuna.logging.ERROR)


class PruneAtFirstReport(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return len(trial.intermediate_values) >= 1


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("proxy") / "images", num_classes=3, per_class=8, size=32)


def test_budget_recipe_keeps_the_point_and_drops_long_run_regularisation():
    recipe = budget_recipe("t", POINT, TrainBudget(data="demo", epochs=3, resolution=(32, 32), batch_size=8, lr=2e-3))
    assert recipe.alpha == POINT.alpha and recipe.window == POINT.window and recipe.epochs == 3
    assert recipe.mixup == 0 and recipe.cutmix == 0 and recipe.auto_augment is None and recipe.reprob == 0
    assert recipe.scaled_lrs(8)[0] == pytest.approx(2e-3)  # the LR is used as given at the proxy's batch


def test_validation_top1_is_reported_after_every_epoch(images, tmp_path):
    study = optuna.create_study(direction="maximize")
    budget = TrainBudget(data=str(images), epochs=2, resolution=(32, 32), batch_size=4, lr=2e-3)
    trial = study.ask()
    top1 = train_point(trial, "t", POINT, budget, tmp_path / "run")
    study.tell(trial, top1)
    reported = study.trials[0].intermediate_values
    assert len(reported) == 2 and 0.0 <= top1 <= 100.0 and list(reported.values())[-1] == top1
    assert not list((tmp_path / "run").glob("*.safetensors"))  # a proxy run keeps its metrics, not weights


def test_pruner_stops_a_point_after_its_first_evaluation(images, tmp_path):
    study = optuna.create_study(direction="maximize", pruner=PruneAtFirstReport())
    budget = TrainBudget(data=str(images), epochs=3, resolution=(32, 32), batch_size=4, lr=2e-3)
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        train_point(trial, "t", POINT, budget, tmp_path / "run")
    evaluations = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "top1" in r]
    assert len(evaluations) == 1 and evaluations[0]["epoch"] == 1  # epochs 2 and 3 never ran
    assert trial.user_attrs["pruned_at_step"] == evaluations[0]["step"]


@pytest.fixture()
def fresh_accelerate_state():
    """accelerate keeps one precision per process: start and leave this test's own."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    def reset() -> None:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()

    reset()
    yield
    reset()


def test_a_bf16_budget_trains_and_validates_every_step_under_bf16_autocast(images, tmp_path, monkeypatch,
                                                                          fresh_accelerate_state):
    seen = []
    forward = LITv2.forward

    def recording_forward(model, x):
        seen.append((model.training, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(model, x)

    monkeypatch.setattr(LITv2, "forward", recording_forward)
    budget = TrainBudget(data=str(images), epochs=1, resolution=(32, 32), batch_size=4, lr=2e-3, max_steps=2,
                         precision="bf16")
    train_point(optuna.create_study(direction="maximize").ask(), "t", POINT, budget, tmp_path / "run")
    assert {training for training, _, _ in seen} == {True, False}  # training steps and validation
    assert all(enabled and dtype == torch.bfloat16 for _, enabled, dtype in seen)
