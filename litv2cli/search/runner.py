"""`litv2 search` as a library function: measure every point, add the accuracy proxy, pick a
point of the Pareto front, and write the recipe, the tables and the picture.

It runs in two phases because Optuna's pruning only works in single-objective studies. The
measurement study (multi-objective, one per variant) measures each distinct point on this device:
the requested efficiency objectives, counts, and with `--proxy zero-cost` the raw scores, which are
combined by rank over all points afterwards and so are user attributes, not Optuna values. With
`--proxy train`, a second, single-objective study (`<study>-train`) then trains the points that
pass the constraints and lets its pruner stop hopeless ones. The front is computed over both
studies' results. Both phases run in one precision (`with_resolved_precision`), part of the
study's fingerprint, so a study measured in bf16 is never continued in float32.
"""

from __future__ import annotations

import io
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from litv2cli.data import describe_source
from litv2cli.errors import UserError
from litv2cli.measure.protocol import MAX_SPREAD, default_device, device_name, dtype_label
from litv2cli.run.rundir import check_creatable_dir, make_dir
from litv2cli.precision import PRECISIONS, resolve_precision
from litv2cli.search import pareto
from litv2cli.search.evaluate import (
    MeasureSettings, ProxySettings, load_proxy_batches, measure_point, remeasure_throughput,
)
from litv2cli.search.objectives import MEASURED, OBJECTIVES, Objective
from litv2cli.search.proxies import DEFAULT_PROXIES, combine_by_rank
from litv2cli.search.recipes import FLAT_ACCURACY_NOTE, build_provenance, write_searched_recipe
from litv2cli.search.space import DEFAULT_ALPHAS, DEFAULT_WINDOWS, Point, SearchSpace, build_space, paper_default_label
from litv2cli.search.storage import lost_storage, open_storage, redact, resolve_storage_url
from litv2cli.search.study import (
    FAIL_REASON, GRACE_PERIOD_S, WorkerReport, fail_abandoned_trials, final_trials, make_sampler, open_study, point_status,
    run_points,
)
from litv2cli.search.train_proxy import TrainBudget, train_point

PRUNERS = ("successive-halving", "hyperband", "median", "none")
PROXY_KINDS = ("zero-cost", "train")
DRIFT_MIN_POINTS = 3  # a drift check needs points measured in between
POLL_S = 2.0


@dataclass(frozen=True)
class SearchConfig:
    """Every choice of one `litv2 search` run, validated by the CLI (or the caller)."""

    objectives: tuple[Objective, ...]
    variants: tuple[str, ...] = ("s",)
    alphas: str = DEFAULT_ALPHAS
    windows: str = DEFAULT_WINDOWS
    per_stage_window: bool = False
    resolution: tuple[int, int] = (224, 224)
    batch_size: int = 64
    mode: str = "infer"
    warmup: int = 5
    repeats: int = 20
    device: str | None = None
    precision: str = "auto"  # auto | no | bf16 | fp16, resolved by `with_resolved_precision`
    proxy: str = "zero-cost"  # zero-cost | train
    data: str | None = None
    zero_cost: tuple[str, ...] = DEFAULT_PROXIES
    proxy_batches: int = 2
    proxy_batch_size: int = 16
    train_budget: TrainBudget | None = None
    pruner: str = "successive-halving"
    sampler: str = "grid"
    trials: int | None = None
    retry_failed: bool = False
    storage: str | None = None
    study: str | None = None
    output: Path = Path("runs/search")
    recipes_dir: Path | None = Path("recipes")  # None: write no recipe
    pick: str = "knee"
    max_memory: int | None = None
    min_throughput: float | None = None
    seed: int = 0

    @property
    def objective_names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def wants_top1(self) -> bool:
        return "top1" in self.objective_names


@dataclass
class VariantResult:
    variant: str
    study: str
    rows: list[pareto.Row]
    front: list[pareto.Row]
    chosen: pareto.Row
    files: dict[str, Path] = field(default_factory=dict)
    measurement: WorkerReport = field(default_factory=WorkerReport)
    training: WorkerReport | None = None
    drift_checks: list[dict[str, Any]] = field(default_factory=list)  # see _check_drift


