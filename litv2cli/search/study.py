"""Optuna storage, studies and the worker loop that evaluates each point of a space exactly once.

The study's state lives in the storage, so any process can pick up the work: re-running the
same command continues the study, and several processes on one study split the points.

- Storage: any of `litv2cli.search.storage` (SQLite, an Optuna RDB URL such as PostgreSQL, a
  journal file); every rule below holds on each.
- Heartbeats, the same on every storage: a running trial's worker writes the time into the
  trial's user attribute `heartbeat` every 30 s. A RUNNING trial silent for the grace period
  (120 s; counted from its start if it never beat) belongs to a dead worker: any worker marks it
  failed and its point is evaluated again. Optuna's own heartbeats exist for RDB storages only
  and begin after the trial is created, so a worker killed in between would leave a trial
  RUNNING forever. A heartbeat is the writer's `time.time()`, compared with the reader's:
  hosts' clocks must agree to well within grace period minus interval (90 s), as NTP keeps them.
- Every trial suggests one categorical parameter, `point`, whose values are the labels of the
  space's distinct points (`a0.9-w2.1`); alpha, windows and heads are stored as user attributes.
- Duplicate guard: `GridSampler` can give the same point to two workers. Before evaluating, a
  trial looks in the storage for another trial of the same point that is running, complete,
  pruned, or failed for a recorded reason; if there is one it does not evaluate, records
  `duplicate_of` and ends as PRUNED. Of two trials that race, at most one evaluates.
- Failures: an exception in the evaluation (out of memory, an invalid point, a proxy crash)
  fails the trial with its reason in the user attribute `fail_reason`; the study goes on. A
  failed point is not tried again unless `retry_failed`. A trial stopped by Ctrl-C
  (`fail_reason: interrupted`) or by a dead worker (failed by heartbeat, no reason) is
  evaluated again when the study is resumed.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from litv2cli.errors import UserError
from litv2cli.search.space import Point
from litv2cli.search.storage import default_storage_url, open_storage, redact  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

PARAM = "point"
FAIL_REASON = "fail_reason"
DUPLICATE_OF = "duplicate_of"
INTERRUPTED = "interrupted"
HEARTBEAT = "heartbeat"  # user attribute: epoch seconds of the worker's last sign of life
HEARTBEAT_INTERVAL_S = 30
GRACE_PERIOD_S = 120

Evaluate = Callable[[optuna.Trial, Point], Sequence[float] | float]

# The storage each study was opened on, so that a trial can be failed from outside its objective
# through public storage methods: Optuna's `Study` does not expose its storage.
_STORAGES: weakref.WeakKeyDictionary[optuna.Study, optuna.storages.BaseStorage] = weakref.WeakKeyDictionary()


def open_study(storage: optuna.storages.BaseStorage, name: str, *, directions: Sequence[str],
               fingerprint: dict[str, Any], sampler: optuna.samplers.BaseSampler,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create or load `name`; a study made for another space or other objectives is refused."""
    study = optuna.create_study(storage=storage, study_name=name, directions=list(directions), sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    stored_directions = [d.name.lower() for d in study.directions]
    if stored_directions != list(directions):
        raise UserError(f"study {name!r} was created with directions {stored_directions}, this run needs "
                        f"{list(directions)}; pass another --study to start a separate study")
    wanted = json.loads(json.dumps(fingerprint))
    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", wanted)
    elif stored != wanted:
        key = next((k for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)), "?")
        raise UserError(f"study {name!r} was created with a different {key} ({stored.get(key)!r}, now "
                        f"{wanted.get(key)!r}); pass another --study, or the original flags to continue it")
    if isinstance(storage, optuna.storages.BaseStorage):
        _STORAGES[study] = storage
    return study


SAMPLERS = ("grid", "tpe", "nsga2")


