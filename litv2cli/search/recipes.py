"""Write the searched configuration as a full training recipe with its provenance.

The recipe is the variant's shipped recipe (`default_recipe`) with the chosen alpha and window
sizes, so `litv2 pretrain --recipe recipes/litv2-<variant>.yaml` runs it unchanged. Its
`provenance` records where the choice came from: device, resolution, batch, the measured
throughput and its spread, the proxy scores, the objectives and the pick rule, the study and
its storage, the date and the litv2cli version.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from litv2cli.recipe import Recipe, default_recipe, save_recipe
from litv2cli.search.pareto import Row
from litv2cli.defaults import PAPER_ALPHA

FLAT_ACCURACY_NOTE = (
    "LITv2-S ImageNet top-1 varies by only 0.22 points over alpha 0.2-1.0 (81.81-82.03; alpha 0 gives "
    "81.16). No cheap accuracy proxy resolves differences that small; within that band the measured "
    "speed is what separates the configurations.")


def searched_recipe(variant: str, chosen: Row, provenance: dict[str, Any]) -> Recipe:
    """The variant's recipe with the chosen alpha and windows, and `provenance` attached."""
    base = default_recipe(variant)
    values = base.model_dump()
    values.update(alpha=chosen.alpha, window=tuple(chosen.window), provenance=_plain(provenance))
    values["description"] = (f"LITv2-{variant.upper()} with alpha {chosen.alpha:g} and windows "
                             f"{tuple(chosen.window)}, chosen by `litv2 search` ({provenance.get('pick', 'knee')}); "
                             f"otherwise: {base.description or 'the default recipe'}")
    return Recipe.model_validate(values)


def write_searched_recipe(variant: str, chosen: Row, provenance: dict[str, Any], recipes_dir: Path) -> Path:
    """recipes_dir/litv2-<variant>.yaml, written atomically."""
    return save_recipe(searched_recipe(variant, chosen, provenance), Path(recipes_dir) / f"litv2-{variant}.yaml")


def build_provenance(*, chosen: Row, pick_rule: str, objectives: list[str], study: str, storage: str,
                     measurement: dict[str, Any], proxy: dict[str, Any], constraints: dict[str, Any],
                     points: int, front: list[str]) -> dict[str, Any]:
    """Everything needed to judge (and reproduce) the choice; plain YAML-safe values only."""
    from litv2cli import __version__

    return {
        "tool": "litv2 search",
        "litv2cli_version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "pick": pick_rule,
        "objectives": objectives,
        "constraints": constraints,
        "chosen": {"label": chosen.label, "alpha": chosen.alpha, "equivalent_alphas": chosen.alphas,
                   "window": chosen.window, "lofi_heads_stage3_4": chosen.lofi_heads,
                   "values": chosen.values},
        "measurement": measurement,
        "proxy": proxy,
        "study": study,
        "storage": storage,
        "points_evaluated": points,
        "pareto_front": front,
        "paper_default_alpha": PAPER_ALPHA,
        "note": FLAT_ACCURACY_NOTE,
    }


def _plain(value: Any) -> Any:
    """Tuples to lists, numpy scalars and other objects to floats/strings, for yaml.safe_dump."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
