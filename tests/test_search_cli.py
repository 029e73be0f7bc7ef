"""`litv2 search` end to end on the tiny `t` variant: recipes, resumption, two workers, bad input.

Kept small for 2 CPU cores: 32x32 inputs, batch 2, a handful of timed steps, 2-6 points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from data_fixtures import make_image_folder
from litv2cli.cli.main import main
from litv2cli.config import load_recipe
from litv2cli.search.study import DUPLICATE_OF, open_storage

REPO = Path(__file__).resolve().parent.parent
FAST = ["--variant", "t", "--res", "32", "--batch-size", "2", "--warmup", "1", "--repeats", "3"]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on shared cores, OpenMP spinning with more threads than idle cores
    makes tiny steps orders of magnitude slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def complete_points(db: Path, study: str) -> list[str]:
    loaded = optuna.load_study(study_name=study, storage=open_storage(f"sqlite:///{db}"))
    return sorted(t.params["point"] for t in loaded.trials if t.state == TrialState.COMPLETE)


def test_zero_cost_search_writes_a_recipe_pretrain_accepts_and_rerun_continues(tmp_path, capsys):
    out, recipes = tmp_path / "out", tmp_path / "recipes"
    args = ["search", *FAST, "--alpha", "0,0.5,1", "--window", "1,2", "--data", "demo", "--proxy-batches", "1",
            "--proxy-batch-size", "4", "--zero-cost", "naswot,snip,synflow", "--output", str(out),
            "--recipes-dir", str(recipes)]
    assert main(args) == 0, capsys.readouterr().err
    recipe = load_recipe(recipes / "litv2-t.yaml")
    summary = json.loads((out / "litv2-t" / "search.json").read_text())
    chosen = summary["chosen"]
    assert recipe.variant == "t" and recipe.alpha == chosen["alpha"] and list(recipe.window) == chosen["window"]
    provenance = recipe.provenance
    assert provenance["pick"] == "knee" and provenance["study"] == "litv2-t-32x32-b2-infer-zero-cost"
    assert provenance["measurement"]["throughput_images_per_s"] > 0
    assert provenance["measurement"]["throughput_spread_iqr_over_median"] >= 0
    assert provenance["measurement"]["device"].startswith("cpu") and provenance["litv2cli_version"]
    assert set(provenance["proxy"]["scores"]) == {"naswot", "snip", "synflow"}
    assert provenance["storage"].startswith("sqlite:///") and provenance["date"]
    # 3 alphas x window 2 are 3 networks; with window 1 all alphas are one: 4 points.
    assert summary["distinct_points"] == 4 and len(summary["points"]) == 4
    assert chosen["label"] in [r["label"] for r in summary["front"]]
    assert (out / "litv2-t" / "pareto.png").stat().st_size > 0
    assert (out / "litv2-t" / "front.csv").read_text().count("\n") == len(summary["front"]) + 1
    table = capsys.readouterr().out
    assert "Pareto front" in table and "not an accuracy" in table

    study = "litv2-t-32x32-b2-infer-zero-cost"
    before = complete_points(out / "search.db", study)
    trials_before = len(optuna.load_study(study_name=study, storage=open_storage(f"sqlite:///{out / 'search.db'}")).trials)
    assert main(args) == 0
    after = optuna.load_study(study_name=study, storage=open_storage(f"sqlite:///{out / 'search.db'}"))
    assert len(after.trials) == trials_before == 4 and complete_points(out / "search.db", study) == before
    assert "trial " not in capsys.readouterr().out  # nothing was measured again


def test_train_proxy_search_on_generated_data_writes_a_recipe(tmp_path, capsys):
    data = make_image_folder(tmp_path / "images", num_classes=3, per_class=8, size=32)
    out, recipes = tmp_path / "out", tmp_path / "recipes"
    args = ["search", *FAST, "--alpha", "0,1", "--window", "2", "--proxy", "train", "--data", str(data),
            "--train-res", "32", "--train-epochs", "2", "--train-batch-size", "4", "--train-lr", "2e-3",
            "--pruner", "successive-halving", "--pick", "max-top1", "--output", str(out), "--recipes-dir",
            str(recipes)]
    assert main(args) == 0, capsys.readouterr().err
    recipe = load_recipe(recipes / "litv2-t.yaml")
    assert recipe.provenance["proxy"]["kind"] == "train" and recipe.provenance["pick"] == "max-top1"
    train_study = optuna.load_study(study_name="litv2-t-32x32-b2-infer-train-train",
                                    storage=open_storage(f"sqlite:///{out / 'search.db'}"))
    finished = [t for t in train_study.trials if DUPLICATE_OF not in t.user_attrs]
    assert sorted(t.params["point"] for t in finished) == ["a0-w2.1", "a1-w2.1"]
    for trial in finished:
        assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert len(trial.intermediate_values) >= 1  # val top-1 reported after each epoch
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    assert complete and all(0.0 <= t.value <= 100.0 for t in complete)
    best = max(complete, key=lambda t: t.value)
    summary = json.loads((out / "litv2-t" / "search.json").read_text())
    assert summary["chosen"]["top1"] == pytest.approx(best.value)


@pytest.mark.parametrize("flags, message", [
    (["--alpha", "1.5"], "outside [0, 1]"),
    (["--alpha", "-0.5"], "outside [0, 1]"),
    (["--window", "0"], "must be >= 1"),
    (["--window", "2,0"], "must be >= 1"),
    (["--alpha", "0.9:0.1:0.1"], "empty grid"),
    (["--window", ","], "empty grid"),
    (["--objective", "throughput,top1"], "needs --data"),
    (["--objective", "speed"], "unknown objective"),
    (["--pick", "max-top1", "--objective", "throughput"], "needs top1"),
    (["--storage", "nonsense"], "storage URL"),
    (["--window", "4", "--res", "32"], "does not fit stage 3"),
])
def test_bad_input_is_one_line_and_exit_code_2(flags, message, tmp_path, capsys):
    args = ["search", "--variant", "t", "--objective", "throughput", "--res", "64", "--output", str(tmp_path)]
    assert main([*args, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("litv2: error:") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "search.db").exists() or flags[0] == "--storage"


@pytest.mark.slow
def test_two_search_processes_on_one_sqlite_study_complete_the_grid_once(tmp_path):
    out = tmp_path / "out"
    fast = [*FAST[:2], "--res", "64", *FAST[4:]]  # stage 4 is 2x2 at 64, so window 2 fits every HiLo stage
    args = [sys.executable, "-m", "litv2cli.cli.main", "search", *fast, "--objective", "throughput,params",
            "--alpha", "0:1:0.25", "--window", "1,2", "--per-stage-window", "--output", str(out), "--no-recipes"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out.mkdir()
    workers = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (stdout, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-2000:]
    study = optuna.load_study(study_name="litv2-t-64x64-b2-infer", storage=open_storage(f"sqlite:///{out / 'search.db'}"))
    evaluated = [t.params["point"] for t in study.trials if DUPLICATE_OF not in t.user_attrs]
    # windows (1,1) (1,2) (2,1) (2,2): alpha is irrelevant for (1,1); 5 alphas give 5 splits elsewhere.
    assert len(evaluated) == len(set(evaluated)) == 1 + 5 + 5 + 5
    assert all(t.state == TrialState.COMPLETE for t in study.trials if DUPLICATE_OF not in t.user_attrs)
    measured_here = [sum(" trial " in line for line in stdout.splitlines()) for stdout, _ in outputs]
    assert sum(measured_here) == 16 and all(n > 0 for n in measured_here)