def run_search(config: SearchConfig, *, say: Callable[[str], None] = print) -> list[VariantResult]:
    """Search every variant of `config`; Ctrl-C or SIGTERM leaves every study resumable."""
    from litv2cli.models import VARIANTS

    for variant in config.variants:
        if variant not in VARIANTS:
            raise UserError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    spaces = {v: build_space(v, VARIANTS[v].num_heads, alphas=config.alphas, windows=config.windows,
                             per_stage_window=config.per_stage_window, resolution=config.resolution)
              for v in config.variants}  # every space is validated before anything runs
    pareto.check_pick_rule(config.pick, config.objectives)
    if config.proxy not in PROXY_KINDS:
        raise UserError(f"--proxy {config.proxy}: choose {' or '.join(PROXY_KINDS)}")
    if config.wants_top1 and not config.data:
        raise UserError(f"--proxy {config.proxy} needs --data (an image dataset, or 'demo' for the built-in one)")
    if config.proxy == "train" and config.wants_top1 and config.train_budget is None:
        raise UserError("--proxy train needs a training budget")
    config = with_resolved_precision(config)
    # Everything the user can get wrong is checked before the first file is written.
    storage_url = resolve_storage_url(config.storage, config.output)
    check_creatable_dir(config.output)
    if config.recipes_dir is not None:
        check_creatable_dir(config.recipes_dir, "--recipes-dir")
    proxy_settings = _proxy_settings(config, say) if config.wants_top1 and config.proxy == "zero-cost" else None
    if config.wants_top1 and config.proxy == "train":
        describe_source(config.data)
    make_dir(config.output)
    storage = open_storage(storage_url)
    results = []
    try:
        with sigterm_as_interrupt():
            for variant in config.variants:
                results.append(search_variant(config, spaces[variant], storage, storage_url, proxy_settings, say))
    except KeyboardInterrupt:
        say(f"interrupted: the study is kept in {redact(storage_url)}; run the same command again to continue it")
        raise
    except Exception as exc:
        lost = lost_storage(exc, storage_url)  # the database went away mid-search: one line, not a traceback
        if lost is None:
            raise
        raise lost from None
    return results


def search_device(config: SearchConfig) -> torch.device:
    return torch.device(config.device) if config.device else default_device()


def with_resolved_precision(config: SearchConfig) -> SearchConfig:
    """`config` with `auto` resolved to what `litv2 pretrain --precision auto` uses on the
    search's device, for the timings and the training proxy alike: the points are ranked as
    training will run them, and the study records the precision it was measured in."""
    if config.precision not in PRECISIONS:
        raise UserError(f"--precision {config.precision!r}: choose one of {', '.join(PRECISIONS)}")
    precision = resolve_precision(config.precision, search_device(config))
    budget = None if config.train_budget is None else replace(config.train_budget, precision=precision)
    return replace(config, precision=precision, train_budget=budget)


