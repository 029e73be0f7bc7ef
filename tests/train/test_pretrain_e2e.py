"""End-to-end pretraining on tiny generated data: launch, metrics, checkpoints, resume, DeepSpeed.

These run the real `litv2` command in subprocesses (2 CPU processes on gloo where it matters),
so they are the slow part of the suite; each keeps to a few optimizer steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.helpers.data_fixtures import make_image_folder, tiny_recipe_text
from litv2cli.train.spec import read_metrics

pytestmark = pytest.mark.slow

TINY = ["--variant", "t", "--res", "32", "--batch-size", "4", "--workers", "0", "--no-progress",
        "--log-with", "none", "--lr", "1e-3"]


def litv2(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "litv2cli.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "folder", num_classes=3, per_class=12, size=40)


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory) -> Path:
    """A no-augmentation recipe so that equality tests compare optimisation, not random crops."""
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(tiny_recipe_text())
    return path


def test_two_process_run_writes_metrics_checkpoints_and_weights(image_folder, tmp_path):
    out = tmp_path / "run"
    done = litv2("pretrain", *TINY, "--data", str(image_folder), "--gpus", "2", "--epochs", "1",
                 "--save-every", "2", "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    config = (out / "config.yaml").read_text()
    assert "variant: t" in config
    records = read_metrics(out / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "top1" in r]
    assert steps and all(r["images_per_s"] > 0 for r in steps)
    # 36 images, 2 processes x batch 4 -> 4 optimizer steps per epoch, each seeing 8 images.
    assert evals and evals[-1]["step"] == 4
    assert evals and evals[-1]["val_images"] == sum(1 for p in (image_folder / "val").rglob("*") if p.is_file())
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-00000002", "step-00000004"]
    state = json.loads((checkpoints[-1] / "train_state.json").read_text())
    assert state["world_size"] == 2 and state["epoch"] == 1
    assert "head.weight" in load_file(str(out / "model.safetensors"))


def test_deepspeed_zero2_on_two_processes_shards_the_optimizer_state(image_folder, tmp_path):
    out = tmp_path / "ds"
    done = litv2("pretrain", *TINY, "--data", str(image_folder), "--gpus", "2", "--max-steps", "2",
                 "--deepspeed", "zero2", "--output", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = sorted((out / "checkpoints").iterdir())[-1]
    shards = sorted(checkpoint.rglob("*optim_states.pt"))
    assert len(shards) == 2, [p.name for p in shards]
    sizes = []
    for shard in shards:
        state = torch.load(shard, map_location="cpu", weights_only=False)
        osd = state["optimizer_state_dict"]
        partition = osd["single_partition_of_fp32_groups"]
        sizes.append(sum(p.numel() for p in partition))
    params = sum(t.numel() for t in load_file(str(out / "model.safetensors")).values()
                 if t.dtype.is_floating_point)
    # Each rank holds about half of the fp32 master weights (and of Adam's moments, which match them).
    for size in sizes:
        assert 0.4 * params <= size <= 0.6 * params, (sizes, params)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def start_training(*args: str, own_group: bool = False) -> subprocess.Popen:
    """`litv2 ARGS` in a child process, returned once its metrics show step 2 (training under way,
    mid-epoch) or it has ended; `own_group` puts it in a process group of its own."""
    output = Path(args[args.index("--output") + 1])
    process = subprocess.Popen([sys.executable, "-m", "litv2cli.cli.main", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               start_new_session=own_group)
    metrics = output / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and any(r.get("step", 0) >= 2 for r in read_metrics(metrics)):
            break
        time.sleep(0.2)
    return process


def test_resume_after_sigterm_mid_epoch_gives_identical_weights(image_folder, tiny_recipe, tmp_path):
    common = ["pretrain", "--recipe", str(tiny_recipe), "--data", str(image_folder), "--gpus", "2",
              "--batch-size", "2", "--workers", "0", "--no-progress", "--log-with", "none", "--seed", "3"]
    reference = tmp_path / "reference"
    done = litv2(*common, "--output", str(reference))
    assert done.returncode == 0, done.stderr[-3000:]

    interrupted = tmp_path / "interrupted"
    process = start_training(*common, "--output", str(interrupted))
    metrics = interrupted / "metrics.jsonl"
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    stopped = [r for r in read_metrics(metrics) if r.get("event") == "stopped"]
    assert stopped, "the run did not stop on SIGTERM"
    assert not (interrupted / "model.safetensors").exists()

    done = litv2(*common, "--output", str(interrupted), "--resume", "auto")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout + done.stderr
    want, got = _final_weights(reference), _final_weights(interrupted)
    assert want.keys() == got.keys()
    worst = max((want[k].double() - got[k].double()).abs().max().item() for k in want)
    assert worst <= 1e-6, worst


@pytest.mark.parametrize("gpus, workers", [("1", "2"), ("2", "1")], ids=["one-process", "launched"])
def test_a_sigterm_to_the_whole_process_group_still_saves_at_the_step_and_exits_cleanly(
        image_folder, tiny_recipe, tmp_path, gpus, workers):
    # What `timeout`, `kill -- -PGID` and a terminal's Ctrl-C do: every process of the group gets
    # the signal, DataLoader workers and the launcher included, not only the trainer.
    run = tmp_path / "run"
    process = start_training("pretrain", "--recipe", str(tiny_recipe), "--data", str(image_folder), "--epochs", "200",
                             "--batch-size", "2", "--gpus", gpus, "--workers", workers, "--no-progress", "--log-with",
                             "none", "--output", str(run), own_group=True)
    metrics = run / "metrics.jsonl"
    os.killpg(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "stopped by signal" in stdout + stderr, stderr[-3000:]
    stopped = [r for r in read_metrics(metrics) if r.get("event") == "stopped"]
    assert stopped and (run / "checkpoints" / f"step-{stopped[0]['step']:08d}").is_dir()


def test_existing_run_is_not_overwritten_without_resume(image_folder, tmp_path):
    out = tmp_path / "run"
    assert litv2("pretrain", *TINY, "--data", str(image_folder), "--max-steps", "1", "--output", str(out)).returncode == 0
    before = (out / "model.safetensors").read_bytes()
    again = litv2("pretrain", *TINY, "--data", str(image_folder), "--max-steps", "1", "--output", str(out))
    assert again.returncode == 2
    assert "already holds a run" in again.stderr and "Traceback" not in again.stderr
    assert (out / "model.safetensors").read_bytes() == before


def test_fewer_epochs_than_the_recipes_warm_up_train_and_a_resume_takes_a_new_length(image_folder, tmp_path):
    # LITv2-T's built-in recipe warms up for 20 epochs: --epochs 4 shrinks the warm-up to 0.4.
    out = tmp_path / "run"
    args = ["pretrain", "--variant", "t", "--res", "32", "--batch-size", "4", "--workers", "0", "--no-progress",
            "--log-with", "none", "--data", str(image_folder), "--output", str(out)]
    done = litv2(*args, "--epochs", "4", "--max-steps", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["epochs"], config["warmup_epochs"]) == (4, 0.4)
    done = litv2(*args, "--epochs", "3", "--max-steps", "2", "--resume", "auto")
    assert done.returncode == 0, done.stderr[-3000:]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["epochs"], config["warmup_epochs"]) == (3, 0.4)  # the run's warm-up fits: kept
    assert json.loads((out / "run.json").read_text())["recipe"]["epochs"] == 3
