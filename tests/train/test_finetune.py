"""Fine-tuning and evaluation on the pretraining engine: initialisation, new heads, resolutions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.data_fixtures import make_image_folder
from litv2cli.recipe import load_recipe
from litv2cli.train.loop import build_model
from litv2cli.train.spec import RunSpec, read_metrics

pytestmark = pytest.mark.slow

QUIET = ["--workers", "0", "--no-progress", "--log-with", "none"]


def litv2(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "litv2cli.cli.main", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    # 5 validation images per class: an odd total, so a padded 2-way split would double-count one.
    return make_image_folder(tmp_path_factory.mktemp("ft") / "folder", num_classes=3, per_class=20, size=48)


@pytest.fixture(scope="module")
def pretrained(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pre") / "run"
    done = litv2("pretrain", "--variant", "t", "--res", "32", "--batch-size", "4", "--max-steps", "2",
                 "--data", str(folder), "--output", str(out), *QUIET)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_finetune_at_a_larger_resolution_on_two_processes(pretrained, folder, tmp_path):
    out = tmp_path / "ft"
    done = litv2("finetune", "--from", str(pretrained), "--res", "64", "--data", str(folder), "--gpus", "2",
                 "--batch-size", "4", "--max-steps", "2", "--output", str(out), *QUIET)
    assert done.returncode == 0, done.stderr[-3000:]
    recipe = load_recipe(out / "config.yaml")
    assert recipe.res == (64, 64) and recipe.variant == "t" and recipe.eval_crop_pct is None
    assert recipe.epochs == 30 and recipe.weight_decay == 1e-8  # the official fine-tune schedule
    assert "loaded" in done.stdout
    evals = [r for r in read_metrics(out / "metrics.jsonl") if "top1" in r]
    assert evals[-1]["val_images"] == 15


def test_backbone_starts_from_the_checkpoint_and_a_new_head_is_fresh(pretrained, tmp_path):
    source = load_file(str(pretrained / "model.safetensors"))
    recipe = load_recipe(pretrained / "config.yaml").with_overrides(num_classes=7, res=(64, 64))
    spec = RunSpec(recipe=recipe.model_dump(mode="json"), data="unused", output=str(tmp_path), init_from=str(pretrained))
    messages: list[str] = []
    model = build_model(recipe, 7, spec, messages.append)
    state = model.state_dict()
    for key, value in source.items():
        if key.startswith("head."):
            continue
        assert torch.equal(state[key], value), key
    assert state["head.weight"].shape == (7, source["head.weight"].shape[1])
    assert "re-initialised head.weight, head.bias" in messages[0] and "ignored" not in messages[0]


def test_official_format_pth_is_accepted(pretrained, folder, tmp_path, monkeypatch):
    # Official checkpoints pickle a yacs CfgNode under 'config'; pickle one by that name.
    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    package, module = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    module.CfgNode = CfgNode
    package.config = module
    monkeypatch.setitem(sys.modules, "yacs", package)
    monkeypatch.setitem(sys.modules, "yacs.config", module)
    path = tmp_path / "official.pth"
    torch.save({"model": load_file(str(pretrained / "model.safetensors")), "epoch": 300, "config": CfgNode(a=1),
                "optimizer": {"state": {}}}, path)
    done = litv2("finetune", "--from", str(path), "--res", "64", "--data", str(folder), "--batch-size", "4",
                 "--max-steps", "1", "--output", str(tmp_path / "ft"), *QUIET)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ft" / "model.safetensors").is_file()


def test_finetune_resumes_like_pretraining(pretrained, folder, tmp_path):
    out = tmp_path / "ft"
    common = ["finetune", "--from", str(pretrained), "--res", "64", "--data", str(folder), "--batch-size", "4",
              "--save-every", "1", "--output", str(out), *QUIET]
    assert litv2(*common, "--max-steps", "1").returncode == 0
    done = litv2(*common, "--max-steps", "2", "--resume", "auto")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout + done.stderr
    assert json.loads((out / "checkpoints" / "step-00000002" / "train_state.json").read_text())["step"] == 2


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--from", "/nonexistent/ckpt.pth"], "not found"),
        (["--variant", "s"], "not LITv2-S"),
        (["--res", "100"], "multiples of 32"),
        (["--num-classes", "0"], "at least 1"),
    ],
)
def test_bad_finetune_input_is_one_line_exit_2_and_writes_nothing(pretrained, folder, tmp_path, args, fragment):
    out = tmp_path / "never"
    base = {"--from": str(pretrained), "--data": str(folder), "--output": str(out)}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    flat = [item for pair in base.items() for item in pair]
    done = litv2("finetune", *flat, *QUIET)
    assert done.returncode == 2, done.stderr[-2000:]
    assert fragment in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_eval_counts_every_validation_image_once_on_two_processes(pretrained, folder):
    done = litv2("eval", "--checkpoint", str(pretrained), "--data", str(folder), "--gpus", "2", "--json",
                 "--workers", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["count"] == 15 and result["processes"] == 2
    assert 0.0 <= result["top1"] <= result["top5"] <= 100.0
    assert result["loss"] > 0.0  # measured: cross-entropy of a barely trained 3-class model, never a zero


def test_eval_of_a_384_style_finetune_uses_the_no_crop_transform(pretrained, folder, tmp_path):
    out = tmp_path / "ft"
    assert litv2("finetune", "--from", str(pretrained), "--res", "64", "--data", str(folder), "--batch-size", "4",
                 "--max-steps", "1", "--output", str(out), *QUIET).returncode == 0
    done = litv2("eval", "--checkpoint", str(out), "--data", str(folder), "--res", "64", "--json", "--workers", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["crop_pct"] is None and result["resolution"] == "64x64"
