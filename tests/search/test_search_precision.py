"""`litv2 search --precision`: every point is timed in the precision training runs in, the
study and the recipe record it, and a study is never continued in another precision."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from litv2cli.cli.main import main
from litv2cli.recipe import load_recipe
from litv2cli.precision import resolve_precision
from litv2cli.search.objectives import parse_objectives
from litv2cli.search.runner import SearchConfig, with_resolved_precision
from litv2cli.search.study import open_storage
from litv2cli.search.train_proxy import TrainBudget

FAST = ["--variant", "t", "--res", "32", "--batch-size", "2", "--warmup", "1", "--repeats", "3"]
STUDY = "litv2-t-32x32-b2-infer"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("requested, expected", [("auto", "no"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_the_training_proxy_gets_the_precision_the_points_are_timed_in(requested, expected):
    assert resolve_precision("auto", "cpu") == "no"  # what `litv2 pretrain --precision auto` uses on a CPU
    config = SearchConfig(objectives=parse_objectives("throughput,top1"), device="cpu", precision=requested,
                          proxy="train", data="demo", train_budget=TrainBudget(data="demo"))
    resolved = with_resolved_precision(config)
    assert resolved.precision == expected and resolved.train_budget.precision == expected


@pytest.mark.parametrize("precision, dtype", [("bf16", "bfloat16"), ("fp16", "float16")])
def test_every_point_is_timed_in_the_chosen_precision_and_another_precision_is_refused(precision, dtype, tmp_path,
                                                                                       capsys):
    out, recipes = tmp_path / "out", tmp_path / "recipes"
    args = ["search", *FAST, "--objective", "throughput,latency,memory", "--alpha", "0.5,1", "--window", "2",
            "--output", str(out), "--recipes-dir", str(recipes)]
    assert main([*args, "--precision", precision]) == 0, capsys.readouterr().err
    compute = f"float32, autocast {dtype}"
    assert f"precision {precision} ({compute})" in capsys.readouterr().out
    summary = json.loads((out / STUDY / "search.json").read_text())
    assert len(summary["points"]) == 2
    assert all(p["dtype"] == compute and compute in p["protocol"] for p in summary["points"])
    measurement = load_recipe(recipes / "litv2-t.yaml").provenance["measurement"]
    assert measurement["precision"] == precision and measurement["dtype"] == compute
    assert measurement["protocol"].startswith(f"infer, batch 2, 32x32, {compute}")

    # The same study in float32 (the default on a CPU): refused in one line, nothing measured.
    assert main(args) == 2
    printed = capsys.readouterr()
    err = printed.err.strip()
    assert err.startswith("litv2: error:") and len(err.splitlines()) == 1
    assert f"different precision ('{precision}', now 'no')" in err and "trial " not in printed.out
    study = optuna.load_study(study_name=STUDY, storage=open_storage(f"sqlite:///{out / 'search.db'}"))
    assert len(study.trials) == 2 and all(t.state == TrialState.COMPLETE for t in study.trials)
