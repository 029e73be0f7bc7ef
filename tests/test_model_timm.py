"""timm sees our variants: by name, with a checkpoint, as a feature extractor, with data configs."""

import sys
import types

import pytest
import timm
import torch
from timm.data import resolve_data_config

import litv2cli  # noqa: F401  (registers the models)
from litv2cli.models import VARIANTS, LITv2


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_is_registered_with_timm(variant):
    assert f"litv2_{variant}" in timm.list_models("litv2_*")
    with torch.device("meta"):
        model = timm.create_model(f"litv2_{variant}", num_classes=3, drop_path_rate=0.0, alpha=0.5,
                                  local_ws=(0, 0, 4, 1), img_size=384)
    assert isinstance(model, LITv2)
    assert (model.num_classes, model.alpha, model.local_ws) == (3, 0.5, (0, 0, 4, 1))
    assert model.embed_dim == VARIANTS[variant].embed_dim


def test_data_config_is_the_official_evaluation():
    config = resolve_data_config({}, model=timm.create_model("litv2_t"))
    assert config["interpolation"] == "bicubic"
    assert config["crop_pct"] == 0.875
    assert config["input_size"] == (3, 224, 224)
    assert config["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert config["std"] == pytest.approx((0.229, 0.224, 0.225))


def test_features_only_gives_four_stage_maps():
    extractor = timm.create_model("litv2_t", features_only=True).eval()
    assert extractor.feature_info.channels() == [32, 64, 128, 256]
    assert extractor.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        maps = extractor(torch.randn(1, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 32, 16, 24), (1, 64, 8, 12), (1, 128, 4, 6), (1, 256, 2, 3)]


def test_intermediates_end_in_the_classifier_features():
    model = timm.create_model("litv2_t").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, stages = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(stages[0], model.forward_intermediates(x, indices=[0], intermediates_only=True)[0])
    assert len(stages) == 4


def test_checkpoint_path_loads_an_official_format_file(tmp_path, monkeypatch):
    # Pickled as the official training code saves it: the yacs config alongside the weights.
    module = types.ModuleType("yacs.config")
    CfgNode = type("CfgNode", (dict,), {"__module__": "yacs.config"})
    module.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", module)
    torch.manual_seed(0)
    source = timm.create_model("litv2_t", num_classes=5).eval()
    path = tmp_path / "official.pth"
    torch.save({"model": source.state_dict(), "config": CfgNode(MODEL=CfgNode(TYPE="litv2")), "epoch": 300}, path)
    monkeypatch.delitem(sys.modules, "yacs.config")  # loading must not need yacs

    loaded = timm.create_model("litv2_t", checkpoint_path=str(path), num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)
