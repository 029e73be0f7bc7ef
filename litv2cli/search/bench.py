"""Benchmarks of the search itself, with fixed protocols, for BENCHMARKS.md.

    python -m litv2cli.search.bench repeatability --variant s --alpha 0.9 --window 2 --res 224
    python -m litv2cli.search.bench agreement ZERO_COST/search.json TRAIN/search.json

`repeatability` measures one point several times, as the search does, and reports the spread of
the medians, so users know how far apart two points must be for the search to rank them reliably
on their machine. `agreement` reports Kendall's tau between each zero-cost score of one search and
the trained top-1 of another over the same points; `benchmarks/bench_search_proxy.py` runs the
whole protocol (several seeds, a noise ceiling).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Annotated, Any

import typer

from litv2cli.defaults import PAPER_ALPHA

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def repeatability(variant: str, alpha: float, window: tuple[int, int, int, int], resolution: tuple[int, int],
                  batch_size: int, *, times: int = 5, warmup: int = 3, repeats: int = 10) -> dict[str, Any]:
    """Measure the same model `times` times; medians, per-measurement spreads, spread of medians."""
    import torch

    from litv2cli.models import create_model
    from litv2cli.search.evaluate import MeasureSettings, timings

    torch.manual_seed(0)
    model = create_model(variant, drop_path_rate=0.0, alpha=alpha, local_ws=window)
    settings = MeasureSettings(variant=variant, resolution=resolution, batch_size=batch_size, warmup=warmup,
                               repeats=repeats)
    results = [timings(model, settings)[0] for _ in range(times)]
    medians = [r.images_per_s for r in results]
    return {
        "variant": variant, "alpha": alpha, "window": list(window), "protocol": results[0].protocol,
        "medians_images_per_s": medians, "spreads_iqr_over_median": [r.spread for r in results],
        "stable": [r.stable for r in results], "rounds": [r.rounds for r in results],
        "mean_of_medians": statistics.fmean(medians),
        "spread_of_medians": (max(medians) - min(medians)) / statistics.fmean(medians),
    }


def agreement(zero_cost_summary: dict[str, Any], trained_summary: dict[str, Any]) -> dict[str, Any]:
    """Kendall's tau-b between every zero-cost score and trained top-1, over the points both hold."""
    from scipy.stats import kendalltau

    trained = {p["label"]: p["top1"] for p in trained_summary["points"] if p.get("status") == "ok" and "top1" in p}
    scored = {p["label"]: p for p in zero_cost_summary["points"] if p.get("status") == "ok" and p["label"] in trained}
    labels = sorted(scored)
    if len(labels) < 3:
        raise ValueError(f"only {len(labels)} points are in both searches; Kendall's tau needs at least 3")
    top1 = [trained[label] for label in labels]
    columns = {"combined (rank)": "top1", **{k.removeprefix("proxy_"): k for k in scored[labels[0]]
                                              if k.startswith("proxy_")}}
    for name in ("params", "flops", "throughput"):  # the baselines a proxy has to beat
        columns[name] = name
    result: dict[str, Any] = {"points": labels, "trained_top1": top1, "tau": {}, "p_value": {}}
    for name, key in columns.items():
        values = [scored[label][key] for label in labels]
        tau, p_value = kendalltau(values, top1)
        result["tau"][name] = float(tau)
        result["p_value"][name] = float(p_value)
        result.setdefault("scores", {})[name] = values
    return result


@app.command("repeatability")
def repeatability_command(
    variant: Annotated[str, typer.Option("--variant")] = "s",
    alpha: Annotated[float, typer.Option("--alpha")] = PAPER_ALPHA,
    window: Annotated[int, typer.Option("--window")] = 2,
    res: Annotated[int, typer.Option("--res")] = 224,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 8,
    times: Annotated[int, typer.Option("--times")] = 5,
    warmup: Annotated[int, typer.Option("--warmup")] = 3,
    repeats: Annotated[int, typer.Option("--repeats")] = 10,
) -> None:
    report = repeatability(variant, alpha, (0, 0, window, 1), (res, res), batch_size, times=times, warmup=warmup,
                           repeats=repeats)
    typer.echo(json.dumps(report, indent=2))


@app.command("agreement")
def agreement_command(zero_cost_json: Path, trained_json: Path) -> None:
    report = agreement(json.loads(zero_cost_json.read_text()), json.loads(trained_json.read_text()))
    typer.echo(json.dumps(report, indent=2))


if __name__ == "__main__":
    app()
