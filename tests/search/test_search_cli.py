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
from optuna.trial import TrialState

from tests.helpers.data_fixtures import make_image_folder
from litv2cli.cli.main import main
from litv2cli.recipe import load_recipe
from litv2cli.search.study import DUPLICATE_OF, open_storage

REPO = Path(__file__).resolve().parents[2]
FAST = ["--variant", "t", "--res", "32", "--batch-size", "2", "--warmup", "1", "--repeats", "3"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    results = out / "litv2-t-32x32-b2-infer-zero-cost"  # one folder per study
    summary = json.loads((results / "search.json").read_text())
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
    # The first point measured is measured again at the end, to show drift of the machine's speed.
    first = min(summary["points"], key=lambda p: p["trial"])
    [drift] = summary["drift_checks"]
    assert drift["label"] == first["label"] and drift["again"] > 0 and drift["points_between"] == 3
    assert provenance["measurement"]["drift_check"]["label"] == first["label"]
    assert (results / "pareto.png").stat().st_size > 0
    assert (results / "front.csv").read_text().count("\n") == len(summary["front"]) + 1
    table = capsys.readouterr().out
    # The table's caption wraps at the table's width, which depends on the measured numbers.
    words = " ".join(table.split())
    assert "Pareto front" in words and "not an accuracy" in words and "[4/4] trial" in words, table
    lines = table.splitlines()
    drawn = lines[next(i for i, line in enumerate(lines) if "Pareto front" in line):
                  next(i for i, line in enumerate(lines) if "points_csv:" in line)]
    assert max(len(line) for line in drawn) <= 80  # the front table fits a terminal

    run = tmp_path / "run"
    pretrain = ["pretrain", "--recipe", str(recipes / "litv2-t.yaml"), "--data", "demo", "--max-steps", "1",
                "--res", "32", "--batch-size", "4", "--workers", "0", "--no-progress", "--log-with", "none",
                "--output", str(run)]
    assert main(pretrain) == 0, capsys.readouterr().err
    trained = json.loads((run / "run.json").read_text())["recipe"]
    assert trained["alpha"] == chosen["alpha"] and trained["window"] == chosen["window"]
    assert (run / "model.safetensors").is_file()
    capsys.readouterr()

    study = "litv2-t-32x32-b2-infer-zero-cost"
    before = complete_points(out / "search.db", study)
    trials_before = len(optuna.load_study(study_name=study, storage=open_storage(f"sqlite:///{out / 'search.db'}")).trials)
    assert main(args) == 0
    after = optuna.load_study(study_name=study, storage=open_storage(f"sqlite:///{out / 'search.db'}"))
    assert len(after.trials) == trials_before == 4 and complete_points(out / "search.db", study) == before
    rerun = capsys.readouterr().out
    assert "trial " not in rerun  # nothing was measured again
    # No new drift measurement (a large drift of the first run is repeated as "drift check of <date>").
    assert "4 of 4 points already evaluated; 0 left to evaluate" in rerun and "drift check:" not in rerun
    assert len(json.loads((results / "search.json").read_text())["drift_checks"]) == 1


def test_train_proxy_search_on_generated_data_writes_a_recipe(tmp_path, capsys):
    data = make_image_folder(tmp_path / "images", num_classes=3, per_class=8, size=32)
    out, recipes = tmp_path / "out", tmp_path / "recipes"
    args = ["search", *FAST, "--alpha", "0,1", "--window", "2", "--proxy", "train", "--data", str(data),
            "--train-res", "32", "--train-epochs", "2", "--train-batch-size", "4", "--train-lr", "2e-3",
            "--pruner", "successive-halving", "--pick", "max-top1", "--output", str(out), "--recipes-dir",
            str(recipes)]
    assert main([*args, "--json"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr()
    assert json.loads(printed.out)["t"]["pick"] == "max-top1"  # the training loop's lines stay off stdout
    assert "training a0-w2.1" in printed.err and "val top-1" in printed.err
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
    summary = json.loads((out / "litv2-t-32x32-b2-infer-train" / "search.json").read_text())
    assert summary["chosen"]["top1"] == pytest.approx(best.value)


def test_train_mode_with_memory_and_constraints_filters_points_and_explains_an_empty_front(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["search", *FAST, "--alpha", "0.5,1", "--window", "1", "--mode", "train", "--objective",
            "throughput,latency,memory,params,flops", "--output", str(out), "--no-recipes"]
    assert main([*args, "--max-memory", "100GB"]) == 0, capsys.readouterr().err
    summary = json.loads((out / "litv2-t-32x32-b2-train" / "search.json").read_text())
    assert [o["name"] for o in summary["objectives"]] == ["throughput", "latency", "memory", "params", "flops"]
    assert all(p["latency"] > 0 and p["flops"] > 0 for p in summary["points"])
    assert summary["provenance"]["measurement"]["mode"] == "train"
    protocol = summary["provenance"]["measurement"]["protocol"]
    assert protocol.startswith("train, batch 2, 32x32") and "perf_counter in a fresh process" in protocol
    assert len(summary["points"]) == 1  # window 1: every alpha builds the same network
    assert all(p["status"] == "ok" and p["memory"] > 0 for p in summary["points"])
    smallest = min(p["memory"] for p in summary["points"])
    capsys.readouterr()
    # The same study, now with a memory limit below the smallest point: nothing is measured again,
    # every point is filtered, and the error names the reason instead of drawing an empty front.
    assert main([*args, "--max-memory", str(int(smallest) - 1)]) == 2
    printed = capsys.readouterr()
    assert "trial " not in printed.out
    err = printed.err.strip()
    assert err.startswith("litv2: error:") and "1 filtered by a constraint" in err and "--max-memory" in err
    assert main([*args, "--max-memory", "100GB", "--min-throughput", "1e12"]) == 2
    assert "--min-throughput" in capsys.readouterr().err


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
    (["--precision", "bf32"], "--precision 'bf32': choose one of auto, no, bf16, fp16"),
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