def make_sampler(kind: str, labels: Sequence[str], *, seed: int | None = None) -> optuna.samplers.BaseSampler:
    if kind == "grid":
        return optuna.samplers.GridSampler({PARAM: list(labels)}, seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, len(labels) // 2)))
    raise UserError(f"--sampler {kind}: choose {', '.join(SAMPLERS[:-1])} or {SAMPLERS[-1]}")


@dataclass
class WorkerReport:
    """What this process did to the study."""

    evaluated: list[int] = field(default_factory=list)  # trial numbers completed here
    failed: list[int] = field(default_factory=list)
    pruned: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class PointStatus:
    done: set[str]  # complete, pruned, or failed for a recorded reason (and not retried)
    running: set[str]
    pending: list[str]  # to evaluate, in the space's order
    fresh: set[str]  # pending points no trial has touched (the grid sampler's unvisited points)


def evaluated_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that evaluated (or are evaluating) a point: everything but duplicates and queued ones."""
    return [t for t in study.get_trials(deepcopy=False) if PARAM in t.params and DUPLICATE_OF not in t.user_attrs
            and t.state != TrialState.WAITING]


def final_trials(study: optuna.Study, accept: Callable[[FrozenTrial], bool]) -> dict[str, FrozenTrial]:
    """Per point label, the trial that settles it: a COMPLETE trial if there is one, else the last
    trial `accept`ed (a retried point has several)."""
    final: dict[str, FrozenTrial] = {}
    for trial in evaluated_trials(study):
        label = trial.params[PARAM]
        if accept(trial) and (label not in final or final[label].state != TrialState.COMPLETE):
            final[label] = trial
    return final


def point_status(study: optuna.Study, labels: Sequence[str], *, retry_failed_before: datetime | None = None,
                 attempted: set[str] = frozenset()) -> PointStatus:
    """Classify every label from the storage; `attempted` points are not handed out twice per run."""
    by_label: dict[str, list[FrozenTrial]] = {label: [] for label in labels}
    for trial in evaluated_trials(study):
        if trial.params[PARAM] in by_label:
            by_label[trial.params[PARAM]].append(trial)
    done, running, pending, fresh = set(), set(), [], set()
    for label, trials in by_label.items():
        if any(_owns(t, retry_failed_before) for t in trials if t.state != TrialState.RUNNING):
            done.add(label)
        elif any(t.state == TrialState.RUNNING for t in trials):
            running.add(label)
        elif label not in attempted:
            pending.append(label)
            if not trials:
                fresh.add(label)
    return PointStatus(done=done, running=running, pending=pending, fresh=fresh)


def run_points(study: optuna.Study, points: Sequence[Point], evaluate: Evaluate, *, max_points: int | None = None,
               retry_failed: bool = False, on_trial: Callable[[FrozenTrial], None] | None = None,
               choices: Sequence[str] | None = None) -> WorkerReport:
    """Evaluate the study's pending `points` until none is left (or the study holds `max_points`
    evaluated points); safe to run in several processes at once. Ctrl-C propagates and leaves
    the study resumable. `choices` (default: the points' labels) are the values of the `point`
    parameter's distribution: keep them fixed for a study even when `points` is a subset."""
    by_label = {p.label: p for p in points}
    labels = list(by_label)
    choices = list(choices) if choices is not None else labels
    started = datetime.now()
    retry_before = started if retry_failed else None
    attempted: set[str] = set()
    report = WorkerReport()
    last_was_duplicate = False
    fail_abandoned_trials(study)
    while True:
        status = point_status(study, labels, retry_failed_before=retry_before, attempted=attempted)
        if not status.pending:
            break
        if max_points is not None and len(status.done | status.running) >= max_points:
            break
        # The sampler chooses among fresh points; a point to try again (interrupted, stale) or a
        # sampler that keeps proposing finished points gets an explicit, queued trial instead.
        if not status.fresh or last_was_duplicate:
            study.enqueue_trial({PARAM: random.choice(status.pending)})
        started_trial: list[int] = []
        try:
            study.optimize(_objective(study, by_label, choices, evaluate, retry_before, attempted, started_trial),
                           n_trials=1, catch=(Exception,))
        except BaseException as exc:
            if not _interrupted(exc):
                raise
            if started_trial:
                _fail_if_running(study, started_trial[0])
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise KeyboardInterrupt from exc  # what the CLI reports as an interrupt, not a traceback
        trial = _trial_by_number(study, started_trial[0]) if started_trial else None
        last_was_duplicate = trial is not None and DUPLICATE_OF in trial.user_attrs
        if trial is None:
            continue
        if trial.state == TrialState.FAIL and PARAM not in trial.params:  # it never reached a point: no progress
            reason = trial.system_attrs.get("fail_reason", "unknown error").strip().splitlines()[-1]
            raise UserError(f"study {study.study_name}: trial {trial.number} failed before choosing a point ({reason})")
        if last_was_duplicate:
            report.duplicates.append(trial.number)
        elif trial.state == TrialState.COMPLETE:
            report.evaluated.append(trial.number)
        elif trial.state == TrialState.FAIL:
            report.failed.append(trial.number)
        elif trial.state == TrialState.PRUNED:
            report.pruned.append(trial.number)
        if on_trial is not None:
            on_trial(trial)
    return report


def _interrupted(exc: BaseException | None) -> bool:
    """Whether Ctrl-C / SIGTERM caused `exc`. Optuna 5 turns an interrupt inside its `tell` into
    an UnboundLocalError raised while handling it."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__context__
    return False


def _fail_if_running(study: optuna.Study, number: int) -> None:
    """Fail this worker's own trial as interrupted if Optuna did not get to record its end: an
    interrupt that lands in Optuna's bookkeeping after the objective (its `tell`) would otherwise
    leave it RUNNING, and the next run would wait out the heartbeat's grace period for it."""
    trial = _trial_by_number(study, number)
    if trial is not None and trial.state == TrialState.RUNNING:
        _mark_failed(study, trial, INTERRUPTED)


def fail_abandoned_trials(study: optuna.Study, grace_period: float = GRACE_PERIOD_S) -> list[int]:
    """Mark failed every RUNNING trial whose worker has been silent for `grace_period` seconds
    (no heartbeat, or none since its start); returns their numbers. Their points become pending.

    Unlike `optuna.storages.fail_stale_trials`, which reads Optuna's own heartbeats (RDB storages
    with `heartbeat_interval` only, beginning after the trial is created) and runs the storage's
    failure callback, this reads the `heartbeat` user attribute this module writes, on every
    storage, and counts a trial that never beat from its start: see the module's docstring."""
    now = time.time()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        seen = trial.user_attrs.get(HEARTBEAT)
        if seen is None and trial.datetime_start is not None:
            seen = trial.datetime_start.timestamp()
        if seen is None or now - float(seen) <= grace_period:
            continue
        if not _mark_failed(study, trial):
            continue
        failed.append(trial.number)
        log.warning("trial %d: no heartbeat for %.0f s, its worker is gone; marked failed", trial.number, now - seen)
    return failed


def _mark_failed(study: optuna.Study, trial: FrozenTrial, reason: str | None = None) -> bool:
    """Fail a RUNNING trial from outside its objective (with `reason` as its `fail_reason`);
    False when it finished or failed meanwhile. `Study.tell` would also run the sampler's
    `after_trial`, so this writes to the storage as Optuna's own stale-trial check does."""
    storage = _storage_of(study)
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), trial.number)
        if reason is not None:
            storage.set_trial_user_attr(trial_id, FAIL_REASON, reason)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
        return False
    return True


