"""DeepSpeed configs: presets are thin and batch fields must agree with the run."""

import json

import pytest

from litv2cli.train import deepspeed_config as dsconfig
from litv2cli.errors import UserError
from litv2cli.recipe import Recipe


@pytest.mark.parametrize("preset", dsconfig.PRESETS)
def test_presets_leave_batch_lr_and_clipping_to_the_recipe(preset):
    config = dsconfig.read_config(dsconfig.resolve_config_path(preset))
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto"
    assert "optimizer" not in config and "scheduler" not in config


def test_auto_fields_are_filled_from_world_size_and_model_width():
    config = dsconfig.read_config(dsconfig.resolve_config_path("zero3"))
    filled = dsconfig.fill_config(config, micro_batch=16, accum=4, world_size=8, clip_grad=5.0,
                                  precision="bf16", hidden_size=768, origin="zero3")
    assert filled["train_batch_size"] == 16 * 4 * 8
    assert filled["gradient_clipping"] == 5.0 and filled["bf16"]["enabled"] and not filled["fp16"]["enabled"]
    assert filled["zero_optimization"]["reduce_bucket_size"] == 768 * 768
    assert filled["zero_optimization"]["stage3_param_persistence_threshold"] == 7680


def test_explicit_batch_that_disagrees_with_the_world_is_refused(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"train_batch_size": 64, "zero_optimization": {"stage": 2}}))
    config = dsconfig.read_config(dsconfig.resolve_config_path(str(path)))
    with pytest.raises(UserError, match="train_batch_size is 64"):
        dsconfig.fill_config(config, micro_batch=16, accum=1, world_size=2, clip_grad=None, precision="no",
                             hidden_size=8, origin=str(path))


def test_optimizer_section_in_a_user_config_is_refused(tmp_path):
    path = tmp_path / "opt.json"
    path.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(UserError, match="optimizer"):
        dsconfig.read_config(path)


def test_unknown_preset_or_missing_file_is_one_clear_error():
    with pytest.raises(UserError, match="neither a preset"):
        dsconfig.resolve_config_path("zero4")


def test_ema_under_zero3_is_refused_by_the_config_check_and_allowed_under_zero2():
    ema = Recipe(ema=True)
    with pytest.raises(UserError, match="--ema with ZeRO-3 is not supported"):
        dsconfig.check_recipe(ema, dsconfig.read_config(dsconfig.resolve_config_path("zero3")))
    dsconfig.check_recipe(ema, dsconfig.read_config(dsconfig.resolve_config_path("zero2")))
    dsconfig.check_recipe(Recipe(ema=False), dsconfig.read_config(dsconfig.resolve_config_path("zero3")))
