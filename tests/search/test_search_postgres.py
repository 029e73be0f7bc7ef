"""`litv2 search` with many workers on a real PostgreSQL server (a throw-away cluster started by
`postgres_server`): the grid split once among workers, workers killed, interrupted or racing to
create the tables, the server stopped mid-search, a wrong password, and the recipe the same as
SQLite's for the same measurements.

Kept small for 2 CPU cores: LITv2-T at 64x64, batch 2, 6 points (alpha 0, 0.5, 1 give 0, 1 and 2
Lo-Fi heads of 2 in stage 3; windows 2 and 4), a fraction of a second each.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from litv2cli.cli.main import main
from litv2cli.errors import UserError
from litv2cli.search.storage import STORAGE_ENV, mask_secret, redact, resolve_storage_url
from litv2cli.search.space import SearchSpace
from litv2cli.search.study import (
    DUPLICATE_OF, FAIL_REASON, HEARTBEAT, INTERRUPTED, PARAM, make_sampler, open_storage, open_study, run_points,
)
from tests.helpers.postgres_server import PostgresServer, postgres_server

REPO = Path(__file__).resolve().parents[2]
SEARCH = ["search", "--variant", "t", "--res", "64", "--batch-size", "2", "--warmup", "1", "--repeats", "20",
          "--objective", "throughput", "--alpha", "0,0.5,1", "--window", "2,4"]
POINTS = sorted(["a0-w2.1", "a0.5-w2.1", "a1-w2.1", "a0-w4.1", "a0.5-w4.1", "a1-w4.1"])
STUDY = "litv2-t-64x64-b2-infer"
URL_ENV = "LITV2_TEST_POSTGRES_URL"  # what `--storage env:...` names in these tests

optuna.logging.set_verbosity(optuna.logging.ERROR)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with postgres_server() as started:
        yield started


@pytest.fixture
def database(server: PostgresServer) -> str:
    """The URL of a new, empty database on the module's server."""
    if not server.running():  # a test that stopped it failed before starting it again
        server.start()
    return server.create_database()


# --- helpers ---------------------------------------------------------------------------------


def start_worker(url: str, output: Path, *flags: str) -> subprocess.Popen:
    """`litv2 search` in a process (group) of its own, the URL in $LITV2_STORAGE: never on a command line."""
    return subprocess.Popen([sys.executable, "-m", "litv2cli.cli.main", *SEARCH, "--output", str(output),
                             "--no-recipes", *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), STORAGE_ENV: url})


def trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=open_storage(url)).trials


def point_trials(url: str) -> list[tuple[int, str]]:
    """(number, state) of every trial that has chosen its point; [] before the tables exist. Plain
    SQL on one connection: polling must not create anything, nor an engine per look."""
    import psycopg

    from sqlalchemy.engine import make_url

    parts = make_url(url)
    try:
        with psycopg.connect(host=parts.host, port=parts.port, user=parts.username, password=parts.password,
                             dbname=parts.database, autocommit=True, connect_timeout=5) as connection:
            return connection.execute("SELECT t.number, t.state::text FROM trials t JOIN trial_params p ON "
                                      "p.trial_id = t.trial_id WHERE p.param_name = 'point'").fetchall()
    except psycopg.errors.UndefinedTable:
        return []


def wait_until_evaluating(url: str, processes: list[subprocess.Popen], timeout: float = 120) -> tuple[int, int]:
    """(completed trials, a running trial's number) once a point is done and another being measured."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = point_trials(url)
        complete = [n for n, state in rows if state == "COMPLETE"]
        running = [n for n, state in rows if state == "RUNNING"]
        if complete and running:
            return len(complete), running[0]
        if any(p.poll() is not None for p in processes):
            break
        time.sleep(0.05)
    outputs = [p.communicate(timeout=60) if p.poll() is not None else ("", "(running)") for p in processes]
    ends = [(p.returncode, err[-1500:]) for p, (_, err) in zip(processes, outputs)]
    raise AssertionError(f"no trial caught mid-measurement: {ends}")


def kill_mid_trial(url: str, worker: subprocess.Popen, timeout: float = 120) -> tuple[int, int]:
    """SIGKILL the worker's process group while it measures a point: (completed trials, the killed
    trial's number). The group is frozen (SIGSTOP) before the last look, so that the trial seen
    running is the one that dies running, not one that finished in between."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wait_until_evaluating(url, [worker], timeout=deadline - time.monotonic())
        os.killpg(worker.pid, signal.SIGSTOP)
        rows = point_trials(url)
        running = [n for n, state in rows if state == "RUNNING"]
        if running:
            kill_group(worker)
            return sum(state == "COMPLETE" for _, state in rows), running[0]
        os.killpg(worker.pid, signal.SIGCONT)
    raise AssertionError("no trial caught mid-measurement")