def _storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage `study` reads and writes: the one `open_study` was given. Optuna has no public
    accessor for it, so for a study opened some other way this falls back to `Study._storage`,
    the one private attribute read here."""
    storage = _STORAGES.get(study)
    return storage if storage is not None else study._storage


class Heartbeat:
    """While the block runs, a daemon thread writes the time into the trial's `heartbeat` every
    `interval` seconds, so other workers can tell a slow trial from a dead one."""

    def __init__(self, trial: optuna.Trial, interval: float = HEARTBEAT_INTERVAL_S):
        self.trial, self.interval = trial, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat_until_stopped, name=f"heartbeat-{trial.number}",
                                        daemon=True)

    def __enter__(self) -> Heartbeat:
        self.trial.set_user_attr(HEARTBEAT, time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.trial.set_user_attr(HEARTBEAT, time.time())
            except Exception as exc:  # the trial was failed by another worker, or the storage is gone
                log.warning("trial %d: heartbeat stopped: %s", self.trial.number, _one_line(exc))
                return


# --- internals ---------------------------------------------------------------------------


def _owns(trial: FrozenTrial, retry_failed_before: datetime | None) -> bool:
    """Whether this finished trial settles its point (so no other trial may evaluate it)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if trial.state != TrialState.FAIL:
        return False
    reason = trial.user_attrs.get(FAIL_REASON)
    if reason is None or reason == INTERRUPTED:  # killed worker or Ctrl-C: evaluate again
        return False
    if retry_failed_before is not None and trial.datetime_complete is not None \
            and trial.datetime_complete < retry_failed_before:
        return False
    return True


