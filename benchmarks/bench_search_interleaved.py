"""Check a search's Pareto front by measuring its points again side by side.

`litv2 search` measures one point after another, so a machine whose speed changes during the
search (another job starting on shared cores) can reorder points that are close. This script
reads a finished search's `search.json`, rebuilds the points of its front and the paper's
default (alpha 0.9, window 2), and measures them interleaved (`measure_throughput_interleaved`:
one step of every model per cycle, the order rotating each cycle), so that drift hits all of
them alike. It prints each point's images/s, the ratio to the paper default, and the images/s
the search recorded, so the two can be compared.

    OMP_NUM_THREADS=1 python benchmarks/bench_search_interleaved.py \
        runs/search/litv2-s-224x224-b8-infer-zero-cost/search.json --repeats 10
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(summary_json: Path, warmup: Annotated[int, typer.Option("--warmup")] = 2,
         repeats: Annotated[int, typer.Option("--repeats")] = 10,
         extra: Annotated[str, typer.Option("--extra", help="More point labels, comma-separated.")] = "") -> None:
    import torch

    from litv2cli.measure.protocol import measure_throughput_interleaved
    from litv2cli.models import create_model

    summary = json.loads(summary_json.read_text())
    points = {p["label"]: p for p in summary["points"]}
    labels = [r["label"] for r in summary["front"]]
    for label in [summary.get("paper_default"), *[s.strip() for s in extra.split(",") if s.strip()]]:
        if label and label in points and label not in labels:
            labels.append(label)
    measurement = summary["provenance"]["measurement"]
    height, width = (int(v) for v in measurement["resolution"].split("x"))
    models = {}
    for label in labels:
        torch.manual_seed(0)
        point = points[label]
        models[label] = create_model(summary["variant"], drop_path_rate=0.0, alpha=point["alpha"],
                                     local_ws=tuple(point["window"]))
    results = measure_throughput_interleaved(models, measurement["batch_size"], (height, width),
                                             mode=measurement["mode"], warmup=warmup, repeats=repeats)
    reference = results.get(summary.get("paper_default") or "", next(iter(results.values())))
    report = {"protocol": next(iter(results.values())).protocol, "reference": summary.get("paper_default"),
              "points": {}}
    print(report["protocol"])
    print("| point | on front | interleaved images/s | spread | vs paper default | search recorded images/s |")
    print("|---|---|---:|---:|---:|---:|")
    for label, result in results.items():
        ratio = result.images_per_s / reference.images_per_s
        on_front = "yes" if any(r["label"] == label for r in summary["front"]) else "no"
        print(f"| {label} | {on_front} | {result.images_per_s:.2f} | {100 * result.spread:.1f}% | {ratio:.3f} | "
              f"{points[label]['throughput']:.2f} |")
        report["points"][label] = {"images_per_s": result.images_per_s, "spread": result.spread,
                                   "ratio_to_paper_default": ratio, "search_recorded": points[label]["throughput"],
                                   "stable": result.stable, "rounds": result.rounds}
    print(json.dumps(report))


if __name__ == "__main__":
    app()