def kill_group(process: subprocess.Popen, number: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        os.killpg(process.pid, number)
        process.wait()


@contextmanager
def reaped(processes: list[subprocess.Popen]) -> Iterator[None]:
    """No worker outlives its test, whatever the test's outcome."""
    try:
        yield
    finally:
        for process in processes:
            kill_group(process)


def evaluations(stdout: str) -> list[str]:
    """The points a worker measured, from its per-trial lines."""
    return re.findall(r"\btrial \d+: (\S+): [\d.]+ images/s", stdout)


def backdate_heartbeats(url: str) -> list[int]:
    """As if the heartbeat's grace period (120 s) had passed for every RUNNING trial."""
    storage = open_storage(url)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    study_id = storage.get_study_id_from_name(STUDY)
    running = study.get_trials(states=(TrialState.RUNNING,))
    for trial in running:
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, HEARTBEAT, 0.0)
    return [t.number for t in running]


def assert_every_point_complete_once(url: str) -> list[optuna.trial.FrozenTrial]:
    evaluated = [t for t in trials(url) if DUPLICATE_OF not in t.user_attrs]
    complete = [t for t in evaluated if t.state == TrialState.COMPLETE]
    assert sorted(t.params["point"] for t in complete) == POINTS
    assert all(t.values is not None and t.values[0] > 0 for t in complete)
    # A trial interrupted inside Optuna's `ask`, before it chose a point, may stay RUNNING without
    # one: it holds up no point, and the heartbeat rule fails it after the grace period.
    assert not [t.number for t in evaluated if t.state == TrialState.RUNNING and PARAM in t.params]
    return evaluated


# --- workers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_workers(server: PostgresServer, tmp_path_factory) -> tuple[str, list[tuple[int, str, str]]]:
    """The grid searched by 3 workers started at once on a new database (so they also race to
    create the tables and the study): the URL and each worker's (exit code, stdout, stderr)."""
    url = server.create_database()
    root = tmp_path_factory.mktemp("three-workers")
    workers = [start_worker(url, root / f"worker-{i}") for i in range(3)]  # one --output per machine
    with reaped(workers):
        outputs = [w.communicate(timeout=300) for w in workers]
    return url, [(w.returncode, out, err) for w, (out, err) in zip(workers, outputs)]


@pytest.mark.slow
def test_three_workers_split_the_grid_and_evaluate_every_point_exactly_once(three_workers, server):
    url, results = three_workers
    for code, _, err in results:
        assert code == 0, err[-2000:]
    evaluated = assert_every_point_complete_once(url)
    assert len(evaluated) == len(POINTS)  # no point evaluated twice, not even a failed attempt
    measured = [evaluations(out) for _, out, _ in results]
    assert sorted(sum(measured, [])) == POINTS  # each measurement printed by the worker that made it
    assert sum(bool(points) for points in measured) >= 2  # the work was split
    for _, out, err in results:
        assert f"in {redact(url)}" in out and server.password not in out + err


@pytest.mark.slow
def test_two_workers_racing_to_create_the_tables_and_the_study_both_succeed(server, tmp_path):
    # Raw Optuna loses this race on PostgreSQL about every other time (duplicate key in
    # pg_type while both create the tables); `open_storage` retries it. Several fresh databases,
    # each opened by two processes released at the same instant.
    script = tmp_path / "racer.py"
    script.write_text(textwrap.dedent("""
        import os, sys, time, optuna
        from litv2cli.search.space import SearchSpace
        from litv2cli.search.study import make_sampler, open_storage, open_study, run_points
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        go, urls = sys.argv[1], sys.argv[2:]
        space = SearchSpace(variant="t", num_heads=(1, 2, 4, 8), alphas=(0.0, 0.5, 1.0), windows=(2, 4),
                            per_stage_window=False, resolution=(64, 64))
        points = space.points()
        print("ready", flush=True)
        while not os.path.exists(go):
            time.sleep(0.001)
        start = float(open(go).read())
        for round, url in enumerate(urls):
            time.sleep(max(0.0, start + 1.5 * round - time.time()))  # both racers start each round together
            study = open_study(open_storage(url), "race", directions=["maximize"], fingerprint=space.fingerprint(),
                               sampler=make_sampler("grid", [p.label for p in points]))
            report = run_points(study, points, lambda trial, point: point.alpha)
            print(url.rsplit("/", 1)[1], *sorted(str(n) for n in report.evaluated), flush=True)
    """))
    urls = [server.create_database() for _ in range(3)]
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, str(script), str(go), *urls], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
              for _ in range(2)]
    with reaped(racers):
        assert all(r.stdout.readline().strip() == "ready" for r in racers)
        go.write_text(str(time.time() + 0.2))
        outputs = [r.communicate(timeout=120) for r in racers]
    for racer, (_, err) in zip(racers, outputs):
        assert racer.returncode == 0, err[-2000:]
    for url in urls:
        study = optuna.load_study(study_name="race", storage=open_storage(url))
        evaluated = [t for t in study.trials if DUPLICATE_OF not in t.user_attrs]
        assert len(evaluated) == 6 and all(t.state == TrialState.COMPLETE for t in evaluated)
        assert len({t.params["point"] for t in evaluated}) == 6
        assert len(optuna.get_all_study_summaries(open_storage(url))) == 1  # one study, not one per racer


