"""timm sees our variants: by name, with a checkpoint, as a feature extractor, with data configs, and
with timm's model API: heads, pruning, parameter groups, checkpointing, fx, TorchScript, export."""

import copy
import io
import sys
import types

import pytest
import timm
import torch
from timm import set_scriptable
from timm.data import resolve_data_config
from timm.models import get_notrace_functions, get_notrace_modules
from timm.models._manipulate import group_parameters
from timm.optim import create_optimizer_v2
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

import litv2cli  # noqa: F401  (registers the models)
from litv2cli.models import VARIANTS, LITv2
from tests.helpers.model_fixtures import with_learned_offsets


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


# --- timm's model API, in our words (timm's own tests/test_models.py runs in .ci/timm-models) ---

def _scripted_twin(model: LITv2, **kwargs) -> LITv2:
    """The same weights in the form TorchScript compiles (built under `set_scriptable`)."""
    with set_scriptable(True):
        twin = timm.create_model(model.pretrained_cfg["architecture"], **kwargs).eval()
    twin.load_state_dict(model.state_dict())
    return twin


def _fx_graph(model: nn.Module) -> nn.Module:
    """torch.fx graph of `model` up to its logits, with timm's no-trace layers as single calls."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    return create_feature_extractor(model, return_nodes={"head": "logits"}, tracer_kwargs=tracer_kwargs)


# Windows of 4 then 2 pad the 6x6 and 3x3 maps of a 96x96 image: the size-dependent paths run.
PADDED = dict(local_ws=(0, 0, 4, 2), num_classes=10)

# torch.jit's deprecation notices, and torchvision's note that a training graph has more nodes
# (dropout) than an inference one, say nothing about these models.
quiet_jit = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")
quiet_fx = pytest.mark.filterwarnings("ignore:NOTE. The nodes obtained by tracing:UserWarning")


def test_pre_logits_and_a_removed_head_give_head_hidden_size_features():
    model = timm.create_model("litv2_t").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        model.reset_classifier(0)
        pooled = model(x)
        model.reset_classifier(0, "")
        unpooled = model(x)
    assert model.head_hidden_size == pre_logits.shape[1] == 256
    torch.testing.assert_close(pooled, pre_logits, rtol=0, atol=0)
    torch.testing.assert_close(unpooled, features, rtol=0, atol=0)


def test_a_new_head_is_made_where_and_as_the_model_is():
    model = timm.create_model("litv2_t", dtype=torch.float64).eval()
    model.reset_classifier(7)
    assert model.head.weight.dtype == torch.float64 and not model.head.training
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 7)


def test_device_and_dtype_reach_every_parameter_and_buffer():
    model = timm.create_model("litv2_s", device="meta", dtype=torch.bfloat16)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert all(t.device.type == "meta" for t in tensors.values())
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.bfloat16}


@quiet_fx
def test_fx_graph_gives_the_eager_logits_and_keeps_hilo_one_call():
    torch.manual_seed(0)
    model = with_learned_offsets(timm.create_model("litv2_t", **PADDED)).eval()
    graph = _fx_graph(model)
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        torch.testing.assert_close(graph(x)["logits"], model(x), rtol=1e-5, atol=1e-6)
    targets = {node.target for node in graph.graph.nodes}
    assert "layers.2.blocks.0.attn" in targets and "layers.0.downsample.dconv" in targets
    assert not any(str(target).startswith("layers.2.blocks.0.attn.") for target in targets)


@quiet_jit
def test_scripted_model_gives_the_eager_logits_and_survives_save_and_load():
    torch.manual_seed(0)
    model = with_learned_offsets(timm.create_model("litv2_t", **PADDED)).eval()
    scripted = torch.jit.script(_scripted_twin(model, **PADDED))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        expected = model(x)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loaded(x), expected, rtol=1e-4, atol=1e-5)


@quiet_fx
@quiet_jit
def test_scripted_fx_graph_gives_the_eager_logits():
    torch.manual_seed(0)
    model = with_learned_offsets(timm.create_model("litv2_t", **PADDED)).eval()
    graph = torch.jit.script(_fx_graph(_scripted_twin(model, **PADDED)))
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        torch.testing.assert_close(graph(x)["logits"], model(x), rtol=1e-4, atol=1e-5)


@quiet_jit
def test_scripting_a_fast_model_names_the_way_to_script_it():
    with pytest.raises(RuntimeError, match=r"layers\.0\.downsample\.norm_layer .*set_scriptable"):
        torch.jit.script(timm.create_model("litv2_t"))


@pytest.mark.parametrize("size", [(224, 224), (320, 256)])
def test_torch_export_gives_the_eager_logits(size):
    torch.manual_seed(0)
    model = with_learned_offsets(timm.create_model("litv2_t")).eval()
    x = torch.randn(1, 3, *size)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tap", [0, 1, 2, 3])
def test_pruned_model_ends_at_its_tap_and_trains_every_parameter_left(tap):
    model = timm.create_model("litv2_t").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=[tap], intermediates_only=True)[0]
    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers([tap], prune_norm=True) == [tap]
    assert len(pruned.layers) == tap + 1 and pruned.layers[-1].downsample is None
    assert pruned.num_classes == 0 and pruned.head_hidden_size == expected.shape[1]
    with torch.no_grad():
        torch.testing.assert_close(pruned.forward_features(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(pruned(x), expected, rtol=0, atol=0)  # no pooling, no head
    pruned.train()
    pruned(x).sum().backward()
    assert all(p.grad is not None for p in pruned.parameters())


def test_pruning_at_the_last_stage_keeps_the_classifier_output():
    model = timm.create_model("litv2_t").eval()
    x = torch.randn(1, 3, 64, 64)
    pruned = copy.deepcopy(model)
    pruned.prune_intermediate_layers([3], prune_head=False)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=0, atol=0)


def test_parameter_groups_run_stem_stages_then_head():
    model = timm.create_model("litv2_t")
    coarse = group_parameters(model, model.group_matcher(coarse=True), reverse=True)
    assert [coarse[name] for name in ("patch_embed.proj.weight", "layers.0.blocks.0.norm2.weight",
                                      "layers.0.downsample.dconv.weight", "layers.1.blocks.0.mlp.fc1.weight",
                                      "layers.3.blocks.0.attn.l_q.weight", "head.weight")] == [0, 1, 1, 2, 4, 5]
    fine = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(fine.values())) == 2 + sum(VARIANTS["t"].depths)  # stem, one per block, head
    assert fine["layers.2.downsample.norm_layer.weight"] == fine["layers.2.blocks.1.mlp.fc2.weight"]
    assert fine["norm.weight"] == fine["layers.3.blocks.0.mlp.fc2.weight"]


def test_weight_decay_skips_exactly_norms_and_biases():
    model = timm.create_model("litv2_t")
    groups = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05).param_groups
    decayed = {id(p) for group in groups if group["weight_decay"] > 0 for p in group["params"]}
    assert decayed == {id(p) for p in model.parameters() if p.ndim > 1}


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_grad_checkpointing_changes_neither_outputs_nor_gradients(mode):
    torch.manual_seed(0)
    model = timm.create_model("litv2_t", drop_path_rate=0.2, num_classes=10).train(mode == "train")
    x = torch.randn(2, 3, 64, 64)
    results = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(1)  # the same drop-path draws in both runs
        out = model(x)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    for with_checkpoints, without in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(with_checkpoints, without, rtol=1e-5, atol=1e-7)