_stop_asked = False  # set by the handlers below; read between measurements (`stop_if_asked`)
_interruptible = 0  # > 0 while a point is measured or trained (`interruptible`)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's pre-emption, `kill`) stops the search as Ctrl-C does: the running
    trial is failed as interrupted and evaluated first by the next run. Otherwise the process
    would die at once, its trial left RUNNING until the heartbeat's 120 s grace period ran out.

    A signal handler's exception surfaces wherever Python happens to be; inside a weakref
    callback or a `__del__` (SQLAlchemy runs them during garbage collection) Python would print
    it with a traceback as "Exception ignored" and go on, and the search would run to its end.
    So both signals also leave a flag, which `stop_if_asked` turns into the interrupt at the next
    measurement, and such a swallowed interrupt is not printed."""
    global _stop_asked
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        global _stop_asked
        _stop_asked = True
        if _interruptible:
            raise KeyboardInterrupt

    def unraisable(report: Any) -> None:
        if not (_stop_asked and isinstance(report.exc_value, KeyboardInterrupt)):
            previous_hook(report)

    _stop_asked = False
    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGTERM, signal.SIGINT)}
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for number, handler in previous.items():
            signal.signal(number, handler)


def stop_if_asked() -> None:
    """Raise the interrupt that Ctrl-C or SIGTERM asked for, should Python have swallowed it."""
    if _stop_asked:
        raise KeyboardInterrupt


@contextmanager
def interruptible() -> Iterator[None]:
    """Where the handlers raise the interrupt at once: measuring or training a point, which
    holds no storage transaction. Elsewhere (Optuna's bookkeeping, SQLAlchemy) they only set the
    flag, read at the next `stop_if_asked`: an exception in the middle of a transaction would
    leave its connection holding the SQLite lock, and the trial's last write would wait on it."""
    global _interruptible
    stop_if_asked()
    _interruptible += 1
    try:
        yield
    finally:
        _interruptible -= 1
    stop_if_asked()


def search_variant(config: SearchConfig, space: SearchSpace, storage: optuna.storages.BaseStorage, storage_url: str,
                   proxy: ProxySettings | None, say: Callable[[str], None]) -> VariantResult:
    variant = space.variant
    points = space.points()
    names = config.objective_names
    settings = MeasureSettings(
        variant=variant, resolution=config.resolution, batch_size=config.batch_size, mode=config.mode,
        warmup=config.warmup, repeats=config.repeats, latency="latency" in names,
        memory="memory" in names or config.max_memory is not None, device=config.device, precision=config.precision)
    measured = [n for n in names if n != "top1"] or ["throughput"]
    directions = [OBJECTIVES[n].direction for n in measured]
    fingerprint = {
        **space.fingerprint(), "batch_size": config.batch_size, "mode": config.mode,
        "device": device_name(search_device(config)), "precision": config.precision,
        "measured": measured, "latency": settings.latency, "memory": settings.memory,
        "zero_cost": list(proxy.proxies) if proxy else [], "proxy_data": config.data if proxy else None,
        "proxy_batches": [config.proxy_batches, config.proxy_batch_size] if proxy else None, "seed": config.seed,
    }
    name = study_name(config, variant)
    study = open_study(storage, name, directions=directions, fingerprint=fingerprint,
                       sampler=make_sampler(config.sampler, [p.label for p in points], seed=config.seed))
    merged = len(space.alphas) * len(space.window_options()) - len(points)
    say(f"LITv2-{variant.upper()}: {_count(len(points), 'distinct point')} ({_count(len(space.alphas), 'alpha')} x "
        f"{_count(len(space.window_options()), 'window setting')}, {merged} merged: same head split) at "
        f"{config.resolution[0]}x{config.resolution[1]}, batch {config.batch_size}, {config.mode}, precision "
        f"{config.precision} ({dtype_label(torch.float32, settings.autocast)}), on {fingerprint['device']}; "
        f"study {name!r} in {redact(storage_url)}")

    def evaluate(trial: optuna.Trial, point: Point) -> tuple[float, ...]:
        with interruptible():
            metrics = measure_point(point, settings, proxy)
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        return tuple(float(metrics[n]) for n in measured)

    report = _finish(study, points, evaluate, config, say)
    rows = measured_rows(study, points)
    _say_unstable(rows, say)
    drift_checks = _check_drift(study, rows, points, report, settings, say)
    if proxy is not None:
        _attach_zero_cost(rows)
    _apply_constraints(rows, config)
    training = None
    if config.wants_top1 and config.proxy == "train":
        training = _train_phase(config, variant, name, points, rows, storage, say)
    objectives = list(config.objectives)
    front = pareto.pareto_front(rows, objectives)
    if not front:
        raise UserError(f"LITv2-{variant.upper()}: no point is left to choose from ({_outcome_counts(rows, points)}); "
                        f"the study {name!r} is kept: relax the constraints or pass --retry-failed")
    chosen = pareto.pick(front, objectives, config.pick)
    result = VariantResult(variant=variant, study=name, rows=rows, front=front, chosen=chosen, measurement=report,
                           training=training, drift_checks=drift_checks)
    result.files = _write_outputs(config, space, points, result, storage_url)
    return result


def study_name(config: SearchConfig, variant: str) -> str:
    if config.study:
        return config.study if len(config.variants) == 1 else f"{config.study}-{variant}"
    height, width = config.resolution
    suffix = f"-{config.proxy}" if config.wants_top1 else ""
    return f"litv2-{variant}-{height}x{width}-b{config.batch_size}-{config.mode}{suffix}"


def measured_rows(study: optuna.Study, points: list[Point]) -> list[pareto.Row]:
    """One row per point that has a finished measurement (complete, or failed with its reason)."""
    final = final_trials(study, lambda t: t.state == TrialState.COMPLETE
                         or (t.state == TrialState.FAIL and FAIL_REASON in t.user_attrs))
    rows = []
    for point in points:
        trial = final.get(point.label)
        if trial is None:
            continue
        if trial.state == TrialState.COMPLETE:
            attrs = trial.user_attrs
            values = {k: float(attrs[k]) for k in MEASURED if k in attrs}
            details = {k: v for k, v in attrs.items() if k not in values and k not in
                       ("alpha", "alphas", "window", "lofi_heads")}
            details["trial"] = trial.number
            rows.append(_row(point, values=values, details=details))
        else:
            rows.append(_row(point, status="failed", reason=trial.user_attrs[FAIL_REASON],
                             details={"trial": trial.number}))
    return rows


# --- internals ---------------------------------------------------------------------------


def _row(point: Point, **kwargs: Any) -> pareto.Row:
    return pareto.Row(label=point.label, alpha=point.alpha, alphas=list(point.alphas), window=list(point.window),
                      lofi_heads=list(point.lofi_heads), **kwargs)


def _proxy_settings(config: SearchConfig, say: Callable[[str], None]) -> ProxySettings:
    batches, num_classes = load_proxy_batches(config.data, config.resolution, batch_size=config.proxy_batch_size,
                                              num_batches=config.proxy_batches, seed=config.seed)
    say(f"zero-cost proxies {', '.join(config.zero_cost)} on {len(batches)} minibatches of "
        f"{config.proxy_batch_size} images of {config.data} ({num_classes} classes), combined by rank")
    return ProxySettings(proxies=tuple(config.zero_cost), batches=batches, num_classes=num_classes, seed=config.seed)


def _finish(study: optuna.Study, points: list[Point], evaluate, config: SearchConfig,
            say: Callable[[str], None]) -> WorkerReport:
    """Evaluate pending points; then wait for points other processes are evaluating (their
    heartbeats tell when one died: its point becomes pending again and is evaluated here)."""
    total = WorkerReport()
    waiting_said = False
    labels = [p.label for p in points]
    status = point_status(study, labels, retry_failed_before=datetime.now() if config.retry_failed else None)
    if status.done or status.running:
        say(f"continuing study {study.study_name!r}: {len(status.done)} of {len(labels)} points already evaluated"
            f"{f', {len(status.running)} running elsewhere' if status.running else ''}; "
            f"{len(status.pending)} left to evaluate here")

    def on_trial(trial: optuna.trial.FrozenTrial) -> None:
        done = len(point_status(study, labels).done)
        _say_trial(trial, say, progress=f"[{done}/{len(labels)}]")

    while True:
        report = run_points(study, points, evaluate, max_points=config.trials, retry_failed=config.retry_failed,
                            on_trial=on_trial)
        for name in ("evaluated", "failed", "pruned", "duplicates"):
            getattr(total, name).extend(getattr(report, name))
        running = point_status(study, labels).running
        if not running:
            break
        if not waiting_said:
            say(f"waiting for {len(running)} points being evaluated by other processes (a point whose worker is "
                f"silent for {GRACE_PERIOD_S} s is evaluated here)")
            waiting_said = True
        time.sleep(POLL_S)
        fail_abandoned_trials(study)
    return total


def _say_trial(trial: optuna.trial.FrozenTrial, say: Callable[[str], None], *, progress: str = "") -> None:
    """One line per finished trial: '  [3/11] trial 2: a0.9-w2.1: 123.4 images/s (spread 2.1%) in 14 s'."""
    label = trial.params.get("point", "?")
    head = f"  {progress + ' ' if progress else ''}trial {trial.number}: {label}:"
    seconds = trial.duration.total_seconds() if trial.duration is not None else None
    took = "" if seconds is None else f" in {seconds:.1f} s" if seconds < 10 else f" in {seconds:.0f} s"
    if trial.state == TrialState.COMPLETE:
        attrs = trial.user_attrs
        text = f"{attrs['throughput']:.1f} images/s (spread {100 * attrs['throughput_spread']:.1f}%" \
               f"{', UNSTABLE' if not attrs.get('throughput_stable', True) else ''})" if "throughput" in attrs \
            else f"val top-1 {trial.value:.2f}%"
        say(f"{head} {text}{took}")
    elif trial.state == TrialState.FAIL:
        say(f"{head} FAILED ({trial.user_attrs.get(FAIL_REASON, 'no reason recorded')}){took}")
    elif trial.state == TrialState.PRUNED and "duplicate_of" not in trial.user_attrs:
        last = list(trial.intermediate_values.values())[-1] if trial.intermediate_values else None
        say(f"{head} pruned at step {trial.user_attrs.get('pruned_at_step')}"
            f"{f' (val top-1 {last:.2f}%)' if last is not None else ''}{took}")


def _check_drift(study: optuna.Study, rows: list[pareto.Row], points: list[Point], report: WorkerReport,
                 settings: MeasureSettings, say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Measure again the first point this process measured, once all are done. A small spread
    within one measurement does not show that the machine slowed down or sped up between points
    (another job starting on a shared machine); this does. Kept in the study's `drift_checks`,
    which are returned."""
    evaluated = set(report.evaluated)
    mine = [r for r in rows if r.status == "ok" and r.details.get("trial") in evaluated and "throughput" in r.values]
    previous = list(study.user_attrs.get("drift_checks") or [])
    if len(mine) < DRIFT_MIN_POINTS:
        if previous and abs(previous[-1]["change"]) > MAX_SPREAD:  # keep warning on every later run
            last = previous[-1]
            say(f"drift check of {last['date']}: {last['label']} changed by {100 * last['change']:+.0f}% between the "
                "start and the end of its run, so points closer than that are not reliably ranked")
        return previous
    first = min(mine, key=lambda r: r.details["trial"])
    point = next(p for p in points if p.label == first.label)
    with interruptible():
        again = remeasure_throughput(point, settings)
    change = again / first.values["throughput"] - 1.0
    check = {"label": first.label, "first": first.values["throughput"], "again": again, "change": change,
             "points_between": len(mine) - 1, "date": datetime.now().isoformat(timespec="seconds")}
    checks = [*previous, check]
    study.set_user_attr("drift_checks", checks)
    if abs(change) > MAX_SPREAD:
        say(f"drift check: {first.label} measured {again:.1f} images/s at the end, {first.values['throughput']:.1f} "
            f"at the start ({100 * change:+.0f}%): this machine's speed changed during the search, so points whose "
            "throughput differs by less than that are not reliably ranked. Measure on an idle machine.")
    else:
        say(f"drift check: {first.label} measured again at the end is within {100 * abs(change):.1f}% of its first "
            "measurement")
    return checks


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _say_unstable(rows: list[pareto.Row], say: Callable[[str], None]) -> None:
    """Name the points whose throughput stayed above the spread limit after every re-measurement."""
    unstable = [r.label for r in rows if r.status == "ok" and r.details.get("throughput_stable") is False]
    if unstable:
        say(f"{len(unstable)} of {len(rows)} points kept a throughput spread above {100 * MAX_SPREAD:.0f}% after "
            f"re-measuring ({', '.join(unstable[:6])}{', ...' if len(unstable) > 6 else ''}): the machine was busy, "
            "so their ranking by speed is uncertain. Measure on an idle machine (on shared CPU cores, with "
            "OMP_NUM_THREADS=1) and pass --study NAME for a fresh study.")


def _attach_zero_cost(rows: list[pareto.Row]) -> None:
    """top1 := the rank-combined zero-cost score over every measured point."""
    scores = {r.label: {k.removeprefix("proxy_"): float(v) for k, v in r.details.items() if k.startswith("proxy_")}
              for r in rows if r.status == "ok"}
    combined = combine_by_rank(scores)
    for row in rows:
        if row.label in combined:
            row.values["top1"] = combined[row.label]


def _outcome_counts(rows: list[pareto.Row], points: list[Point]) -> str:
    """'2 filtered by a constraint, 1 failed, 3 not evaluated' for an empty front."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    names = {"filtered": "filtered by a constraint", "failed": "failed", "pruned": "pruned", "ok": "usable"}
    parts = [f"{n} {names.get(status, status)}" for status, n in counts.items()]
    if len(points) > len(rows):
        parts.append(f"{len(points) - len(rows)} not evaluated")
    first = next((r for r in rows if r.reason), None)
    return ", ".join(parts) + (f"; e.g. {first.label}: {first.reason}" if first else "")


def _apply_constraints(rows: list[pareto.Row], config: SearchConfig) -> None:
    for row in rows:
        if row.status != "ok":
            continue
        if config.max_memory is not None and row.values.get("memory", 0.0) > config.max_memory:
            row.status, row.reason = "filtered", f"memory {row.values['memory']:.0f} B > --max-memory {config.max_memory}"
        elif config.min_throughput is not None and row.values["throughput"] < config.min_throughput:
            row.status = "filtered"
            row.reason = f"throughput {row.values['throughput']:.1f} < --min-throughput {config.min_throughput:g}"


def _train_phase(config: SearchConfig, variant: str, name: str, points: list[Point], rows: list[pareto.Row],
                 storage: optuna.storages.BaseStorage, say: Callable[[str], None]) -> WorkerReport:
    budget = config.train_budget
    assert budget is not None
    candidates = [p for p in points if any(r.label == p.label and r.status == "ok" for r in rows)]
    if not candidates:
        return WorkerReport()
    study = open_study(storage, f"{name}-train", directions=["maximize"],
                       fingerprint={"measurement_study": name, "variant": variant, **budget.fingerprint()},
                       sampler=make_sampler("grid", [p.label for p in candidates], seed=config.seed),
                       pruner=_pruner(config.pruner))
    say(f"training proxy: {_count(len(candidates), 'point')}, {_count(budget.epochs, 'epoch')} each at "
        f"{budget.resolution[0]}x{budget.resolution[1]}, batch {budget.batch_size}, lr {budget.lr:g}, precision "
        f"{budget.precision} on {budget.data}; pruner {config.pruner}; study {name}-train")
    run_root = config.output / "train-proxy" / name

    def evaluate(trial: optuna.Trial, point: Point) -> float:
        stop_if_asked()
        say(f"  trial {trial.number}: training {point.label}")
        # The training loop prints its validation lines; they go where the search's own lines go
        # (stderr under --json, so that stdout stays one JSON object).
        writer = _SayWriter(say, indent="    ")
        try:
            with redirect_stdout(writer), interruptible():
                return train_point(trial, variant, point, budget, run_root / point.label)
        finally:
            writer.flush()

    report = _finish(study, candidates, evaluate, config, say)
    results = final_trials(study, lambda t: t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    for row in rows:
        trial = results.get(row.label)
        if row.status != "ok":
            continue
        if trial is None:
            row.status, row.reason = "failed", "not trained"
        elif trial.state == TrialState.COMPLETE:
            row.values["top1"] = float(trial.value)
            row.details["train_trial"] = trial.number
            row.details["top1_curve"] = {int(k): v for k, v in trial.intermediate_values.items()}
        elif trial.state == TrialState.PRUNED:
            row.status = "pruned"
            last = list(trial.intermediate_values.items())[-1] if trial.intermediate_values else (None, None)
            row.reason = f"pruned at step {last[0]} with val top-1 {last[1]}"
            if last[1] is not None:
                row.values["top1"] = float(last[1])
        else:
            row.status, row.reason = "failed", f"training: {trial.user_attrs.get(FAIL_REASON, 'failed')}"
    return report


class _SayWriter(io.TextIOBase):
    """A text stream that hands every complete line to `say`, which writes with the stdout of the
    moment the writer was made (`say` may print to stdout itself)."""

    def __init__(self, say: Callable[[str], None], indent: str = ""):
        self._say, self._indent, self._pending, self._stdout = say, indent, "", sys.stdout

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        self._emit(self._pending)
        self._pending = ""

    def _emit(self, line: str) -> None:
        if line.strip():
            with redirect_stdout(self._stdout):
                self._say(self._indent + line)


def _pruner(kind: str) -> optuna.pruners.BasePruner:
    if kind == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2)
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"--pruner {kind}: choose one of {', '.join(PRUNERS)}")


def _write_outputs(config: SearchConfig, space: SearchSpace, points: list[Point], result: VariantResult,
                   storage_url: str) -> dict[str, Path]:
    out = config.output / result.study  # one folder per study: two studies in one --output never mix files
    objectives = list(config.objectives)
    front_labels = {r.label for r in result.front}
    for row in result.rows:
        row.details["on_front"] = row.label in front_labels
        row.details["chosen"] = row.label == result.chosen.label
    paper_label = paper_default_label(points, space.num_heads)
    files: dict[str, Path] = {
        "points_csv": pareto.write_table(result.rows, out / "points.csv"),
        "front_csv": pareto.write_table(result.front, out / "front.csv"),
    }
    chosen = result.chosen
    measurement = {
        "device": chosen.details.get("device"), "precision": config.precision, "dtype": chosen.details.get("dtype"),
        "resolution": f"{config.resolution[0]}x{config.resolution[1]}", "batch_size": config.batch_size,
        "mode": config.mode, "protocol": chosen.details.get("protocol"),
        "throughput_images_per_s": chosen.values.get("throughput"),
        "throughput_spread_iqr_over_median": chosen.details.get("throughput_spread"),
        "throughput_stable": chosen.details.get("throughput_stable"),
        "throughput_rounds": chosen.details.get("throughput_rounds"),
        "drift_check": result.drift_checks[-1] if result.drift_checks else None,
        **({"latency_ms": chosen.values["latency"]} if "latency" in chosen.values else {}),
        **({"peak_memory_bytes": chosen.values["memory"], "memory_method": chosen.details.get("memory_method")}
           if "memory" in chosen.values else {}),
        "params": chosen.values.get("params"), "flops_macs": chosen.values.get("flops"),
    }
    proxy: dict[str, Any] = {"kind": config.proxy if config.wants_top1 else "none"}
    if config.wants_top1 and config.proxy == "zero-cost":
        proxy.update(data=config.data, proxies=list(config.zero_cost), combined_rank_score=chosen.values.get("top1"),
                     scores={k.removeprefix("proxy_"): v for k, v in chosen.details.items() if k.startswith("proxy_")})
    elif config.wants_top1 and config.train_budget is not None:
        proxy.update(data=config.data, budget=config.train_budget.fingerprint(), pruner=config.pruner,
                     val_top1=chosen.values.get("top1"))
    constraints = {"max_memory": config.max_memory, "min_throughput": config.min_throughput}
    provenance = build_provenance(
        chosen=chosen, pick_rule=config.pick, objectives=config.objective_names, study=result.study,
        storage=redact(storage_url), measurement=measurement, proxy=proxy, constraints=constraints,
        points=sum(r.status != "failed" for r in result.rows), front=[r.label for r in result.front])
    if config.recipes_dir is not None:
        files["recipe"] = write_searched_recipe(result.variant, chosen, provenance, config.recipes_dir)
    title = (f"LITv2-{result.variant.upper()} at {config.resolution[0]}x{config.resolution[1]}, batch "
             f"{config.batch_size}, {config.mode}, {chosen.details.get('device')}")
    files["plot_png"] = pareto.plot_front(result.rows, result.front, chosen, objectives, out / "pareto.png",
                                          paper_label=paper_label, title=title)
    html = pareto.plot_front_html(result.rows, result.front, chosen, objectives, out / "pareto.html", title=title,
                                  paper_label=paper_label)
    if html is not None:
        files["plot_html"] = html
    summary = {
        "variant": result.variant, "study": result.study, "storage": redact(storage_url),
        "objectives": [{"name": o.name, "direction": o.direction} for o in objectives], "pick": config.pick,
        "chosen": chosen.as_dict(), "paper_default": paper_label, "front": [r.as_dict() for r in result.front],
        "points": [r.as_dict() for r in result.rows], "provenance": provenance,
        "distinct_points": len(points), "requested_alphas": list(space.alphas),
        "requested_windows": [list(w) for w in space.window_options()], "drift_checks": result.drift_checks,
        "note": FLAT_ACCURACY_NOTE,
    }
    files["json"] = pareto.write_json(summary, out / "search.json")
    return files
