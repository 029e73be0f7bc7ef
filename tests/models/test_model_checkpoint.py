"""Official key names and shapes, official-format checkpoints, and refusal of files that carry code."""

import os
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from litv2cli.errors import UserError
from litv2cli.models import create_model, load_checkpoint_state_dict

OFFICIAL_KEYS = Path(__file__).resolve().parents[1] / "fixtures" / "official_litv2_s_keys.txt"


def official_shapes() -> dict[str, list[int]]:
    shapes = {}
    for line in OFFICIAL_KEYS.read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape = line.split("\t")
            shapes[key] = [int(n) for n in shape.strip("[]").split(",") if n.strip()]
    return shapes


def test_litv2_s_state_dict_has_exactly_the_official_keys_and_shapes():
    with torch.device("meta"):
        ours = {key: list(value.shape) for key, value in create_model("s").state_dict().items()}
    official = official_shapes()
    assert len(official) == 219
    assert ours == official
    assert list(ours) == list(official)  # same order too, so order-based remapping also works


def test_official_state_dict_loads_strictly_into_litv2_s():
    torch.manual_seed(0)
    state_dict = {key: torch.randn(shape) if shape else torch.tensor(3) for key, shape in official_shapes().items()}
    model = create_model("s")
    result = model.load_state_dict(state_dict, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    key = "layers.2.blocks.0.attn.h_qkv.weight"
    torch.testing.assert_close(model.layers[2].blocks[0].attn.h_qkv.weight, state_dict[key])


@pytest.fixture
def yacs_cfgnode(monkeypatch):
    """A class pickled as `yacs.config.CfgNode`, shaped like the real one (dict plus attributes)."""
    module = types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, values):
            super().__init__({k: CfgNode(v) if isinstance(v, dict) else v for k, v in values.items()})
            self.__dict__.update({"__immutable__": True, "__deprecated_keys__": set(), "__renamed_keys__": {},
                                  "__new_allowed__": False})

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    module.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", module)
    return CfgNode


def save_official_format(model, path, cfgnode):
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    config = cfgnode({"MODEL": {"TYPE": "litv2", "LIT": {"ALPHA": 0.9, "LOCAL_WS": [0, 0, 2, 1]}},
                      "TRAIN": {"EPOCHS": 300}})
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": {"last_epoch": 300},
                "epoch": 300, "max_accuracy": 82.0, "config": config}, path)


def test_official_format_checkpoint_loads_safely_and_gives_the_same_logits(tmp_path, yacs_cfgnode):
    torch.manual_seed(0)
    source = create_model("t", num_classes=10)
    path = tmp_path / "litv2_t.pth"
    save_official_format(source, path, yacs_cfgnode)
    source.eval()
    target = create_model("t", num_classes=10).eval()
    target.load_state_dict(load_checkpoint_state_dict(path), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_pickled_callable_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(UserError, match="evil.pth") as error:
        load_checkpoint_state_dict(path)
    assert "refused: it pickles" in str(error.value) and "system" in str(error.value)
    assert "could run code" in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04 truncated zip"])
def test_unreadable_file_is_a_one_line_user_error_naming_it(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match="broken.pth") as error:
        load_checkpoint_state_dict(path)
    assert "\n" not in str(error.value)
    assert "could run code" not in str(error.value)  # bytes that are no pickle are not called dangerous


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nothing-here.pth"):
        load_checkpoint_state_dict(tmp_path / "nothing-here.pth")


def test_bare_and_ddp_state_dicts_and_safetensors_load(tmp_path):
    state = create_model("t").state_dict()
    torch.save(state, tmp_path / "bare.pth")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "weights.safetensors")
    for name in ("bare.pth", "ddp.pth", "weights.safetensors"):
        loaded = load_checkpoint_state_dict(tmp_path / name)
        assert list(loaded) == list(state) or set(loaded) == set(state)
        assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_corrupt_safetensors_is_a_user_error(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(UserError, match="cut.safetensors"):
        load_checkpoint_state_dict(path)


def test_checkpoint_without_tensors_is_a_user_error(tmp_path):
    path = tmp_path / "numbers.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(UserError, match="numbers.pth"):
        load_checkpoint_state_dict(path)