def _objective(study: optuna.Study, by_label: dict[str, Point], choices: list[str], evaluate: Evaluate,
               retry_before: datetime | None, attempted: set[str], started_trial: list[int]):
    def objective(trial: optuna.Trial):
        started_trial.append(trial.number)
        try:
            label = trial.suggest_categorical(PARAM, choices)
            attempted.add(label)
            if label not in by_label:  # a sampler that proposes outside this run's subset
                trial.set_user_attr(DUPLICATE_OF, -1)
                raise optuna.TrialPruned(f"{label} is not among the points of this run")
            owner = _other_owner(study, label, trial.number, retry_before)
            if owner is not None:
                trial.set_user_attr(DUPLICATE_OF, owner)
                raise optuna.TrialPruned(f"{label} is already taken by trial {owner}")
            with Heartbeat(trial):
                return _evaluate(trial, by_label[label], evaluate)
        except KeyboardInterrupt:  # wherever it lands in the trial, Ctrl-C / SIGTERM marks it to be redone
            trial.set_user_attr(FAIL_REASON, INTERRUPTED)
            raise
    return objective


def _evaluate(trial: optuna.Trial, point: Point, evaluate: Evaluate) -> Sequence[float] | float:
    """Evaluate one point; a failure's reason goes into the trial (Ctrl-C: see `_objective`)."""
    trial.set_user_attr("alpha", point.alpha)
    trial.set_user_attr("alphas", list(point.alphas))
    trial.set_user_attr("window", list(point.window))
    trial.set_user_attr("lofi_heads", list(point.lofi_heads))
    try:
        values = evaluate(trial, point)
        flat = [values] if isinstance(values, (int, float)) else list(values)
        if not all(math.isfinite(v) for v in flat):
            raise FloatingPointError(f"non-finite objective values {flat}")
    except optuna.TrialPruned:
        raise
    except Exception as exc:
        trial.set_user_attr(FAIL_REASON, _one_line(exc))
        log.warning("point %s failed: %s", point.label, _one_line(exc))
        raise
    return values


def _other_owner(study: optuna.Study, label: str, number: int, retry_before: datetime | None) -> int | None:
    """The number of another trial that has evaluated, or is evaluating, `label`. Of two trials
    that chose the same point at once and see each other running, the one with the lower number
    goes on (unless the other has already started: its first heartbeat is written); had each
    deferred to the other, the point would have been left to nobody."""
    for trial in evaluated_trials(study):
        if trial.number == number or trial.params.get(PARAM) != label:
            continue
        started = trial.number < number or HEARTBEAT in trial.user_attrs
        if (trial.state == TrialState.RUNNING and started) or _owns(trial, retry_before):
            return trial.number
    return None


def _trial_by_number(study: optuna.Study, number: int) -> FrozenTrial | None:
    return next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)


def _one_line(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text[:300]}"
