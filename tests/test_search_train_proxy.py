"""The training proxy: the shared training loop, reporting to Optuna, stopped by the pruner."""

from __future__ import annotations

import optuna
import pytest

from data_fixtures import make_image_folder
from litv2cli.runs import read_metrics
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
