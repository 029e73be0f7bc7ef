"""Output paths checked before the work starts, so a bad `--output` costs no minutes of work."""

from __future__ import annotations

import os
from pathlib import Path

from litv2cli.errors import UserError


def check_creatable_dir(path: Path, option: str = "--output") -> None:
    """Refuse a path that cannot be, or become, a writable directory; creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} exists and is not a directory")
    if path.is_dir() and not os.access(path, os.W_OK):
        raise UserError(f"{option} {path} is not writable")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(f"{option} {path}: cannot create a directory there ({existing} is not a writable directory)")


def make_dir(path: Path, option: str = "--output") -> None:
    """`mkdir -p` with one error line instead of an OSError."""
    check_creatable_dir(path, option)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot create the directory ({exc.strerror})") from None
