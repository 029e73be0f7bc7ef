"""The GPU's precisions, end to end on the CPU: pretrain, finetune (new resolution), eval and
export under bf16 and fp16 autocast, on one process, two processes, and DeepSpeed ZeRO-1/2/3 in
bf16 and fp16 (which casts the model instead of autocasting), resumed to the step. Whatever the
compute dtype, `model.safetensors` holds float32 master weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.data_fixtures import make_image_folder
from litv2cli.train.spec import read_metrics
from litv2cli.weights.reading import read_state_dict

pytestmark = pytest.mark.slow

TINY = ["--variant", "t", "--res", "32", "--batch-size", "4", "--workers", "0", "--no-progress", "--log-with", "none",
        "--lr", "1e-3"]


def litv2(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "litv2cli.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "Traceback" not in done.stderr
    return done


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "folder", num_classes=3, per_class=12, size=40)


def val_images(folder: Path) -> int:
    return sum(1 for p in (folder / "val").rglob("*.jpg"))


def assert_float32_weights(run: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(run / "model.safetensors"))
    low = sorted(k for k, v in weights.items() if v.is_floating_point() and v.dtype != torch.float32)
    assert not low, low
    return weights


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_pretrain_finetune_at_a_new_size_and_eval_in_low_precision(folder, tmp_path, precision):
    run, tuned = tmp_path / "run", tmp_path / "tuned"
    litv2("pretrain", *TINY, "--data", str(folder), "--precision", precision, "--max-steps", "3", "--ema",
          "--output", str(run))
    evaluations = [r for r in read_metrics(run / "metrics.jsonl") if "top1" in r]
    assert evaluations and evaluations[-1]["val_images"] == val_images(folder)
    weights = assert_float32_weights(run)
    ema = load_file(str(run / "model_ema.safetensors"))
    assert all(v.dtype == torch.float32 for v in ema.values() if v.is_floating_point())
    moved = max((ema[k] - weights[k]).abs().max().item() for k in weights if weights[k].is_floating_point())
    assert moved > 0  # the float32 EMA follows the weights (a bf16 one would never move at decay 0.9998)

    litv2("finetune", "--from", str(run), "--res", "64", "--data", str(folder), "--precision", precision,
          "--batch-size", "4", "--workers", "0", "--max-steps", "2", "--no-progress", "--log-with", "none",
          "--output", str(tuned))
    assert_float32_weights(tuned)
    result = json.loads(litv2("eval", "--checkpoint", str(tuned), "--data", str(folder), "--precision", precision,
                              "--batch-size", "4", "--workers", "0", "--json").stdout)
    assert result["count"] == val_images(folder) and result["resolution"] == "64x64"
    assert 0 <= result["top1"] <= 100


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_two_processes_train_and_evaluate_in_low_precision(folder, tmp_path, precision):
    run = tmp_path / "run"
    litv2("pretrain", *TINY, "--data", str(folder), "--gpus", "2", "--precision", precision, "--max-steps", "2",
          "--output", str(run))
    assert_float32_weights(run)
    result = json.loads(litv2("eval", "--checkpoint", str(run), "--data", str(folder), "--gpus", "2", "--precision",
                              precision, "--batch-size", "4", "--workers", "0", "--json").stdout)
    assert result["count"] == val_images(folder) and result["processes"] == 2


@pytest.mark.parametrize("stage, precision", [("zero1", "bf16"), ("zero1", "fp16"), ("zero2", "fp16"),
                                              ("zero3", "fp16")])
def test_deepspeed_on_two_processes_trains_in_low_precision_and_saves_float32(folder, tmp_path, stage, precision):
    run = tmp_path / "run"
    litv2("pretrain", *TINY, "--data", str(folder), "--gpus", "2", "--deepspeed", stage, "--precision", precision,
          "--max-steps", "2", "--output", str(run))
    weights = assert_float32_weights(run)
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    assert len(list(checkpoint.rglob("*optim_states.pt"))) == 2
    master = read_state_dict(checkpoint)  # consolidated from the ZeRO shards
    assert all(v.dtype == torch.float32 for v in master.values() if v.is_floating_point())
    assert all(torch.equal(master[k], weights[k]) for k in master if k in weights and master[k].is_floating_point())


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_bf16_resumed_ends_with_the_weights_of_an_uninterrupted_run(folder, tmp_path, stage):
    common = ["pretrain", *TINY, "--data", str(folder), "--gpus", "2", "--deepspeed", stage, "--precision", "bf16",
              "--seed", "5"]
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    litv2(*common, "--max-steps", "4", "--output", str(reference))
    litv2(*common, "--max-steps", "2", "--output", str(resumed))
    done = litv2(*common, "--max-steps", "4", "--resume", "auto", "--output", str(resumed))
    assert "resumed from" in done.stdout + done.stderr and "step 2)" in done.stdout + done.stderr
    want, got = assert_float32_weights(reference), assert_float32_weights(resumed)
    assert want.keys() == got.keys()
    # The float32 master weights, optimizer state and data order are restored exactly; bf16 only
    # rounds the compute copy, which is rebuilt from the master. So nothing may differ at all.
    worst = max((want[k].double() - got[k].double()).abs().max().item() for k in want)
    assert worst == 0.0, worst

    result = json.loads(litv2("eval", "--checkpoint", str(resumed), "--data", str(folder), "--gpus", "2",
                              "--precision", "bf16", "--batch-size", "4", "--workers", "0", "--json").stdout)
    assert result["count"] == val_images(folder)
    onnx_file = tmp_path / "resumed.onnx"
    litv2("export", "--checkpoint", str(resumed), "--res", "32", "--output", str(onnx_file))
    assert onnx_file.stat().st_size > 0
