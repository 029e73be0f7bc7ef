"""Tables, files and plots of benchmark rows: a rich table for the terminal, CSV and JSON for
other tools, PNG figures in the style of the paper's Table 1 and Figure 3."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

# (key, header, format) of the columns each table shows. Headers are short and units sit on a
# second line so that the widest table (a 28-character timm name) fits 80 columns untruncated;
# LEGEND spells the abbreviations out under the table.
Column = tuple[str, str, str]
MODEL_COLUMNS: list[Column] = [
    ("model", "Model", "{}"), ("params_m", "Params\n(M)", "{:.2f}"), ("gflops", "GFLOPs", "{:.2f}"),
    ("images_per_s", "Speed\n(img/s)", "{:.1f}"), ("spread", "±", "{:.0%}"),
    ("train_memory_mib", "Train\n(MiB)", "{:.0f}"), ("test_memory_mib", "Test\n(MiB)", "{:.0f}"),
    ("status", "Status", "{}"),
]
ATTENTION_COLUMNS: list[Column] = [
    ("label", "Attention", "{}"), ("resolution", "Size", "{}"), ("params_m", "Params\n(M)", "{:.2f}"),
    ("gflops", "GFLOPs", "{:.2f}"), ("images_per_s", "Speed\n(img/s)", "{:.1f}"), ("spread", "±", "{:.0%}"),
    ("train_memory_mib", "Train\n(MiB)", "{:.0f}"), ("test_memory_mib", "Test\n(MiB)", "{:.0f}"),
    ("status", "Status", "{}"),
]
LEGEND = ("Speed: median images/s; ±: its interquartile range / median; Train, Test: peak memory of one "
          "training or inference step; -: not measured (see Status).")
ATTENTION_METRICS = [("gflops", "GFLOPs"), ("images_per_s", "Throughput (images/s)"),
                     ("train_memory_mib", "Train memory (MiB)"), ("test_memory_mib", "Test memory (MiB)")]
TEXT_COLUMNS = ("model", "label", "status", "resolution")


def render_table(title: str, rows: Sequence[dict[str, Any]], columns: list[Column], caption: str) -> Table:
    """A rich table; values that were not measured show as '-'."""
    table = Table(title=title, caption=f"{LEGEND}\n{caption}", caption_justify="left", box=box.HORIZONTALS,
                  show_edge=False, pad_edge=False, collapse_padding=True)
    for key, header, _ in columns:
        # Names never wrap (a wrapped model name reads as two models); the status may.
        table.add_column(header, justify="left" if key in TEXT_COLUMNS else "right",
                         no_wrap=key in ("model", "label", "resolution"))
    for row in rows:
        table.add_row(*(_cell(row.get(key), fmt) for key, _, fmt in columns))
    return table


def _cell(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return fmt.format(value)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_throughput_vs_flops(rows: Sequence[dict[str, Any]], path: Path, caption: str) -> Path:
    """Scatter of throughput against GFLOPs, one labelled point per measured model."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 5))
    for row in rows:
        if row["images_per_s"] is None:
            continue
        ours = row["model"].startswith("litv2_")
        axes.scatter(row["gflops"], row["images_per_s"], marker="*" if ours else "o", s=120 if ours else 50,
                     color="tab:red" if ours else "tab:blue")
        axes.annotate(row["model"], (row["gflops"], row["images_per_s"]), textcoords="offset points",
                      xytext=(5, 5), fontsize=8)
    axes.set_xlabel("GFLOPs (MACs)")
    axes.set_ylabel("Throughput (images/s)")
    axes.set_title("Throughput vs FLOPs", fontsize=11)
    axes.grid(alpha=0.3)
    return _save_figure(plt, figure, path, caption, bottom=0.06, dpi=120)


def plot_attention_metrics(rows: Sequence[dict[str, Any]], path: Path, caption: str) -> Path:
    """Four panels (FLOPs, throughput, train and test memory) against resolution, one line per
    attention; a black cross marks the first resolution where an attention did not fit."""
    plt = _pyplot()
    figure, panels = plt.subplots(1, len(ATTENTION_METRICS), figsize=(4.2 * len(ATTENTION_METRICS), 4))
    labels = list(dict.fromkeys(row["label"] for row in rows))
    for axes, (key, title) in zip(panels, ATTENTION_METRICS):
        for label in labels:
            mine = [row for row in rows if row["label"] == label]
            points = [(row["height"], row[key]) for row in mine if row[key] is not None]
            if points:
                axes.plot(*zip(*points), marker="o", label=label)
                failed = next((row for row in mine if row[key] is None and row["status"] != "ok"), None)
                if failed is not None:
                    # at the level of its last measured value, as the paper's figure does
                    axes.plot(failed["height"], points[-1][1], marker="x", color="black", markersize=10)
        axes.set_xlabel("Resolution (height)")
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
    panels[0].legend(fontsize=8)
    return _save_figure(plt, figure, path, caption, bottom=0.07, dpi=110)


def _save_figure(plt, figure, path: Path, caption: str, *, bottom: float, dpi: int) -> Path:
    """The protocol line under the plot, then write it (the caption says how it was measured)."""
    figure.text(0.01, 0.01, caption, fontsize=6, wrap=True)
    figure.tight_layout(rect=(0, bottom, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def save_outputs(stem: str, rows: Sequence[dict[str, Any]], payload: dict[str, Any], output: Path,
                 plot: bool) -> list[Path]:
    """`<stem>.csv`, `<stem>.json` and, with `plot`, `<stem>.png` under `output`."""
    written = [write_csv(output / f"{stem}.csv", rows), write_json(output / f"{stem}.json", payload)]
    if plot:
        draw = plot_throughput_vs_flops if stem == "models" else plot_attention_metrics
        written.append(draw(rows, output / f"{stem}.png", payload["protocol"]))
    return written
