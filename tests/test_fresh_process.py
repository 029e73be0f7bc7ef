"""`call_in_fresh_process`: what CPU timings run in, so that no measurement depends on what the
measuring process did before it (each call is a new process forked from one clean server)."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import time

import pytest
import torch

from litv2cli.fresh_process import call_in_fresh_process, omp_wait_policy, timing_environment


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
