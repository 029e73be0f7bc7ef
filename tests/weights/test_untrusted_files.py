"""Files from elsewhere never run code: pickled checkpoints and DeepSpeed shards load weights-only,
recipes (also those inside a run directory) with a safe YAML loader, hub datasets without remote code.

Each crafted file would create a marker file if its payload ran; every command that reads such a
file must refuse it in one line with exit code 2, and the marker must not exist afterwards.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers.data_fixtures import make_image_folder
from litv2cli.cli.main import main
from litv2cli.errors import UserError
from litv2cli.models import create_model


class Payload:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("untrusted") / "folder", num_classes=2, per_class=2, size=32)


def readers(checkpoint: Path, folder: Path, out: Path) -> dict[str, list[str]]:
    """Every command that reads a checkpoint, pointed at `checkpoint`; what they would write goes
    to `out/run` and `out/model.onnx`."""
    return {
        "eval": ["eval", "--checkpoint", str(checkpoint), "--data", str(folder), "--workers", "0"],
        "finetune": ["finetune", "--from", str(checkpoint), "--res", "32", "--data", str(folder), "--output",
                     str(out / "run"), "--workers", "0"],
        "export": ["export", "--checkpoint", str(checkpoint), "--res", "32", "--output", str(out / "model.onnx")],
    }


def assert_refused(capsys, argv: list[str], fragment: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("litv2: error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert fragment in err, err
    return err


@pytest.mark.parametrize("command", ["eval", "finetune", "export"])
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_checkpoint_pickling_a_callable_is_refused_and_never_runs(tmp_path, folder, capsys, command, zip_format):
    marker, out = tmp_path / "payload-ran", tmp_path
    evil = tmp_path / "evil.pth"
    state = create_model("t", num_classes=2).state_dict()
    torch.save({"model": state, "extra": Payload(marker)}, evil, _use_new_zipfile_serialization=zip_format)
    assert_refused(capsys, readers(evil, folder, out)[command], "evil.pth")
    assert not marker.exists() and not (out / "run").exists() and not (out / "model.onnx").exists()


def deepspeed_checkpoint(root: Path, shard_contents: dict[str, object]) -> Path:
    """A DeepSpeed checkpoint directory: `latest` names the tag folder holding the shards."""
    (root / "global_step1").mkdir(parents=True)
    (root / "latest").write_text("global_step1")
    for name, content in shard_contents.items():
        torch.save(content, root / "global_step1" / name)
    return root


@pytest.mark.parametrize("command", ["eval", "finetune", "export"])
def test_a_deepspeed_shard_pickling_a_callable_is_refused_and_never_runs(tmp_path, folder, capsys, command):
    # DeepSpeed's own consolidation (zero_to_fp32) loads shards with weights_only=False.
    marker, out = tmp_path / "payload-ran", tmp_path
    checkpoint = deepspeed_checkpoint(tmp_path / "ds", {
        "mp_rank_00_model_states.pt": {"module": {}, "buffer_names": [], "hook": Payload(marker)},
        "zero_pp_rank_0_mp_rank_00_optim_states.pt": {"optimizer_state_dict": {}},
    })
    err = assert_refused(capsys, readers(checkpoint, folder, out)[command], "refused")
    assert "mp_rank_00_model_states.pt" in err and "system" in err
    assert not marker.exists() and not (out / "run").exists() and not (out / "model.onnx").exists()


def test_deepspeed_shards_holding_only_deepspeed_records_pass_the_check(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    from litv2cli.weights.reading import read_state_dict

    checkpoint = deepspeed_checkpoint(tmp_path / "ds", {
        "mp_rank_00_model_states.pt": {"module": {"w": torch.zeros(2)}, "buffer_names": [], "ds_version": "0.19"},
        "zero_pp_rank_0_mp_rank_00_optim_states.pt": {"optimizer_state_dict": {
            "zero_stage": ZeroStageEnum.gradients, "loss_scaler": LossScaler(1.0),
            "dynamic_loss_scaler": DynamicLossScaler(init_scale=2.0**16, scale_window=1000, min_scale=1.0,
                                                     delayed_shift=2, consecutive_hysteresis=False),
            "partition_count": 1,
            "param_slice_mappings": [{"w": fragment_address(numel=2, start=0)}]}},
    })
    with pytest.raises(UserError) as error:  # the shards are incomplete, so consolidation itself fails...
        read_state_dict(checkpoint)
    assert "cannot consolidate" in str(error.value)  # ...after the safety check let them through


def test_recipes_with_object_building_yaml_tags_are_refused_and_never_run(tmp_path, folder, capsys):
    marker = tmp_path / "payload-ran"
    tag = f"!!python/object/apply:os.system ['touch {marker}']"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"variant: t\nalpha: {tag}\n")
    assert_refused(capsys, ["pretrain", "--recipe", str(recipe), "--data", str(folder), "--output",
                            str(tmp_path / "run")], "evil.yaml")
    # A run directory's own config.yaml is read when the run is evaluated or fine-tuned from.
    run = tmp_path / "downloaded-run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in create_model("t", num_classes=2).state_dict().items()},
              str(run / "model.safetensors"))
    (run / "run.json").write_text("{}")
    (run / "config.yaml").write_text(f"variant: {tag}\n")
    assert_refused(capsys, ["eval", "--checkpoint", str(run), "--data", str(folder)], "config.yaml")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_streamed_hub_datasets_are_opened_without_remote_code(monkeypatch):
    import datasets

    from litv2cli.data import sources, streaming

    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append(kwargs)
        raise FileNotFoundError("not reachable")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    streaming.load_streams.cache_clear()
    with pytest.raises(UserError, match="could not be reached"):
        sources.describe_source("someone/remote-code-dataset", streaming=True)
    assert calls and all(not call.get("trust_remote_code", False) for call in calls)
    assert all(call.get("streaming") for call in calls)
