"""`--streaming`: a Parquet dataset read in place trains on 2 processes with the map-style epoch length
and evaluates every validation image exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.data_fixtures import make_arrow_dataset, make_image_folder
from litv2cli.cli.main import main
from litv2cli.train.spec import read_metrics

pytestmark = pytest.mark.slow
DEMO_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "litv2-t-demo.yaml"


def test_streamed_parquet_trains_on_two_processes_with_exact_epochs_and_eval(tmp_path):
    folder = make_image_folder(tmp_path / "folder", num_classes=3, per_class=12, size=40)  # 36 train, 9 val
    parquet = make_arrow_dataset(folder, tmp_path / "parquet", fmt="parquet", shards=2)
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "litv2cli.cli.main", "pretrain", "--recipe", str(DEMO_RECIPE),
         "--data", str(parquet), "--streaming", "--gpus", "2", "--batch-size", "4", "--epochs", "2",
         "--workers", "1", "--no-progress", "--log-every", "1", "--output", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    steps = [r["step"] for r in records if "loss" in r]
    evals = [r for r in records if "top1" in r]
    assert steps == list(range(1, 9))  # 36 images / (2 processes x 4) = 4 steps per epoch, 2 epochs
    assert [r["val_images"] for r in evals] == [9, 9] and [r["epoch"] for r in evals] == [1, 2]
    assert (out / "model.safetensors").is_file()


def test_streaming_a_local_image_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    folder = make_image_folder(tmp_path / "folder", num_classes=2, per_class=4, size=32)
    out = tmp_path / "run"
    assert main(["pretrain", "--variant", "t", "--data", str(folder), "--streaming", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("litv2: error:") and "drop --streaming" in err and len(err.splitlines()) == 1
    assert not out.exists()
