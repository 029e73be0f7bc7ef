"""The Pareto front of the searched points, the rule that picks one, and the files that show it.

A point is on the front when no other point is at least as good on every objective and
strictly better on one. The pick rules:

- `knee` (default): scale every objective to [0, 1] over the front (1 = best) and take the
  point nearest (1, ..., 1), the most balanced trade-off; with one objective, its best.
- `max-top1`: the best accuracy proxy, ties broken by throughput, so that where accuracy is
  flat the measured speed decides.
- `max-throughput`: the fastest point; ties broken by the accuracy proxy.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litv2cli.errors import UserError
from litv2cli.search.objectives import Objective

PICK_RULES = ("knee", "max-top1", "max-throughput")


@dataclass
class Row:
    """One evaluated point with everything measured about it."""

    label: str
    alpha: float
    alphas: list[float]
    window: list[int]
    lofi_heads: list[int | None]
    values: dict[str, float] = field(default_factory=dict)  # objective name -> value
    details: dict[str, Any] = field(default_factory=dict)  # spreads, proxy scores, trial numbers
    status: str = "ok"  # ok | filtered (by a constraint) | pruned | failed
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "alpha": self.alpha, "alphas": self.alphas, "window": self.window,
                "lofi_heads": self.lofi_heads, "status": self.status, "reason": self.reason,
                **self.values, **{k: v for k, v in self.details.items() if k not in self.values}}


def dominates(a: Row, b: Row, objectives: Sequence[Objective]) -> bool:
    at_least_as_good = all(_better_or_equal(a.values[o.name], b.values[o.name], o) for o in objectives)
    strictly_better = any(a.values[o.name] != b.values[o.name] for o in objectives)
    return at_least_as_good and strictly_better


def pareto_front(rows: Sequence[Row], objectives: Sequence[Objective]) -> list[Row]:
    """The non-dominated rows among those with status ok, in the input order."""
    candidates = [r for r in rows if r.status == "ok" and all(o.name in r.values for o in objectives)]
    return [r for r in candidates if not any(dominates(other, r, objectives) for other in candidates)]


def pick(front: Sequence[Row], objectives: Sequence[Objective], rule: str) -> Row:
    """The chosen row of `front` by `rule` (see the module docstring)."""
    if not front:
        raise UserError("no point is left to choose from: every point failed or was filtered by a constraint")
    names = [o.name for o in objectives]
    if rule == "max-top1":
        return max(front, key=lambda r: (r.values["top1"], r.values.get("throughput", 0.0)))
    if rule == "max-throughput":
        return max(front, key=lambda r: (r.values["throughput"], r.values.get("top1", 0.0)))
    if rule != "knee":
        raise UserError(f"--pick {rule}: choose one of {', '.join(PICK_RULES)}")
    scaled = {id(r): [_scaled(r, o, front) for o in objectives] for r in front}
    return min(front, key=lambda r: (math.dist(scaled[id(r)], [1.0] * len(names)), r.label))


def check_pick_rule(rule: str, objectives: Sequence[Objective]) -> None:
    names = {o.name for o in objectives}
    if rule not in PICK_RULES:
        raise UserError(f"--pick {rule}: choose one of {', '.join(PICK_RULES)}")
    needed = {"max-top1": "top1", "max-throughput": "throughput"}.get(rule)
    if needed and needed not in names:
        raise UserError(f"--pick {rule} needs {needed} among the objectives (--objective)")


def write_table(rows: Sequence[Row], path: Path) -> Path:
    """CSV of every point, with `on_front` and `chosen` columns when set in details."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [_flat(r.as_dict()) for r in rows]
    columns = list(dict.fromkeys(k for record in records for k in record))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)
    return path


def write_json(summary: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, default=str))
    return path


