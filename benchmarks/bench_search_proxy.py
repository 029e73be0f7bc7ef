"""How well do the search's accuracy proxies rank configurations? Kendall's tau against longer training.

Protocol (fixed; every step is `litv2cli.search.runner.run_search`, the function behind `litv2 search`):

1. `zero-cost`: every distinct point of the space scored at initialisation with all four zero-cost
   proxies (naswot, snip, grad_norm, synflow) on the same fixed minibatches of `--data`.
2. `short`: the training proxy, `--short-epochs` epochs per point, no pruning (every point trained).
3. `long`: the reference, the same training recipe for `--long-epochs` epochs, once per seed in
   `--seeds` (initialisation and data order change with the seed).

`report` then computes Kendall's tau-b (scipy.stats.kendalltau, two-sided p-value) over the points
between each score and the reference (validation top-1 of the long runs, averaged over seeds):
each zero-cost proxy, their rank combination as the search uses it (the default naswot, snip,
synflow), the short training, and the baselines a proxy has to beat (parameters, FLOPs, measured
throughput). With two or more seeds it also reports tau between the seeds' long runs: the
ceiling any proxy can reach when the reference itself is that noisy.

    OMP_NUM_THREADS=1 python benchmarks/bench_search_proxy.py run --output runs/bench-proxy
    OMP_NUM_THREADS=1 python benchmarks/bench_search_proxy.py run --output runs/bench-proxy --stages long --seeds 1
    python benchmarks/bench_search_proxy.py report --output runs/bench-proxy --seeds 0,1

Stages are Optuna studies: re-running a stage continues it, and stages (or seeds) may run in
separate processes at the same time.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

Output = Annotated[Path, typer.Option("--output", help="Root directory of the stages' searches.")]
Variant = Annotated[str, typer.Option("--variant")]
Res = Annotated[int, typer.Option("--res", help="Resolution of proxies and training (square).")]
Alphas = Annotated[str, typer.Option("--alpha")]
Windows = Annotated[str, typer.Option("--window")]
Data = Annotated[str, typer.Option("--data")]
ShortEpochs = Annotated[int, typer.Option("--short-epochs")]
LongEpochs = Annotated[int, typer.Option("--long-epochs")]
Seeds = Annotated[str, typer.Option("--seeds", help="Seeds of the long runs, comma-separated.")]
Stages = Annotated[str, typer.Option("--stages", help="Comma-separated: zero-cost, short, long.")]
BatchSize = Annotated[int, typer.Option("--train-batch-size")]
Lr = Annotated[float, typer.Option("--train-lr")]

ZERO_COST = ("naswot", "snip", "grad_norm", "synflow")
COMBINED = ("naswot", "snip", "synflow")  # what `litv2 search` combines by default


def stage_dir(output: Path, stage: str, seed: int | None = None) -> Path:
    return output / (stage if seed is None else f"{stage}-seed{seed}")


def run_stage(stage: str, output: Path, *, variant: str, res: int, alphas: str, windows: str, data: str,
              epochs: int | None, seed: int, batch_size: int, lr: float) -> float:
    """One search; returns its wall time in seconds."""
    from litv2cli.search.runner import SearchConfig, run_search
    from litv2cli.search.objectives import parse_objectives
    from litv2cli.search.train_proxy import TrainBudget

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per point comes from the search itself
    budget = None
    if epochs is not None:
        budget = TrainBudget(data=data, epochs=epochs, resolution=(res, res), batch_size=batch_size, lr=lr, seed=seed)
    config = SearchConfig(
        objectives=parse_objectives("throughput,top1"), variants=(variant,), alphas=alphas, windows=windows,
        resolution=(res, res), batch_size=8, warmup=2, repeats=5, proxy="zero-cost" if budget is None else "train",
        data=data, zero_cost=ZERO_COST, train_budget=budget, pruner="none", output=output, recipes_dir=None,
        seed=seed)
    began = time.perf_counter()
    run_search(config, say=lambda text: print(text, flush=True))
    return time.perf_counter() - began


@app.command()
def run(output: Output = Path("runs/bench-proxy"), variant: Variant = "t", res: Res = 64,
        alpha: Alphas = "0:1:0.1", window: Windows = "1,2,4", data: Data = "demo", short_epochs: ShortEpochs = 1,
        long_epochs: LongEpochs = 8, seeds: Seeds = "0", stages: Stages = "zero-cost,short,long",
        train_batch_size: BatchSize = 32, train_lr: Lr = 1e-3) -> None:
    """Run the stages (each resumable)."""
    common = dict(variant=variant, res=res, alphas=alpha, windows=window, data=data, batch_size=train_batch_size,
                  lr=train_lr)
    wall: dict[str, float] = {}
    for stage in [s.strip() for s in stages.split(",") if s.strip()]:
        if stage == "zero-cost":
            wall[stage] = run_stage(stage, stage_dir(output, stage), epochs=None, seed=0, **common)
        elif stage == "short":
            wall[stage] = run_stage(stage, stage_dir(output, stage), epochs=short_epochs, seed=0, **common)
        elif stage == "long":
            for seed in _ints(seeds):
                wall[f"long-seed{seed}"] = run_stage(stage, stage_dir(output, stage, seed), epochs=long_epochs,
                                                     seed=seed, **common)
        else:
            raise typer.BadParameter(f"unknown stage {stage!r}; use zero-cost, short, long")
    for name, seconds in wall.items():
        print(f"wall time {name}: {seconds:.0f} s")
        (output / f"wall-{name}.txt").write_text(f"{seconds:.1f}\n")


@app.command()
def report(output: Output = Path("runs/bench-proxy"), variant: Variant = "t", seeds: Seeds = "0") -> None:
    """Kendall's tau of every score against the long runs' validation top-1; JSON and a Markdown table."""
    result = agreement(output, variant, _ints(seeds))
    (output / "report.json").write_text(json.dumps(result, indent=2))
    print(markdown(result))


def agreement(output: Path, variant: str, seeds: list[int]) -> dict[str, Any]:
    from scipy.stats import kendalltau

    from litv2cli.search.proxies import combine_by_rank

    zero_cost = _points(stage_dir(output, "zero-cost"), variant)
    short = _points(stage_dir(output, "short"), variant)
    longs = {seed: _points(stage_dir(output, "long", seed), variant) for seed in seeds}
    labels = sorted(set(zero_cost) & set(short) & set.intersection(*(set(v) for v in longs.values())))
    if len(labels) < 3:
        raise typer.BadParameter(f"only {len(labels)} points finished in every stage; Kendall's tau needs 3")
    reference = {label: statistics.fmean(longs[s][label]["top1"] for s in seeds) for label in labels}
    combined = combine_by_rank({label: {p: zero_cost[label][f"proxy_{p}"] for p in COMBINED} for label in labels})
    scores: dict[str, dict[str, float]] = {
        **{p: {label: zero_cost[label][f"proxy_{p}"] for label in labels} for p in ZERO_COST},
        "zero-cost combined (naswot+snip+synflow, by rank)": combined,
        "train proxy (short)": {label: short[label]["top1"] for label in labels},
        "params (fewer is better)": {label: -zero_cost[label]["params"] for label in labels},
        "flops (fewer is better)": {label: -zero_cost[label]["flops"] for label in labels},
        "throughput (measured)": {label: zero_cost[label]["throughput"] for label in labels},
    }
    rows = {}
    truth = [reference[label] for label in labels]
    for name, values in scores.items():
        tau, p_value = kendalltau([values[label] for label in labels], truth)
        per_seed = {str(s): _num(kendalltau([values[label] for label in labels],
                                            [longs[s][label]["top1"] for label in labels])[0]) for s in seeds}
        rows[name] = {"tau": _num(tau), "p_value": _num(p_value), "tau_by_seed": per_seed}
    for index, first in enumerate(seeds):  # how well one long run ranks like another: the noise ceiling
        for second in seeds[index + 1:]:
            tau, p_value = kendalltau([longs[first][label]["top1"] for label in labels],
                                      [longs[second][label]["top1"] for label in labels])
            rows[f"long run seed {first} vs seed {second} (noise ceiling)"] = {"tau": _num(tau),
                                                                               "p_value": _num(p_value)}
    return {
        "n": len(labels), "points": labels, "reference_top1_mean_over_seeds": reference, "seeds": seeds,
        "long_top1_by_seed": {str(s): {label: longs[s][label]["top1"] for label in labels} for s in seeds},
        "short_top1": {label: short[label]["top1"] for label in labels},
        "reference_spread_top1": [min(truth), max(truth)],
        "budgets": {stage: _budget(stage_dir(output, stage), variant) for stage in ("short",)}
        | {f"long-seed{s}": _budget(stage_dir(output, "long", s), variant) for s in seeds},
        "kendall_tau": rows,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [f"n = {result['n']} points; reference top-1 (mean over seeds {result['seeds']}) spans "
             f"{result['reference_spread_top1'][0]:.2f}-{result['reference_spread_top1'][1]:.2f}%", "",
             "| score | Kendall tau-b vs mean | p-value | tau vs each seed's run |", "|---|---:|---:|---|"]
    for name, row in result["kendall_tau"].items():
        by_seed = ", ".join(_fmt(v) for v in row.get("tau_by_seed", {}).values())
        lines.append(f"| {name} | {_fmt(row['tau'])} | {_fmt(row['p_value'], signed=False)} | {by_seed} |")
    lines += ["", "| point | " + " | ".join(f"long seed {s}" for s in result["seeds"]) + " | short |",
              "|---|" + "---:|" * (len(result["seeds"]) + 1)]
    for label in result["points"]:
        longs = " | ".join(f"{result['long_top1_by_seed'][str(s)][label]:.2f}" for s in result["seeds"])
        lines.append(f"| {label} | {longs} | {result['short_top1'][label]:.2f} |")
    return "\n".join(lines)


def _summary(directory: Path, variant: str) -> dict[str, Any]:
    """The stage's search.json (its only study of `variant`)."""
    [path] = directory.glob(f"litv2-{variant}-*/search.json")
    return json.loads(path.read_text())


def _fmt(value: float | None, signed: bool = True) -> str:
    return "n/a" if value is None else f"{value:+.2f}" if signed else f"{value:.2f}"


def _points(directory: Path, variant: str) -> dict[str, dict[str, Any]]:
    summary = _summary(directory, variant)
    return {p["label"]: p for p in summary["points"] if p.get("status") == "ok" and "top1" in p}


def _budget(directory: Path, variant: str) -> dict[str, Any]:
    summary = _summary(directory, variant)
    return summary["provenance"]["proxy"].get("budget", {})


def _num(value: float) -> float | None:
    return None if value != value else float(value)  # NaN (a constant column) -> None


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


if __name__ == "__main__":
    app()
