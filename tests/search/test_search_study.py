"""The study on top of Optuna's storage: failures recorded, resumable, no point evaluated twice.

Every test runs on each storage backend we support for workers (SQLite and the journal file),
with a cheap stand-in evaluation so that only the study machinery is under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from litv2cli.errors import UserError
from litv2cli.search.space import SearchSpace
from litv2cli.search.study import (
    DUPLICATE_OF, FAIL_REASON, INTERRUPTED, make_sampler, open_storage, open_study, point_status, run_points,
)

REPO = Path(__file__).resolve().parents[2]
SPACE = SearchSpace(variant="t", num_heads=(1, 2, 4, 8), alphas=(0.0, 0.25, 0.5, 0.75, 1.0), windows=(1, 2),
                    per_stage_window=False, resolution=(64, 64))
POINTS = SPACE.points()  # 5 alphas x s=2, plus one global point: 6
LABELS = [p.label for p in POINTS]

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(params=["sqlite", "journal"])
def storage_url(request, tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'search.db'}" if request.param == "sqlite" else str(tmp_path / "search.log")


def new_study(url: str, name: str = "study"):
    return open_study(open_storage(url), name, directions=["maximize"], fingerprint=SPACE.fingerprint(),
                      sampler=make_sampler("grid", LABELS))


def by_state(study, state):
    return sorted(t.params["point"] for t in study.trials if t.state == state and DUPLICATE_OF not in t.user_attrs)


def test_grid_evaluates_every_distinct_point_once(storage_url):
    study = new_study(storage_url)
    seen = []
    report = run_points(study, POINTS, lambda trial, point: seen.append(point.label) or point.alpha)
    assert sorted(seen) == sorted(LABELS) and len(report.evaluated) == len(POINTS) == 6
    assert len(study.trials) == 6 and by_state(study, TrialState.COMPLETE) == sorted(LABELS)


def test_failing_point_is_recorded_with_its_reason_and_the_study_goes_on(storage_url):
    study = new_study(storage_url)
    broken = LABELS[2]

    def evaluate(trial, point):
        if point.label == broken:
            raise RuntimeError("CUDA out of memory (simulated)\nsecond line")
        return point.alpha

    report = run_points(study, POINTS, evaluate)
    assert len(report.evaluated) == 5 and len(report.failed) == 1
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.params["point"] for t in failed] == [broken]
    assert failed[0].user_attrs[FAIL_REASON] == "RuntimeError: CUDA out of memory (simulated) second line"


def test_rerunning_a_finished_study_adds_no_trial_and_evaluates_nothing(storage_url):
    study = new_study(storage_url)
    run_points(study, POINTS, lambda trial, point: (_ for _ in ()).throw(ValueError("bad point"))
               if point.label == LABELS[0] else point.alpha)
    count = len(study.trials)
    again = new_study(storage_url)  # a new process opening the same study
    calls = []
    report = run_points(again, POINTS, lambda trial, point: calls.append(point.label) or 0.0)
    assert calls == [] and report.evaluated == [] and len(again.trials) == count


def test_retry_failed_evaluates_an_old_failure_exactly_once_more(storage_url):
    study = new_study(storage_url)
    run_points(study, POINTS, lambda trial, point: (_ for _ in ()).throw(ValueError("flaky"))
               if point.label == LABELS[1] else point.alpha)
    attempts = []

    def still_broken(trial, point):
        attempts.append(point.label)
        raise ValueError("still broken")

    run_points(new_study(storage_url), POINTS, still_broken, retry_failed=True)
    assert attempts == [LABELS[1]]


def test_interrupted_study_resumes_where_it_stopped(storage_url):
    study = new_study(storage_url)
    done = []

    def interrupted_at_third(trial, point):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(point.label)
        return point.alpha

    with pytest.raises(KeyboardInterrupt):
        run_points(study, POINTS, interrupted_at_third)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs[FAIL_REASON] == INTERRUPTED
    resumed = []
    run_points(new_study(storage_url), POINTS, lambda trial, point: resumed.append(point.label) or point.alpha)
    assert sorted(done + resumed) == sorted(LABELS)  # nothing evaluated twice, nothing left out
    assert failed[0].params["point"] in resumed
    assert by_state(new_study(storage_url), TrialState.COMPLETE) == sorted(LABELS)


def test_an_interrupt_in_optunas_bookkeeping_still_leaves_no_trial_running(storage_url, monkeypatch):
    """Ctrl-C can land after the objective returned, while Optuna records the trial's end."""
    import optuna.study._optimize as optimize

    tell, calls = optimize._tell_with_warning, []

    def interrupted_third_tell(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return tell(*args, **kwargs)

    monkeypatch.setattr(optimize, "_tell_with_warning", interrupted_third_tell)
    study = new_study(storage_url)
    with pytest.raises(KeyboardInterrupt):
        run_points(study, POINTS, lambda trial, point: point.alpha)
    states = [(t.state, t.user_attrs.get(FAIL_REASON)) for t in study.trials]
    assert states[:2] == [(TrialState.COMPLETE, None)] * 2 and states[2] == (TrialState.FAIL, INTERRUPTED), states
    monkeypatch.setattr(optimize, "_tell_with_warning", tell)
    run_points(new_study(storage_url), POINTS, lambda trial, point: point.alpha)  # at once, no grace period
    assert by_state(new_study(storage_url), TrialState.COMPLETE) == sorted(LABELS)


class AlwaysProposes(optuna.samplers.BaseSampler):
    """A sampler that keeps proposing one point, as TPE or a racing grid worker can."""

    def __init__(self, label: str):
        self.label = label

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.label


def test_a_point_running_elsewhere_is_left_to_its_worker(storage_url):
    study = new_study(storage_url)
    other = study.ask()  # another worker's trial, still running
    held = other.suggest_categorical("point", LABELS)
    calls = []
    run_points(study, POINTS, lambda trial, point: calls.append(point.label) or 1.0)
    assert held not in calls and sorted(calls) == sorted(set(LABELS) - {held})
    assert point_status(study, LABELS).running == {held}


def test_a_sampler_proposing_a_taken_point_gets_a_recorded_duplicate_not_a_second_evaluation(storage_url):
    first = new_study(storage_url)
    run_points(first, POINTS[:1], lambda trial, point: 1.0, choices=LABELS)
    taken = POINTS[0].label
    study = open_study(open_storage(storage_url), "study", directions=["maximize"], fingerprint=SPACE.fingerprint(),
                       sampler=AlwaysProposes(taken))
    before = len(study.trials)
    calls = []
    report = run_points(study, POINTS, lambda trial, point: calls.append(point.label) or 1.0)
    assert taken not in calls and sorted(calls) == sorted(LABELS[1:] if LABELS[0] == taken else
                                                            set(LABELS) - {taken})
    duplicates = [t for t in study.trials[before:] if DUPLICATE_OF in t.user_attrs]
    assert duplicates and len(report.duplicates) == len(duplicates)
    assert all(t.state == TrialState.PRUNED and t.params["point"] == taken for t in duplicates)
    assert by_state(study, TrialState.COMPLETE) == sorted(LABELS)


def test_a_study_made_for_another_space_is_refused(storage_url):
    new_study(storage_url, name="shared")
    other = SearchSpace(variant="t", num_heads=(1, 2, 4, 8), alphas=(0.5,), windows=(2,), per_stage_window=False,
                        resolution=(64, 64))
    with pytest.raises(UserError, match="different points"):
        open_study(open_storage(storage_url), "shared", directions=["maximize"], fingerprint=other.fingerprint(),
                   sampler=make_sampler("grid", [p.label for p in other.points()]))
    with pytest.raises(UserError, match="directions"):
        open_study(open_storage(storage_url), "shared", directions=["minimize"], fingerprint=SPACE.fingerprint(),
                   sampler=make_sampler("grid", LABELS))


def test_bad_storage_urls_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="storage URL"):
        open_storage("not-a-url")
    with pytest.raises(UserError, match="does not exist"):
        open_storage(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")


WORKER = textwrap.dedent("""
    import os, sys, time, optuna
    from litv2cli.search.space import SearchSpace
    from litv2cli.search.study import make_sampler, open_storage, open_study, run_points
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url, log = sys.argv[1], sys.argv[2]
    space = SearchSpace(variant="t", num_heads=(1, 2, 4, 8), alphas=tuple(i / 10 for i in range(11)),
                        windows=(1, 2, 4), per_stage_window=True, resolution=(64, 64))
    points = space.points()
    study = open_study(open_storage(url), "shared", directions=["maximize"], fingerprint=space.fingerprint(),
                       sampler=make_sampler("grid", [p.label for p in points]))
    def evaluate(trial, point):
        with open(log, "a") as handle:
            handle.write(f"{point.label} {os.getpid()}\\n")
        time.sleep(0.05)
        return point.alpha
    run_points(study, points, evaluate)
""")


@pytest.mark.slow
def test_two_processes_split_one_grid_with_no_point_evaluated_twice(storage_url, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    log = tmp_path / "evaluations.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, str(script), storage_url, str(log)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-2000:]
    lines = [line.split() for line in log.read_text().splitlines()]
    labels = [label for label, _ in lines]
    space = SearchSpace(variant="t", num_heads=(1, 2, 4, 8), alphas=tuple(i / 10 for i in range(11)),
                        windows=(1, 2, 4), per_stage_window=True, resolution=(64, 64))
    expected = sorted(p.label for p in space.points())
    assert sorted(labels) == expected  # every point once, none twice
    assert len({pid for _, pid in lines}) == 2  # both workers did part of the grid
    study = optuna.load_study(study_name="shared", storage=open_storage(storage_url))
    complete = [t.params["point"] for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(complete) == expected


@pytest.mark.parametrize("kind", ["tpe", "nsga2"])
def test_model_based_samplers_also_cover_every_point_once(kind, tmp_path):
    study = open_study(open_storage(f"sqlite:///{tmp_path / 'search.db'}"), "study", directions=["maximize", "minimize"],
                       fingerprint=SPACE.fingerprint(), sampler=make_sampler(kind, LABELS, seed=0))
    calls = []
    report = run_points(study, POINTS, lambda trial, point: calls.append(point.label) or (point.alpha, 1 - point.alpha))
    assert sorted(calls) == sorted(LABELS)  # proposals of finished points became duplicates, not evaluations
    assert len(report.evaluated) == len(LABELS)


def test_trial_budget_stops_the_study_at_that_many_points(storage_url):
    study = new_study(storage_url)
    run_points(study, POINTS, lambda trial, point: 1.0, max_points=4)
    assert len(by_state(study, TrialState.COMPLETE)) == 4
    run_points(new_study(storage_url), POINTS, lambda trial, point: 1.0, max_points=4)  # budget already reached
    assert len(by_state(new_study(storage_url), TrialState.COMPLETE)) == 4