def plot_front(rows: Sequence[Row], front: Sequence[Row], chosen: Row, objectives: Sequence[Objective], path: Path,
               *, paper_label: str | None, title: str) -> Path:
    """PNG: every point, the front, the chosen point and the paper's default (alpha 0.9, s = 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_name, y_name, x_of, y_of = _axes(objectives)
    measured = [r for r in rows if all(o.name in r.values for o in objectives)]
    figure, axes = plt.subplots(figsize=(7.5, 5.5))
    for status, style in (("ok", dict(color="0.6")), ("filtered", dict(color="0.85")), ("pruned", dict(color="0.85"))):
        chosen_rows = [r for r in measured if r.status == status]
        if chosen_rows:
            axes.scatter([x_of(r) for r in chosen_rows], [y_of(r) for r in chosen_rows], s=22, zorder=2,
                         label={"ok": "searched point", "filtered": "filtered by a constraint",
                                "pruned": "pruned (training proxy)"}[status], **style)
    _draw_spread(axes, measured, objectives)
    ordered = sorted(front, key=x_of)
    axes.plot([x_of(r) for r in ordered], [y_of(r) for r in ordered], "-o", color="tab:blue", ms=6, zorder=3,
              label="Pareto front")
    for r in ordered:
        axes.annotate(r.label, (x_of(r), y_of(r)), textcoords="offset points", xytext=(4, 4), fontsize=7)
    paper = next((r for r in measured if r.label == paper_label), None)
    if paper is not None:
        axes.scatter([x_of(paper)], [y_of(paper)], s=140, marker="D", facecolors="none", edgecolors="black",
                     linewidths=1.5, zorder=4, label="paper default (alpha 0.9, window 2)")
    axes.scatter([x_of(chosen)], [y_of(chosen)], s=260, marker="*", color="tab:red", zorder=5,
                 label=f"chosen: {chosen.label}")
    axes.set_xlabel(x_name)
    axes.set_ylabel(y_name)
    note = "" if len(objectives) <= 2 else f" (front over {len(objectives)} objectives, first two shown)"
    if paper is None:
        note += " (paper default not in the searched space)"
    axes.set_title(title + note, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_front_html(rows: Sequence[Row], front: Sequence[Row], chosen: Row, objectives: Sequence[Objective],
                    path: Path, *, title: str, paper_label: str | None = None) -> Path | None:
    """Interactive HTML with plotly when it is installed (the same marks as the PNG); None otherwise."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        return None
    x_name, y_name, x_of, y_of = _axes(objectives)
    measured = [r for r in rows if all(o.name in r.values for o in objectives)]
    ordered = sorted(front, key=x_of)
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=[x_of(r) for r in measured], y=[y_of(r) for r in measured], mode="markers",
                                text=[r.label for r in measured], name="searched point"))
    figure.add_trace(go.Scatter(x=[x_of(r) for r in ordered], y=[y_of(r) for r in ordered], mode="lines+markers",
                                text=[r.label for r in ordered], name="Pareto front"))
    paper = next((r for r in measured if r.label == paper_label), None)
    if paper is not None:
        figure.add_trace(go.Scatter(x=[x_of(paper)], y=[y_of(paper)], mode="markers", text=[paper.label],
                                    marker=dict(symbol="diamond-open", size=14),
                                    name="paper default (alpha 0.9, window 2)"))
    figure.add_trace(go.Scatter(x=[x_of(chosen)], y=[y_of(chosen)], mode="markers", text=[chosen.label],
                                marker=dict(symbol="star", size=16), name=f"chosen: {chosen.label}"))
    figure.update_layout(title=title, xaxis_title=x_name, yaxis_title=y_name)
    figure.write_html(str(path))
    return path


# --- internals ---------------------------------------------------------------------------


def _better_or_equal(a: float, b: float, objective: Objective) -> bool:
    return a >= b if objective.maximize else a <= b


def _scaled(row: Row, objective: Objective, front: Sequence[Row]) -> float:
    values = [r.values[objective.name] for r in front]
    low, high = min(values), max(values)
    if high == low:
        return 1.0
    value = row.values[objective.name]
    return (value - low) / (high - low) if objective.maximize else (high - value) / (high - low)


def _draw_spread(axes, rows: Sequence[Row], objectives: Sequence[Objective]) -> None:
    """Horizontal or vertical bars from the first to the third quartile of the timed steps, where
    throughput is drawn: how far apart two points must be to be told apart on this machine."""
    names = [o.name for o in objectives[:2]] if len(objectives) > 1 else []
    if "throughput" not in names:
        return
    rows = [r for r in rows if len(r.details.get("throughput_samples") or []) >= 2]
    if not rows:
        return
    x_name, y_name = names
    lows, highs = [], []
    for row in rows:
        quartiles = statistics.quantiles(row.details["throughput_samples"], n=4, method="inclusive")
        value = row.values["throughput"]
        lows.append(max(value - quartiles[0], 0.0))
        highs.append(max(quartiles[2] - value, 0.0))
    xs, ys = [r.values[x_name] for r in rows], [r.values[y_name] for r in rows]
    bars = {"xerr" if x_name == "throughput" else "yerr": [lows, highs]}
    axes.errorbar(xs, ys, fmt="none", ecolor="0.75", elinewidth=1, capsize=2, zorder=1,
                  label="throughput IQR of the timed steps", **bars)


def _axes(objectives: Sequence[Objective]):
    def axis_name(o: Objective) -> str:
        return f"{o.name} ({o.unit}, {'higher' if o.maximize else 'lower'} is better)" if o.unit \
            else f"{o.name} ({'higher' if o.maximize else 'lower'} is better)"

    if len(objectives) == 1:
        only = objectives[0]
        return "alpha", axis_name(only), (lambda r: r.alpha), (lambda r: r.values[only.name])
    first, second = objectives[0], objectives[1]
    return axis_name(first), axis_name(second), (lambda r: r.values[first.name]), (lambda r: r.values[second.name])


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in record.items()}