@pytest.mark.slow
def test_a_worker_sigkilled_mid_trial_leaves_a_study_the_rerun_completes_once_per_point(database, tmp_path, capsys,
                                                                                        monkeypatch):
    worker = start_worker(database, tmp_path / "killed")
    with reaped([worker]):
        completed_before, killed = kill_mid_trial(database, worker)
    after_kill = {t.number: t for t in trials(database)}
    assert after_kill[killed].state == TrialState.RUNNING  # never counted as complete
    killed_point = after_kill[killed].params["point"]

    assert backdate_heartbeats(database) == [killed]
    monkeypatch.setenv(URL_ENV, database)
    assert main([*SEARCH, "--storage", f"env:{URL_ENV}", "--output", str(tmp_path / "rerun"), "--no-recipes"]) == 0
    out = capsys.readouterr().out
    assert len(evaluations(out)) == len(POINTS) - completed_before  # nothing finished was measured again
    evaluated = assert_every_point_complete_once(database)
    assert next(t for t in evaluated if t.number == killed).state == TrialState.FAIL  # failed by the heartbeat rule
    assert next(t for t in evaluated if t.params["point"] == killed_point
                and t.state == TrialState.COMPLETE).number > killed  # evaluated again


@pytest.mark.slow
def test_a_sigterm_to_one_worker_stops_it_and_the_others_finish_the_grid(database, tmp_path):
    workers = [start_worker(database, tmp_path / f"worker-{i}") for i in range(3)]
    with reaped(workers):
        wait_until_evaluating(database, workers)
        workers[0].send_signal(signal.SIGTERM)  # a scheduler pre-empting one node
        started = time.monotonic()
        outputs = [w.communicate(timeout=100) for w in workers]  # well within the 120 s grace period
    (stopped_out, stopped_err), *others = outputs
    assert workers[0].returncode == 130, stopped_err[-2000:]
    assert "interrupted: the study is kept in" in stopped_out and "Traceback" not in stopped_err
    for worker, (out, err) in zip(workers[1:], others):
        assert worker.returncode == 0, err[-2000:]
        assert "Pareto front" in out  # ran to its end and reported
    evaluated = assert_every_point_complete_once(database)
    failed = [t for t in evaluated if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get(FAIL_REASON) == INTERRUPTED for t in failed)  # its trial, redone by the others
    assert time.monotonic() - started < 100


