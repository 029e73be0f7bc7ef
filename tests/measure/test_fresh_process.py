"""`call_in_fresh_process`: what CPU timings run in, so that no measurement depends on what the
measuring process did before it (each call is a new process forked from one clean server)."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from litv2cli.measure.fresh_process import call_in_fresh_process, omp_wait_policy, timing_environment


def test_a_call_runs_in_another_process_and_returns_its_result():
    assert call_in_fresh_process(os.getpid, what="pid") != os.getpid()
    assert torch.equal(call_in_fresh_process(copy.deepcopy, torch.arange(3.0), what="copy"), torch.arange(3.0))


def test_the_child_waits_passively_for_openmp_work_and_keeps_this_thread_count(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert call_in_fresh_process(os.getenv, "OMP_WAIT_POLICY", what="env") == "PASSIVE"
    assert timing_environment()["OMP_NUM_THREADS"] == str(torch.get_num_threads())
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert timing_environment()["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_policy_reported_with_timings_is_the_one_the_children_run_under(monkeypatch):
    """The server keeps the environment it started with; the protocol line must say that one."""
    call_in_fresh_process(os.getpid, what="pid")  # the server runs
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE" if omp_wait_policy() != "ACTIVE" else "PASSIVE")
    assert omp_wait_policy() == call_in_fresh_process(os.getenv, "OMP_WAIT_POLICY", what="env")


def test_what_the_function_prints_does_not_corrupt_its_result():
    assert call_in_fresh_process(print, "a line on stdout", what="print") is None


def test_a_failing_call_raises_with_the_childs_last_error_line():
    with pytest.raises(RuntimeError, match=r"parse child process failed: ValueError: invalid literal"):
        call_in_fresh_process(int, "not a number", what="parse")


def test_a_child_that_dies_without_a_word_is_reported_as_no_output():
    with pytest.raises(RuntimeError, match=r"exit child process failed: no output"):
        call_in_fresh_process(os._exit, 3, what="exit")


def test_a_child_past_its_timeout_is_killed_and_reported():
    with pytest.raises(subprocess.TimeoutExpired):
        call_in_fresh_process(time.sleep, 30, what="sleep", timeout=0.5)


def test_an_interrupted_call_kills_its_child_at_once():
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 1.0)  # Ctrl-C, or the search's SIGTERM, while the child works
    begin = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            call_in_fresh_process(time.sleep, 60, what="sleep")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - begin < 30  # not the child's 60 s: it was killed, not waited for


CALLER = """
import os, sys, time
from pathlib import Path
from litv2cli.measure.fresh_process import call_in_fresh_process

def work(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    call_in_fresh_process(work, sys.argv[1], what="work")
"""


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie waiting to be reaped has finished)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_module_in_the_working_directory_does_not_shadow_the_standard_library(tmp_path):
    """The server starts as `python -c`, which would put the working directory first on its path."""
    script, work = tmp_path / "script" / "caller.py", tmp_path / "work"
    script.parent.mkdir()
    work.mkdir()
    script.write_text("import os\nfrom litv2cli.measure.fresh_process import call_in_fresh_process\n"
                      "if __name__ == '__main__':\n    print(call_in_fresh_process(os.getpid, what='pid') != os.getpid())\n")
    (work / "random.py").write_text("raise ImportError('the user random.py was imported')\n")
    done = subprocess.run([sys.executable, str(script)], cwd=work, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "True"), done.stderr[-2000:]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_child_stops_when_its_caller_is_killed(tmp_path):
    """A caller killed by a signal (`timeout`, SIGKILL, the OOM killer) can kill nothing; its child
    must not go on measuring on the cores under the next measurement."""
    script, marker = tmp_path / "caller.py", tmp_path / "child.pid"
    script.write_text(CALLER)
    caller = subprocess.Popen([sys.executable, str(script), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() or not marker.read_text():
            assert time.monotonic() < deadline and caller.poll() is None, "the child never started"
            time.sleep(0.1)
        child = int(marker.read_text())
        assert running(child)
    finally:
        caller.kill()
        caller.wait()
    deadline = time.monotonic() + 20
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(child)


INTERRUPTED_CALLER = """
import sys, time
from litv2cli.measure.fresh_process import call_in_fresh_process

if __name__ == "__main__":
    print("ready", flush=True)
    try:
        call_in_fresh_process(time.sleep, 60, what="sleep")
    except KeyboardInterrupt:
        print("interrupted", flush=True)
"""


def test_ctrl_c_while_the_server_starts_prints_no_traceback(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group, the server too, while it imports torch."""
    script = tmp_path / "caller.py"
    script.write_text(INTERRUPTED_CALLER)
    caller = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert caller.stdout.readline().strip() == "ready"
    time.sleep(1.0)  # the server is importing torch (seconds)
    os.killpg(caller.pid, signal.SIGINT)
    out, err = caller.communicate(timeout=60)
    assert "interrupted" in out and "Traceback" not in err, err[-2000:]
