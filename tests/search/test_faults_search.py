"""`litv2 search` under faults: a worker killed mid-trial, corrupt or unreachable storage.

A killed worker must leave the study consistent: its trial is never COMPLETE, and running the
same command again evaluates what is missing, each point once. Broken storage is one clear line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from litv2cli.cli.main import main
from litv2cli.search.runner import sigterm_as_interrupt, stop_if_asked
from litv2cli.search.space import SearchSpace
from litv2cli.search.study import (
    DUPLICATE_OF, HEARTBEAT, Heartbeat, fail_abandoned_trials, make_sampler, open_storage, open_study, run_points,
)

REPO = Path(__file__).resolve().parents[2]
# 5 points (alpha 0, 0.25, ..., 1 at window 2); enough timed steps that a trial lasts a moment.
SEARCH = ["search", "--variant", "t", "--res", "32", "--batch-size", "2", "--warmup", "1", "--repeats", "15",
          "--objective", "throughput", "--alpha", "0:1:0.25", "--window", "2", "--no-recipes"]
POINTS = ["a0-w2.1", "a0.25-w2.1", "a0.5-w2.1", "a0.75-w2.1", "a1-w2.1"]
STUDY = "litv2-t-32x32-b2-infer"

optuna.logging.set_verbosity(optuna.logging.ERROR)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def storage_args(kind: str, out: Path) -> tuple[list[str], str]:
    """(the --storage flags, the storage URL) of a backend: default SQLite, or a journal file."""
    if kind == "sqlite":
        return [], f"sqlite:///{out / 'search.db'}"
    return ["--storage", str(out / "search.log")], str(out / "search.log")


def trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=open_storage(url)).trials


def evaluating(kind: str, url: str) -> tuple[int, int] | None:
    """(completed trials, number of a trial that has chosen its point and is still running), once both
    exist. Reads without creating anything: the worker must be the one that creates the storage."""
    if kind == "sqlite":
        try:
            with sqlite3.connect(f"file:{url.removeprefix('sqlite:///')}?mode=ro", uri=True, timeout=1) as db:
                rows = db.execute("SELECT t.number, t.state FROM trials t JOIN trial_params p ON p.trial_id = "
                                  "t.trial_id WHERE p.param_name = 'point'").fetchall()
        except sqlite3.Error:  # not created yet, or locked for a moment
            return None
    else:
        if not Path(url).is_file():
            return None
        try:
            rows = [(t.number, t.state.name) for t in trials(url) if "point" in t.params]
        except Exception:  # the study does not exist yet
            return None
    complete = [number for number, state in rows if state == "COMPLETE"]
    running = [number for number, state in rows if state == "RUNNING"]
    return (len(complete), running[0]) if complete and running else None


def kill_mid_trial(command: list[str], kind: str, url: str, timeout: float = 240.0) -> tuple[int, int]:
    """Start the search in its own process group and SIGKILL all of it while a point is being measured.

    The group is stopped (SIGSTOP) before the storage is read for the last time, so the trial seen
    running is the one that dies running, not one that finished in between.
    """
    errors = tempfile.TemporaryFile("w+")
    process = subprocess.Popen([sys.executable, "-m", "litv2cli.cli.main", *command], stdout=subprocess.DEVNULL,
                               stderr=errors, text=True, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if evaluating(kind, url) is not None:
                os.killpg(process.pid, signal.SIGSTOP)
                state = evaluating(kind, url)
                if state is not None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    return state
                os.killpg(process.pid, signal.SIGCONT)
            time.sleep(0.05)
        errors.seek(0)
        raise AssertionError(f"no trial was caught mid-measurement; exit {process.poll()}: {errors.read()[-2000:]}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        errors.close()


@contextmanager
def time_limit(seconds: int):
    """Fail instead of hanging: a search waits for points it believes other workers are evaluating."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def backdate_heartbeats(url: str) -> None:
    """As if the grace period (120 s) had passed since the killed worker's last heartbeat."""
    storage = open_storage(url)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    study_id = storage.get_study_id_from_name(STUDY)
    running = study.get_trials(states=(TrialState.RUNNING,))
    assert running
    for trial in running:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, HEARTBEAT, 0.0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_worker_killed_mid_trial_leaves_a_study_that_a_rerun_completes_once_per_point(kind, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    flags, url = storage_args(kind, out)
    command = [*SEARCH, *flags, "--output", str(out)]
    completed_before, killed = kill_mid_trial(command, kind, url)

    after_kill = {t.number: t for t in trials(url)}
    assert after_kill[killed].state == TrialState.RUNNING  # never counted as complete
    assert all(t.values is not None for t in after_kill.values() if t.state == TrialState.COMPLETE)
    killed_point = after_kill[killed].params["point"]

    backdate_heartbeats(url)
    with time_limit(120):
        assert main(command) == 0, capsys.readouterr().err
    measured_now = re.findall(r"\btrial \d+: \S+: [\d.]+ images/s", capsys.readouterr().out)

    final = [t for t in trials(url) if DUPLICATE_OF not in t.user_attrs]
    complete = [t for t in final if t.state == TrialState.COMPLETE]
    assert sorted(t.params["point"] for t in complete) == POINTS  # every point once
    assert all(t.values is not None and t.values[0] > 0 for t in complete)
    assert next(t for t in final if t.number == killed).state == TrialState.FAIL
    assert next(t for t in complete if t.params["point"] == killed_point).number > killed  # evaluated again
    assert len(measured_now) == len(POINTS) - completed_before  # nothing finished was measured again
    summary = json.loads((out / STUDY / "search.json").read_text())
    assert sorted(row["label"] for row in summary["points"] if row["status"] == "ok") == POINTS


def test_a_sigterm_stops_the_search_as_ctrl_c_does_and_the_rerun_does_not_wait_for_the_grace_period(
        tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    flags, url = storage_args("sqlite", out)
    command = [*SEARCH, *flags, "--output", str(out)]
    process = subprocess.Popen([sys.executable, "-m", "litv2cli.cli.main", *command], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None and evaluating("sqlite", url) is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # a scheduler's pre-emption: to the search alone
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted: the study is kept" in stdout and "Traceback" not in stderr
    states = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials(url)]
    assert any(state == "FAIL" for _, state, _ in states), states  # the trial it was measuring
    assert all(reason == "interrupted" for _, state, reason in states if state == "FAIL"), states
    assert not any(state == "RUNNING" for _, state, _ in states), states

    with time_limit(100):  # less than the heartbeat's grace period: the point is pending at once
        assert main(command) == 0, capsys.readouterr().err
    complete = [t for t in trials(url) if t.state == TrialState.COMPLETE and DUPLICATE_OF not in t.user_attrs]
    assert sorted(t.params["point"] for t in complete) == POINTS


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_python_swallows_still_stops_the_search_at_the_next_measurement(signal_number, capsys):
    # A handler's exception raised inside a weakref callback (SQLAlchemy's, during garbage
    # collection) is printed as "Exception ignored" and dropped; the search must stop anyway.
    class Collected:
        pass

    def callback(_reference) -> None:
        os.kill(os.getpid(), signal_number)
        time.sleep(0.05)  # the handler runs here, inside the callback

    with sigterm_as_interrupt():
        stop_if_asked()  # nothing asked yet
        thing = Collected()
        reference = weakref.ref(thing, callback)
        del thing  # the callback runs; its KeyboardInterrupt is swallowed
        assert reference() is None
        with pytest.raises(KeyboardInterrupt):
            stop_if_asked()
    assert "Traceback" not in capsys.readouterr().err  # not printed as "Exception ignored"


def test_a_trial_killed_before_its_first_heartbeat_is_evaluated_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'search.db'}"
    space = SearchSpace(variant="t", num_heads=(1, 2, 4, 8), alphas=(0.0, 1.0), windows=(2,), per_stage_window=False,
                        resolution=(64, 64))
    points = space.points()
    labels = [p.label for p in points]

    def study() -> optuna.Study:
        return open_study(open_storage(url), "study", directions=["maximize"], fingerprint=space.fingerprint(),
                          sampler=make_sampler("grid", labels))

    orphan = study().ask()  # what the killed worker left: a trial that chose its point, and no heartbeat
    orphan.suggest_categorical("point", labels)
    with sqlite3.connect(tmp_path / "search.db") as db:  # ...long before the grace period
        db.execute("UPDATE trials SET datetime_start = '2000-01-01 00:00:00.000000'")
    evaluated: list[str] = []
    run_points(study(), points, lambda trial, point: evaluated.append(point.label) or 1.0)
    assert sorted(evaluated) == sorted(labels)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_beating_trial_stays_running_and_a_silent_one_is_failed(kind, tmp_path):
    url = f"sqlite:///{tmp_path / 'search.db'}" if kind == "sqlite" else str(tmp_path / "search.log")
    study = open_study(open_storage(url), "study", directions=["maximize"], fingerprint={},
                       sampler=make_sampler("grid", ["a", "b"]))
    trial = study.ask()

    def last_beat() -> float:
        return study.get_trials(deepcopy=False)[0].user_attrs[HEARTBEAT]

    with Heartbeat(trial, interval=0.02):
        first = last_beat()
        deadline = time.monotonic() + 30
        while last_beat() == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert last_beat() > first  # the thread beats, not only the start
        assert fail_abandoned_trials(study, grace_period=30) == []
    time.sleep(0.1)
    assert fail_abandoned_trials(study, grace_period=0.05) == [trial.number]
    assert study.get_trials()[0].state == TrialState.FAIL


def search_with_storage(tmp_path: Path, storage: str) -> list[str]:
    return [*SEARCH, "--alpha", "0", "--output", str(tmp_path / "out"), "--storage", storage]


def garbage(path: Path) -> Path:
    path.write_bytes(bytes(range(200, 256)) * 64)  # neither SQLite's header nor UTF-8 text
    return path


def test_a_corrupt_sqlite_file_is_one_clear_line_and_is_left_as_it_was(tmp_path, capsys):
    database = garbage(tmp_path / "search.db")
    before = database.read_bytes()
    assert main(search_with_storage(tmp_path, f"sqlite:///{database}")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("litv2: error: cannot open storage") and "not a database" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert database.read_bytes() == before


@pytest.mark.parametrize("storage, fragment", [
    ("sqlite:///{tmp}", "unable to open database file"),  # a directory where the database file should be
    ("sqlite:///{tmp}/no-such-dir/search.db", "does not exist"),
    ("postgresql://someone:secret-password@127.0.0.1:1/litv2", "someone:***@"),  # no driver here, or no server
    ("journal:{tmp}", "is a directory"),
    ("journal:{garbage}", "not an Optuna journal"),
], ids=["sqlite-directory", "sqlite-missing-directory", "postgresql-no-driver-or-server", "journal-directory",
        "journal-garbage"])
def test_unreachable_or_unreadable_storage_is_one_clear_line(storage, fragment, tmp_path, capsys):
    url = storage.format(tmp=tmp_path, garbage=garbage(tmp_path / "garbage.log"))
    assert main(search_with_storage(tmp_path, url)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("litv2: error:") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert fragment in err and "secret-password" not in err
    assert (tmp_path / "garbage.log").read_bytes() == bytes(range(200, 256)) * 64  # a wrong file is left as it was