@pytest.mark.slow
def test_the_server_stopped_mid_search_is_one_line_and_the_study_survives_for_the_rerun(server, database, tmp_path,
                                                                                        capsys, monkeypatch):
    monkeypatch.setenv(URL_ENV, database)
    worker = subprocess.Popen([sys.executable, "-m", "litv2cli.cli.main", *SEARCH, "--storage", f"env:{URL_ENV}",
                               "--output", str(tmp_path / "first"), "--no-recipes"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    with reaped([worker]):
        wait_until_evaluating(database, [worker])
        server.stop("fast")  # every connection closed, nothing accepted
        try:
            out, err = worker.communicate(timeout=60)
        finally:
            server.start()
    assert worker.returncode == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"litv2: error: lost storage {redact(database)}: "), err[-2000:]
    assert "OperationalError" in lines[0]
    assert server.password not in out + err and "***@" in lines[0]

    before = {t.number: t for t in trials(database)}  # what was measured before the server went away is intact
    complete_before = [t for t in before.values() if t.state == TrialState.COMPLETE]
    assert complete_before and all(t.values[0] > 0 for t in complete_before)
    backdate_heartbeats(database)  # its last trial stays RUNNING: no worker was alive to fail it
    assert main([*SEARCH, "--storage", f"env:{URL_ENV}", "--output", str(tmp_path / "rerun"), "--no-recipes"]) == 0
    assert len(evaluations(capsys.readouterr().out)) == len(POINTS) - len(complete_before)
    after = {t.number: t for t in assert_every_point_complete_once(database)}
    assert all(after[t.number].datetime_complete == t.datetime_complete for t in complete_before)


@pytest.mark.slow
def test_a_server_restarted_between_trials_costs_a_reconnect_not_the_search(server, database):
    space = SearchSpace(variant="t", num_heads=(1, 2, 4, 8), alphas=(0.0, 0.5, 1.0), windows=(2, 4),
                        per_stage_window=False, resolution=(64, 64))
    points = space.points()
    study = open_study(open_storage(database), "restarted", directions=["maximize"], fingerprint=space.fingerprint(),
                       sampler=make_sampler("grid", [p.label for p in points]))
    restarted = []

    def evaluate(trial, point):
        if trial.number == 2 and not restarted:  # every pooled connection is closed by the server
            server.stop("fast")
            server.start()
            restarted.append(trial.number)
        return point.alpha

    report = run_points(study, points, evaluate)
    assert restarted and len(report.evaluated) == len(points) == 6


@pytest.mark.slow
@pytest.mark.parametrize("form", ["flag", "environment"])
def test_a_wrong_password_is_one_line_with_no_trace_of_either_secret(form, server, database, tmp_path, capsys,
                                                                     monkeypatch):
    wrong = database.replace(server.password, "wrong-secret-123")
    monkeypatch.setenv(STORAGE_ENV, wrong)
    flags = ["--storage", wrong] if form == "flag" else []  # with no --storage: $LITV2_STORAGE
    assert main([*SEARCH, "--output", str(tmp_path / "out"), "--no-recipes", *flags]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"litv2: error: cannot open storage {redact(wrong)}: ")
    assert "password authentication failed" in err
    for secret in ("wrong-secret-123", server.password):
        assert secret not in captured.out + captured.err
    assert not (tmp_path / "out" / "search.db").exists()  # no silent fallback to SQLite


@pytest.mark.slow
def test_the_recipe_from_a_postgresql_study_equals_the_one_from_its_copy_on_sqlite(three_workers, tmp_path, capsys):
    url, _ = three_workers
    sqlite_url = f"sqlite:///{tmp_path / 'copy.db'}"
    optuna.copy_study(from_study_name=STUDY, from_storage=open_storage(url), to_storage=open_storage(sqlite_url))
    recipes = {}
    for name, storage in (("postgresql", url), ("sqlite", sqlite_url)):
        args = [*SEARCH, "--storage", storage, "--output", str(tmp_path / name), "--recipes-dir",
                str(tmp_path / f"recipes-{name}")]
        assert main(args) == 0, capsys.readouterr().err
        assert evaluations(capsys.readouterr().out) == []  # written from the finished study: nothing measured
        recipes[name] = yaml.safe_load((tmp_path / f"recipes-{name}" / "litv2-t.yaml").read_text())
    provenance = {name: recipe["provenance"] for name, recipe in recipes.items()}
    assert provenance["postgresql"].pop("storage") == redact(url)
    assert provenance["sqlite"].pop("storage") == sqlite_url
    for kept in provenance.values():
        kept.pop("date")
    assert recipes["postgresql"] == recipes["sqlite"]


# --- storage URLs from the environment, and the password in messages --------------------------


def test_storage_url_comes_from_the_flag_its_environment_variable_or_litv2_storage(tmp_path, monkeypatch):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert resolve_storage_url(None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'search.db'}"
    monkeypatch.setenv(STORAGE_ENV, "postgresql+psycopg://u:p@db/x")
    assert resolve_storage_url(None, tmp_path) == "postgresql+psycopg://u:p@db/x"
    assert resolve_storage_url("journal:/shared/s.log", tmp_path) == "journal:/shared/s.log"  # the flag wins
    monkeypatch.setenv("MY_STUDY_DB", "postgresql+psycopg://v:q@db/y")
    assert resolve_storage_url("env:MY_STUDY_DB", tmp_path) == "postgresql+psycopg://v:q@db/y"
    with pytest.raises(UserError, match="environment variable UNSET_VARIABLE is not set"):
        resolve_storage_url("env:UNSET_VARIABLE", tmp_path)
    with pytest.raises(UserError, match="name of an environment variable"):
        resolve_storage_url("env:", tmp_path)


@pytest.mark.parametrize("password", ["s3cret", "p/a:ss", "p%40ss", "pa ss"])
def test_the_password_is_masked_in_urls_and_in_driver_messages(password):
    url = f"postgresql+psycopg://someone:{password}@db.example:5432/litv2"
    assert redact(url) == "postgresql+psycopg://someone:***@db.example:5432/litv2"
    message = f"could not parse {url}; password {password!r} rejected"
    masked = mask_secret(message, url)
    assert password not in masked and "someone:***@db.example" in masked
