"""Reading model weights from anything a user may point at, and loading them into a model.

Accepted: one of our run directories (its `model.safetensors`, else its newest checkpoint), a
`.safetensors` file, a DeepSpeed checkpoint directory (consolidated from the ZeRO shards), or an
official `.pth` file. Files are untrusted input: pickles load with `weights_only=True` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from litv2cli.recipe import Recipe, load_recipe
from litv2cli.errors import UserError

HEAD_KEYS = ("head.weight", "head.bias")


@dataclass
class LoadReport:
    """What happened to each key when weights were loaded into a model: each key is in one list.

    loaded: the model's tensor now holds the checkpoint's. reinitialised: the model keeps its fresh
    tensor because the checkpoint's has another shape (a head for other classes). ignored: the
    checkpoint holds it, the model has no such key."""

    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"loaded {len(self.loaded)} tensors"
        if self.reinitialised:
            text += f"; re-initialised {', '.join(self.reinitialised)}"
        if self.ignored:
            text += f"; ignored {', '.join(self.ignored)}"
        return text


def run_recipe(path: str | Path) -> Recipe | None:
    """The recipe saved with one of our runs, when `path` is (inside) a run directory."""
    path = Path(path)
    for candidate in (path, path.parent, path.parent.parent, path.parent.parent.parent):
        if (candidate / "config.yaml").is_file() and (candidate / "run.json").is_file():
            return load_recipe(candidate / "config.yaml")
    return None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain `{key: tensor}` from any supported checkpoint, floating tensors in float32 (a
    DeepSpeed bf16 run keeps its batch-norm statistics in bf16); one clear error line otherwise."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.is_dir():
        state_dict = _from_directory(path)
    else:
        from litv2cli.models import load_checkpoint_state_dict

        state_dict = load_checkpoint_state_dict(path)
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}


def _from_directory(path: Path) -> dict[str, torch.Tensor]:
    from litv2cli.weights.layout import list_checkpoints

    if (path / "model.safetensors").is_file():
        return read_state_dict(path / "model.safetensors")
    if (path / "pytorch_model").is_dir() or (path / "latest").is_file():
        return _from_deepspeed(path)
    checkpoints = list_checkpoints(path)
    if checkpoints:
        return _from_directory(checkpoints[-1])
    raise UserError(f"{path}: no model.safetensors, checkpoint or DeepSpeed checkpoint inside")


def _from_deepspeed(path: Path) -> dict[str, torch.Tensor]:
    """Consolidate ZeRO shards into full fp32 weights (needs about twice the model size in RAM)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = None
    if (path / "pytorch_model").is_dir() and not (path / "latest").is_file():
        path, tag = path, "pytorch_model"
    check_deepspeed_shards(path, tag)
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"{path}: cannot consolidate the DeepSpeed checkpoint ({exc})") from None
    return {k: v for k, v in state.items()}


# What DeepSpeed pickles into ZeRO shards besides tensors and plain data: records and an enum
# that only hold values. Anything else in a shard is refused.
DEEPSPEED_SHARD_GLOBALS = (
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
)


def check_deepspeed_shards(path: Path, tag: str | None) -> None:
    """Read every shard with the weights-only unpickler first.

    DeepSpeed's consolidation (`zero_to_fp32`) loads its shards with `weights_only=False`, so a
    crafted shard would run code there; a shard that passes this check holds only tensors, plain
    data and the classes in `DEEPSPEED_SHARD_GLOBALS`. The check memory-maps each shard, so it
    adds little RAM to the consolidation that reads them again.
    """
    import importlib
    import pickle

    from litv2cli.weights.safe import weights_only_refusal

    if tag is None:
        try:
            tag = (path / "latest").read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: unreadable DeepSpeed 'latest' file ({exc.__class__.__name__})") from None
    allowed = [getattr(importlib.import_module(module), name) for module, name in DEEPSPEED_SHARD_GLOBALS]
    for shard in sorted((path / tag).glob("*.pt")):
        try:
            with torch.serialization.safe_globals(allowed):
                torch.load(shard, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as exc:
            raise UserError(f"{shard} {weights_only_refusal(exc)}") from None
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise UserError(f"{shard}: not a readable DeepSpeed shard ({exc.__class__.__name__})") from None


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str,
              allow_new_head: bool) -> LoadReport:
    """Load strictly, except the classifier head when its class count differs (and that is allowed).

    Any other missing, unexpected or mis-shaped key is an error that lists the keys, so loading
    the wrong variant or a corrupt file never half-succeeds silently.
    """
    state_dict = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    own = model.state_dict()
    report = LoadReport()
    head_differs = any(k in state_dict and k in own and state_dict[k].shape != own[k].shape for k in HEAD_KEYS)
    if head_differs:
        if not allow_new_head:
            raise UserError(
                f"{source}: its head has {state_dict['head.weight'].shape[0]} classes, the model "
                f"{own['head.weight'].shape[0]}; pass --num-classes to re-initialise the head")
        report.reinitialised = [k for k in HEAD_KEYS if k in own]
        report.ignored = [k for k in HEAD_KEYS if k in state_dict and k not in own]
        state_dict = {k: v for k, v in state_dict.items() if k not in HEAD_KEYS}
    missing = sorted(set(own) - set(state_dict) - set(report.reinitialised))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
                parts.append(f"{label}: {shown}")
        raise UserError(f"{source} does not fit this model ({'; '.join(parts)}); is it another variant, alpha or window?")
    model.load_state_dict(state_dict, strict=False)
    report.loaded = sorted(state_dict)
    return report


def initialise_from(model: nn.Module, path: str) -> LoadReport:
    """Fine-tuning start: weights only (never the optimizer or epoch of the source run)."""
    return load_into(model, read_state_dict(path), source=str(path), allow_new_head=True)
