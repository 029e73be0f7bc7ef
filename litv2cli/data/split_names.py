"""Split names: which names mean training and validation, and which split of a source to read.

Shared by every kind of source and by streaming, so it imports nothing from the other data
modules. A validation split may be asked for as "val" whatever the source calls it.
"""

from __future__ import annotations

from typing import Any

from litv2cli.errors import UserError

VAL_NAMES = ("val", "validation", "valid", "test")
SPLIT_NAMES = ("train", *VAL_NAMES)


def train_split_name(source: str, tables: dict[str, Any], requested: str) -> str:
    """`requested`, which must be one of `tables`' splits."""
    if requested not in tables:
        raise UserError(f"--data {source}: no '{requested}' split (found: {', '.join(tables) or 'none'})")
    return requested


def split_name(source: str, tables: dict[str, Any], split: str) -> str:
    """`split` if present; for a validation name ("val", ...), else whichever of them is."""
    if split in tables:
        return split
    if split in VAL_NAMES:
        return val_split_name(source, tables, split)
    raise UserError(f"--data {source}: no '{split}' split (found: {', '.join(tables)})")


def val_split_name(source: str, tables: dict[str, Any], requested: str) -> str:
    """`requested` if present, else the first of val/validation/valid/test that is."""
    candidates = tuple(dict.fromkeys((requested, *VAL_NAMES)))
    for name in candidates:
        if name in tables:
            return name
    raise UserError(f"--data {source}: no validation split (found: {', '.join(tables)}; looked for {', '.join(candidates)})")
