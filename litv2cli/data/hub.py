"""Hub datasets: `--data owner/name` that is not a local path, read through the `datasets` cache.

The dataset is downloaded and prepared by the launching process on first use (`load_dataset`),
so the training processes find it cached. Offline (`HF_DATASETS_OFFLINE=1`) an uncached id is a
UserError. Remote code is never run: `datasets` 4 removed dataset scripts and
`trust_remote_code`, and nothing here passes it.
"""

from __future__ import annotations

from typing import Any


def looks_like_hub_id(source: str) -> bool:
    """Whether `source` has the form `owner/name` (the caller has checked it is no local path)."""
    owner, _, name = source.partition("/")
    return bool(owner and name) and "/" not in name and not source.startswith((".", "~")) \
        and not name.endswith((".parquet", ".arrow", ".json"))


def read_hub(source: str) -> dict[str, Any]:
    """{split name: datasets.Dataset} of a hub dataset, from the `datasets` cache (filled on first use)."""
    import datasets

    return dict(datasets.load_dataset(source))


def short_reason(exc: BaseException) -> str:
    """One line naming what `datasets` or the hub client raised, for a UserError."""
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0][:200]}" if text else exc.__class__.__name__
