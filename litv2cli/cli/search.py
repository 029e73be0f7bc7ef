"""`litv2 search`: choose HiLo's alpha and window size from throughput measured on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from litv2cli.cli.options import check_choice, check_variant, parse_resolution
from litv2cli.errors import UserError

app = typer.Typer()

Objectives = Annotated[str, typer.Option(
    "--objective", help="Comma-separated objectives, each with its own direction: throughput (max), latency (min), "
    "memory (min), top1 (max, from --proxy), params (min), flops (min).")]
Variants = Annotated[str, typer.Option("--variant", "-v", help="Variants to search, comma-separated: t, s, m, b.")]
Alphas = Annotated[str, typer.Option("--alpha", help="Alphas: start:stop:step (stop included) or a list such as 0.5,0.9. "
                                     "Alphas giving the same head split are one point.")]
Windows = Annotated[str, typer.Option("--window", help="HiLo window sizes s, comma-separated (1 = global attention).")]
PerStage = Annotated[bool, typer.Option("--per-stage-window", help="Search the stage-3 and stage-4 windows separately "
                                        "(default: one window for stage 3, stage 4 global as in the paper).")]
Res = Annotated[str, typer.Option("--res", help="Measurement resolution: 224 or HxW such as 800x1280.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Batch size of the throughput measurement.")]
Mode = Annotated[str, typer.Option("--mode", help="infer (forward) or train (forward, backward, optimizer step).")]
Warmup = Annotated[int, typer.Option("--warmup", min=0, help="Untimed warm-up steps before each measurement.")]
Repeats = Annotated[int, typer.Option("--repeats", min=2, help="Timed steps per measurement (the median is kept).")]
Proxy = Annotated[str, typer.Option("--proxy", help="Accuracy proxy for top1: zero-cost or train.")]
Data = Annotated[str | None, typer.Option("--data", help="Data for the proxy: 'demo', an ImageFolder root, a "
                                          "save_to_disk dataset, Parquet files or a hub dataset id.")]
ZeroCost = Annotated[str, typer.Option("--zero-cost", help="Zero-cost proxies combined by rank: naswot, snip, "
                                       "grad_norm, synflow (at least two).")]
ProxyBatches = Annotated[int, typer.Option("--proxy-batches", min=1, help="Minibatches the zero-cost proxies see.")]
ProxyBatchSize = Annotated[int, typer.Option("--proxy-batch-size", min=2, help="Images per proxy minibatch.")]
TrainEpochs = Annotated[int, typer.Option("--train-epochs", min=1, help="Training proxy: epochs per point "
                                          "(validation top-1 reported to the pruner after each).")]
TrainSteps = Annotated[int | None, typer.Option("--train-steps", min=1, help="Training proxy: stop each run after this "
                                                "many optimizer steps.")]
TrainRes = Annotated[str, typer.Option("--train-res", help="Training proxy: resolution.")]
TrainBatch = Annotated[int, typer.Option("--train-batch-size", min=1, help="Training proxy: batch size.")]
TrainLr = Annotated[float, typer.Option("--train-lr", min=0.0, help="Training proxy: learning rate (not scaled).")]
Pruner = Annotated[str, typer.Option("--pruner", help="Training proxy pruner: successive-halving, hyperband, median "
                                     "or none.")]
Sampler = Annotated[str, typer.Option("--sampler", help="grid (every point), or tpe / nsga2 with --trials for large "
                                      "spaces.")]
Trials = Annotated[int | None, typer.Option("--trials", min=1, help="Stop when the study holds this many evaluated "
                                            "points (default: all).")]
RetryFailed = Annotated[bool, typer.Option("--retry-failed", help="Evaluate again the points that failed before.")]
Storage = Annotated[str | None, typer.Option("--storage", help="Optuna storage URL (default: $LITV2_STORAGE if set, "
                                             "else sqlite in --output): sqlite:///file.db, postgresql+psycopg://user:"
                                             "pass@host/db, a journal file (journal:PATH or PATH.log) for workers on a "
                                             "shared filesystem, or env:NAME to read the URL from the environment "
                                             "variable NAME, keeping a password out of ps and shell history.")]
Study = Annotated[str | None, typer.Option("--study", help="Study name (default from variant, resolution, batch, mode "
                                           "and proxy); one per variant.")]
RecipesDir = Annotated[Path, typer.Option("--recipes-dir", help="Where litv2-<variant>.yaml is written.")]
NoRecipes = Annotated[bool, typer.Option("--no-recipes", help="Write no recipe (tables and plot only).")]
Output = Annotated[Path, typer.Option("--output", "-o", help="Directory for the study database (search.db) and, "
                                      "in one folder per study, the tables and plots.")]
Pick = Annotated[str, typer.Option("--pick", help="Choice on the Pareto front: knee, max-top1 or max-throughput.")]
MaxMemory = Annotated[str | None, typer.Option("--max-memory", help="Drop points whose peak memory exceeds this "
                                               "(bytes, or 8GB, 512MiB).")]
MinThroughput = Annotated[float | None, typer.Option("--min-throughput", help="Drop points slower than this "
                                                     "(images/s).")]
Device = Annotated[str | None, typer.Option("--device", help="cuda, cuda:1 or cpu (default: cuda when present).")]
Precision = Annotated[str, typer.Option("--precision", help="Precision every point is timed (and, with --proxy train, "
                                         "trained) in: auto (what `litv2 pretrain --precision auto` uses on the "
                                         "device: bf16 or fp16 on a GPU, no on a CPU), no (float32), bf16 or fp16 "
                                         "(autocast, float32 weights).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of initialisation, data order and samplers.")]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]


# Typer reads the options from this signature (one line each); the body checks them, builds the
# search's config and hands the results to `_report`.
@app.command()
def search(
    objective: Objectives = "throughput,top1",
    variant: Variants = "s",
    alpha: Alphas = "0:1:0.1",
    window: Windows = "1,2,4",
    per_stage_window: PerStage = False,
    res: Res = "224",
    batch_size: BatchSize = 64,
    mode: Mode = "infer",
    warmup: Warmup = 5,
    repeats: Repeats = 20,
    proxy: Proxy = "zero-cost",
    data: Data = None,
    zero_cost: ZeroCost = "naswot,snip,synflow",
    proxy_batches: ProxyBatches = 2,
    proxy_batch_size: ProxyBatchSize = 16,
    train_epochs: TrainEpochs = 3,
    train_steps: TrainSteps = None,
    train_res: TrainRes = "64",
    train_batch_size: TrainBatch = 32,
    train_lr: TrainLr = 1e-3,
    pruner: Pruner = "successive-halving",
    sampler: Sampler = "grid",
    trials: Trials = None,
    retry_failed: RetryFailed = False,
    storage: Storage = None,
    study: Study = None,
    recipes_dir: RecipesDir = Path("recipes"),
    no_recipes: NoRecipes = False,
    output: Output = Path("runs/search"),
    pick: Pick = "knee",
    max_memory: MaxMemory = None,
    min_throughput: MinThroughput = None,
    device: Device = None,
    precision: Precision = "auto",
    seed: Seed = 0,
    json_output: JsonOutput = False,
) -> None:
    """Measure every distinct (alpha, window) point on this machine, add an accuracy proxy, and write recipes/litv2-<variant>.yaml with the point picked on the Pareto front.

    Re-running the same command continues the study; several processes on one --storage split the points. Ctrl-C leaves the study resumable.

    LITv2-S ImageNet accuracy is flat (0.22 points) over alpha 0.2-1.0: measured speed decides there. On shared CPU cores, set OMP_NUM_THREADS=1 for steadier timings.
    """
    import optuna

    from litv2cli.precision import PRECISIONS
    from litv2cli.search.runner import SearchConfig, run_search
    from litv2cli.search.objectives import parse_bytes, parse_objectives
    from litv2cli.search.pareto import check_pick_rule
    from litv2cli.search.proxies import parse_proxies
    from litv2cli.search.runner import PROXY_KINDS, PRUNERS
    from litv2cli.search.study import SAMPLERS
    from litv2cli.search.space import parse_alphas, parse_windows
    from litv2cli.search.train_proxy import TrainBudget

    objectives = parse_objectives(objective)
    variants = tuple(dict.fromkeys(check_variant(v) for v in variant.split(",") if v.strip()))
    if not variants:
        raise UserError("--variant: give at least one of t, s, m, b")
    resolution = parse_resolution(res)
    parse_alphas(alpha)
    parse_windows(window)
    check_choice("--mode", mode, ("infer", "train"))
    check_choice("--proxy", proxy, PROXY_KINDS)
    check_choice("--sampler", sampler, SAMPLERS)
    check_choice("--pruner", pruner, PRUNERS)
    check_choice("--precision", precision, PRECISIONS)
    check_pick_rule(pick, objectives)
    _check_device(device)
    wants_top1 = any(o.name == "top1" for o in objectives)
    if wants_top1 and data is None:
        raise UserError(f"--objective {objective}: top1 needs --data for the {proxy} proxy (e.g. --data demo), "
                        "or drop top1")
    _check_spaces(variants, alpha, window, per_stage_window, resolution)
    if not no_recipes:
        _check_not_the_shipped_recipes(recipes_dir, variants)
    config = SearchConfig(
        objectives=objectives, variants=variants, alphas=alpha, windows=window, per_stage_window=per_stage_window,
        resolution=resolution, batch_size=batch_size, mode=mode, warmup=warmup, repeats=repeats, device=device,
        precision=precision, proxy=proxy, data=data,
        zero_cost=parse_proxies(zero_cost) if wants_top1 and proxy == "zero-cost" else (),
        proxy_batches=proxy_batches, proxy_batch_size=proxy_batch_size,
        train_budget=TrainBudget(data=data, epochs=train_epochs, resolution=parse_resolution(train_res),
                                 batch_size=train_batch_size, lr=train_lr, max_steps=train_steps, seed=seed)
        if wants_top1 and proxy == "train" else None,
        pruner=pruner, sampler=sampler, trials=trials, retry_failed=retry_failed, storage=storage, study=study,
        output=output, recipes_dir=None if no_recipes else recipes_dir, pick=pick,
        max_memory=parse_bytes(max_memory), min_throughput=min_throughput, seed=seed,
    )
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are reported one line each by the search
    say = (lambda text: typer.echo(text, err=True)) if json_output else typer.echo
    _report(run_search(config, say=say), config, json_output)


def _report(results: list, config, json_output: bool) -> None:
    """One JSON object (per variant, the search's JSON file) or, per variant, the front and the files."""
    if json_output:
        typer.echo(json.dumps({r.variant: json.loads(r.files["json"].read_text()) for r in results}))
        return
    from rich.console import Console

    console = Console()
    for result in results:
        console.print(_front_table(result, config))
        for kind, path in result.files.items():
            console.print(f"  {kind}: {path}")
    console.print("[dim]Note: LITv2-S ImageNet top-1 spans only 0.22 points over alpha 0.2-1.0; no cheap proxy "
                  "resolves that, so within that band let the measured speed decide.[/dim]")


def _check_device(device: str | None) -> None:
    if device is not None and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available here")


def _check_spaces(variants: tuple[str, ...], alpha: str, window: str, per_stage_window: bool,
                  resolution: tuple[int, int]) -> None:
    """Every variant's space is validated before anything is measured."""
    from litv2cli.models import VARIANTS
    from litv2cli.search.space import build_space

    for name in variants:
        build_space(name, VARIANTS[name].num_heads, alphas=alpha, windows=window, per_stage_window=per_stage_window,
                    resolution=resolution)


def _check_not_the_shipped_recipes(recipes_dir: Path, variants: tuple[str, ...]) -> None:
    """In a checkout, the default `recipes` is the package's own recipes folder (the top-level link):
    a searched recipe written there would replace the paper's, and every later default run with it."""
    from litv2cli.recipe import RECIPES_DIR

    if recipes_dir.resolve() != RECIPES_DIR.resolve():
        return
    shipped = [f"litv2-{name}.yaml" for name in variants if (RECIPES_DIR / f"litv2-{name}.yaml").is_file()]
    if shipped:
        raise UserError(f"--recipes-dir {recipes_dir} is the package's recipes folder ({RECIPES_DIR}): the searched "
                        f"recipe would replace the shipped {shipped[0]}; pass another --recipes-dir")


def _front_table(result, config):
    """The front as a table that fits 80 columns; the point label (a<alpha>-w<stage-3 window>.<stage-4
    window>) carries the windows, every other number is in points.csv and search.json."""
    from rich import box
    from rich.table import Table

    objectives = list(config.objectives)
    proxy_note = ""
    if config.wants_top1:
        proxy_note = (" top1 = zero-cost rank score in [0, 1], not an accuracy." if config.proxy == "zero-cost"
                      else " top1 = validation top-1 (%) after the training budget.")
    unstable_note = (", ! = still above 10% after re-measuring" if any(
        r.details.get("throughput_stable") is False for r in result.front) else "")
    ok = sum(r.status == "ok" for r in result.rows)
    # Many objectives need the width; the label holds alpha and windows, the CSV everything.
    with_alphas, with_heads = len(objectives) <= 3, len(objectives) <= 4
    others = len(result.rows) - ok
    title = (f"LITv2-{result.variant.upper()}: Pareto front, {len(result.front)} of {ok} points"
             f"{f' ({others} failed, filtered or pruned)' if others else ''}\nstudy {result.study}")
    caption = (f"* chosen by --pick {config.pick}. Point a<alpha>-w<window s3>.<window s4>"
               f"{'; Lo-Fi heads per stage, - = global attention' if with_heads else ''}. "
               f"Spread: IQR/median of the timed steps{unstable_note}.{proxy_note}")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left", title=title, caption=caption)
    table.add_column("point", no_wrap=True)
    if with_alphas:
        table.add_column("alphas", justify="right", no_wrap=True)
    if with_heads:
        table.add_column("Lo-Fi\ns3/s4", justify="right", no_wrap=True)
    for objective in objectives:
        table.add_column(_header(objective, config.proxy), justify="right", no_wrap=True)
    table.add_column("spread", justify="right", no_wrap=True)
    first = objectives[0]  # best first along the first objective, like reading the plot's x axis
    for row in sorted(result.front, key=lambda r: r.values[first.name], reverse=first.maximize):
        heads = "/".join("-" if h is None else str(h) for h in row.lofi_heads)
        cells = [_format(row.values[o.name], o.name) for o in objectives]
        spread = row.details.get("throughput_spread")
        spread_text = "" if spread is None else f"{100 * spread:.1f}%" + ("!" if not row.details.get(
            "throughput_stable", True) else "")
        chosen = row.label == result.chosen.label
        table.add_row(f"{row.label} *" if chosen else row.label, *([_alphas(row)] if with_alphas else []),
                      *([heads] if with_heads else []), *cells, spread_text, style="bold" if chosen else None)
    return table


def _header(objective, proxy: str) -> str:
    if objective.name == "top1":
        return "top1\nscore" if proxy == "zero-cost" else "top1\n%"
    unit = {"memory": "MiB", "params": "M", "flops": "GMACs", "throughput": "img/s"}.get(objective.name,
                                                                                            objective.unit)
    return f"{objective.name}\n{unit}" if unit else objective.name


def _alphas(row) -> str:
    """The alphas that build this network: 'any' where every HiLo stage is global, else a range."""
    if all(h is None for h in row.lofi_heads):
        return "any"
    low, high = min(row.alphas), max(row.alphas)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


def _format(value: float, name: str) -> str:
    if name == "params":
        return f"{value / 1e6:.2f}"
    if name == "flops":
        return f"{value / 1e9:.3f}"
    if name == "memory":
        return f"{value / 2**20:.0f}"
    if name == "top1":
        return f"{value:.3f}"
    return f"{value:.1f}"
