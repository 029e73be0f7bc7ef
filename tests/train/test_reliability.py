"""Fault injection: hard kills, corrupt checkpoints, a full disk, non-finite losses, signals.

The random-kill harness is sized for CI through LITV2_KILLS (default 2) and LITV2_KILL_EPOCHS
(default 2); RELIABILITY.md records a larger run of the same test.
"""

from __future__ import annotations

import errno
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.data_fixtures import make_image_folder, tiny_recipe_text
from litv2cli.train import checkpoints as checkpointing
from litv2cli.train import loop as engine
from litv2cli.recipe import Recipe
from litv2cli.errors import UserError
from litv2cli.train.spec import RunSpec, read_metrics


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("rel") / "folder", num_classes=3, per_class=8, size=40)


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("rel-recipe") / "tiny.yaml"
    epochs = int(os.environ.get("LITV2_KILL_EPOCHS", "2"))
    path.write_text(tiny_recipe_text(epochs=epochs, batch_size=2))
    return path


def _command(recipe_file: Path, folder: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "litv2cli.cli.main", "pretrain", "--recipe", str(recipe_file), "--data", str(folder),
            "--workers", "0", "--no-progress", "--log-with", "none", "--seed", "5", "--log-every", "1",
            "--output", str(out), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_random_sigkills_then_resume_auto_end_with_identical_weights(folder, recipe_file, tmp_path):
    kills = int(os.environ.get("LITV2_KILLS", "2"))
    rng = random.Random(1234)
    reference = tmp_path / "reference"
    done = subprocess.run(_command(recipe_file, folder, reference, "--gpus", "2"), capture_output=True, text=True,
                          env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    total_steps = max(r["step"] for r in read_metrics(reference / "metrics.jsonl") if "loss" in r)

    run = tmp_path / "killed"
    redone, tried = [], 0
    for _ in range(kills):
        process = subprocess.Popen(_command(recipe_file, folder, run, "--gpus", "2", "--save-every", "1",
                                            "--resume", "auto"),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                                   start_new_session=True)
        metrics = run / "metrics.jsonl"
        before = len(read_metrics(metrics)) if metrics.exists() else 0
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None:  # wait for training to be under way
            if metrics.exists() and len(read_metrics(metrics)) > before:
                break
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 1.0))  # then a random moment: mid-step, mid-eval or mid-save
        if process.poll() is not None:
            assert process.returncode == 0, process.stderr.read()[-3000:]
            break  # the run finished before this kill
        last_logged = max((r["step"] for r in read_metrics(metrics) if "step" in r), default=0)
        os.killpg(process.pid, signal.SIGKILL)  # the whole job, as a lost machine would
        process.wait()
        tried += 1
        saved = checkpointing.list_checkpoints(run)
        resumed_at = checkpointing.read_state(saved[-1]).step if saved else 0
        redone.append(last_logged - resumed_at)
    final = subprocess.run(_command(recipe_file, folder, run, "--gpus", "2", "--save-every", "1", "--resume", "auto"),
                           capture_output=True, text=True, env=_env(), timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert tried >= 1
    want, got = load_file(str(reference / "model.safetensors")), load_file(str(run / "model.safetensors"))
    worst = max((want[k].double() - got[k].double()).abs().max().item() for k in want)
    print(f"kills tried: {tried}, steps redone per kill: {redone}, of {total_steps} steps; max |dw| = {worst:.2e}")
    assert worst <= 1e-6, worst
    assert max(redone, default=0) <= 1  # --save-every 1: at most the step in flight is redone


@pytest.mark.slow
def test_truncated_newest_checkpoint_is_reported_and_the_previous_one_used(folder, recipe_file, tmp_path):
    run = tmp_path / "run"
    first = subprocess.run(_command(recipe_file, folder, run, "--save-every", "1", "--max-steps", "3"),
                           capture_output=True, text=True, env=_env(), timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    newest = checkpointing.list_checkpoints(run)[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    again = subprocess.run(_command(recipe_file, folder, run, "--save-every", "1", "--max-steps", "4",
                                    "--resume", "auto"), capture_output=True, text=True, env=_env(), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    output = again.stdout + again.stderr
    assert f"checkpoint {newest} is unreadable" in output
    assert re.search(r"resumed from .*step-00000002", output)


# In-process faults ----------------------------------------------------------------------------

@pytest.fixture()
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def _spec(folder: Path, out: Path, **overrides) -> RunSpec:
    recipe = Recipe(variant="t", res=(32, 32), epochs=2, warmup_epochs=1, mixup=0, cutmix=0, auto_augment=None,
                    reprob=0, color_jitter=0, reference_batch=8, batch_size=2, num_classes=3)
    out.mkdir(parents=True, exist_ok=True)
    values = dict(recipe=recipe.model_dump(mode="json"), data=str(folder), output=str(out), workers=0,
                  progress=False, log_every=1)
    values.update(overrides)
    return RunSpec(**values)


def test_disk_full_while_saving_is_one_clear_error_and_keeps_the_previous_checkpoint(
        folder, tmp_path, monkeypatch, fresh_accelerate_state):
    from accelerate import Accelerator

    original = Accelerator.save_state
    calls = {"n": 0}

    def failing_save_state(self, output_dir=None, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second save starts writing, then the disk is full
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", failing_save_state)
    out = tmp_path / "run"
    with pytest.raises(engine.CheckpointWriteError, match="No space left on device"):
        engine.train(_spec(folder, out, save_every=1))
    saved = checkpointing.list_checkpoints(out)
    assert [p.name for p in saved] == ["step-00000001"]
    assert "head.weight" in load_file(str(saved[0] / "model.safetensors"))
    assert not list((out / "checkpoints").glob(".tmp-*"))


def _nan_after(calls_before_nan: int, real_build_loss):
    def build_loss(recipe, num_classes):
        mixup, criterion = real_build_loss(recipe, num_classes)
        count = {"n": 0}

        def poisoned(logits, targets):
            count["n"] += 1
            loss = criterion(logits, targets)
            return loss * float("nan") if count["n"] == calls_before_nan + 1 else loss

        return mixup, poisoned

    return build_loss


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
        folder, tmp_path, monkeypatch, fresh_accelerate_state):
    monkeypatch.setattr(engine, "build_loss", _nan_after(2, engine.build_loss))
    out = tmp_path / "run"
    with pytest.raises(engine.NonFiniteLoss, match="non-finite loss at step 2"):
        engine.train(_spec(folder, out, save_every=1))
    saved = checkpointing.list_checkpoints(out)
    assert [p.name for p in saved] == ["step-00000001", "step-00000002"]
    weights = load_file(str(saved[-1] / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert not (out / "model.safetensors").exists()


def test_skip_nonfinite_tolerates_that_many_bad_steps(folder, tmp_path, monkeypatch, fresh_accelerate_state):
    monkeypatch.setattr(engine, "build_loss", _nan_after(2, engine.build_loss))
    out = tmp_path / "run"
    engine.train(_spec(folder, out, skip_nonfinite=1, max_steps=4))
    assert (out / "model.safetensors").is_file()
    assert checkpointing.read_state(checkpointing.list_checkpoints(out)[-1]).nonfinite_skipped == 1


def test_second_sigterm_after_the_grace_period_exits_at_once(monkeypatch):
    exits = []
    monkeypatch.setattr(engine.os, "_exit", exits.append)
    stop = engine.StopRequest()
    monkeypatch.setattr(stop, "grace", 0.05)
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and exits == []
        os.kill(os.getpid(), signal.SIGTERM)  # the same pre-emption delivered twice: one event
        assert exits == []
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert exits == [128 + signal.SIGTERM]
    finally:
        stop.uninstall()


def test_hub_datasets_are_read_without_remote_code(monkeypatch):
    import datasets

    from litv2cli.data import sources

    seen = {}

    def fake_load_dataset(*args, **kwargs):
        seen.update(kwargs, called=True)
        raise FileNotFoundError("not cached")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(UserError):
        sources.describe_source("someone/some-dataset")
    assert seen.get("called") and not seen.get("trust_remote_code", False)
