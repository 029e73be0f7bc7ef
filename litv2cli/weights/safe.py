"""Read model weights from a checkpoint file without ever executing code from it.

A checkpoint is untrusted input: `.pth` files go through `torch.load(weights_only=True)`, which
only rebuilds tensors and plain containers. Official LITv2 checkpoints also pickle their yacs
`CfgNode` under 'config'; we allow exactly that class name and rebuild it as a plain
`OrderedDict` (via `ConfigStandIn`), so those files load with safety on.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from litv2cli.errors import UserError


class ConfigStandIn:
    """What a pickled yacs `CfgNode` turns into on load: an OrderedDict of its keys and values.

    The weights-only unpickler fills only plain dict types and sets attributes only on
    allow-listed ones, and OrderedDict is both, so the stand-in hands one out instead of itself.
    """

    def __new__(cls, *args: object) -> OrderedDict:  # type: ignore[misc]
        return OrderedDict()


# (stand-in, name as written in the pickle). Registered process-wide, so timm's own loader
# (`timm.create_model(..., checkpoint_path=...)`, also weights_only=True) reads official files too.
SAFE_STAND_INS = [(ConfigStandIn, "yacs.config.CfgNode")]
torch.serialization.add_safe_globals(SAFE_STAND_INS)

_STATE_DICT_ENTRIES = ("model", "state_dict", "model_state_dict")


def load_checkpoint_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """State dict from an official `.pth` ({'model': ...}), a bare state-dict `.pth`, or `.safetensors`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist or is not a file")
    if path.suffix == ".safetensors":
        state_dict = _read_safetensors(path)
    else:
        state_dict = _pick_state_dict(_read_pth(path), path)
    bad = [key for key, value in state_dict.items() if not isinstance(value, torch.Tensor)]
    if bad or not state_dict:
        raise UserError(f"checkpoint {path}: no state dict of tensors found (offending key: {bad[:1] or 'none'})")
    if all(key.startswith("module.") for key in state_dict):  # saved from a DistributedDataParallel wrapper
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return state_dict


def weights_only_refusal(exc: pickle.UnpicklingError) -> str:
    """Why torch's weights-only loader stopped, to follow a file's name: a pickled callable or
    class (which could run code), or bytes that are no checkpoint at all (a text file, a pickle
    written by plain `pickle.dump`). torch's own message says neither in its first line."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"refused: it pickles {found.group(1)}, which could run code when loaded"
    detail = text.partition("WeightsUnpickler error:")[2].strip() or text.strip() or type(exc).__name__
    return f"is not a readable PyTorch checkpoint (weights-only loader: {detail.splitlines()[0]})"


def _read_pth(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"checkpoint {path} {weights_only_refusal(exc)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {path} is not a readable PyTorch checkpoint ({reason})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"checkpoint {path} is not a readable safetensors file ({exc})") from None


def _pick_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    for entry in _STATE_DICT_ENTRIES:
        if isinstance(obj.get(entry), dict):
            return dict(obj[entry])
    return dict(obj)
