"""Run a function in a fresh Python process, for timings that a long-lived process distorts.

On a CPU, what a process has run before changes how fast the next model runs in it: after
`litv2 search`'s zero-cost proxies the C allocator keeps the pages their backward passes touched,
so later steps page-fault less, and a search timing in its own process ranked its first point,
timed before any proxy, too slow (BENCHMARKS.md, Search). The processes are forked from a server
that has imported torch and our models once, so a call costs little more than passing the model.
The server, and so every child, waits passively for OpenMP work: spinning workers hold the cores
the main thread needs on a shared machine, and torch reads the policy once, when it loads, so
only a new process can change it. A child lives no longer than its call, even when the caller
dies without a chance to kill it (`_exit_with_caller`).
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def omp_wait_policy() -> str:
    """The OpenMP wait policy timings run under: the server's once it runs (it keeps the one it
    started with), else the one it would start with."""
    return _server_policy or timing_environment()["OMP_WAIT_POLICY"]


def timing_environment() -> dict[str, str]:
    """The environment the timing processes get: this process's, with its thread count, this
    package importable (with the model's classes) even when it is not installed, passive
    OpenMP waiting unless a policy is set, and (Python 3.11+) the working directory kept off the
    module path: the server runs as `python -c`, so a `random.py` there would shadow the
    standard library's."""
    package_root = str(Path(__file__).resolve().parent.parent)
    python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": python_path,
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "PYTHONSAFEPATH": "1"}


def call_in_fresh_process(function: Callable[..., Any], *args: Any, what: str, timeout: float | None = None,
                          **kwargs: Any) -> Any:
    """`function(*args, **kwargs)` run in a fresh process, and its result; `function` must be
    importable by name. Raises RuntimeError with the child's error in one line ("no output" when
    it died without one, e.g. killed for memory) and subprocess.TimeoutExpired after `timeout` s;
    the child is killed on a timeout and when the caller is interrupted.

    The process is forked from a server that was started once, with `timing_environment()`, and
    has only imported torch and our models: every call starts from that same state, without
    paying the seconds those imports take. Arguments (models included) and the result travel as
    `torch.save` bytes through a pipe, not through shared memory, whose size containers limit.
    As with any multiprocessing fork server, the calling program must be a file or a module
    (`python script.py`, `python -m ...`, `python -c ...`), not code read from stdin."""
    call = io.BytesIO()
    torch.save((function, args, kwargs), call)
    server = _server()
    # The call travels through its own pipe once the child runs, not as the Process's
    # arguments: an interrupt while a large model is on its way then reaches a child that
    # already reports quietly, instead of one unpickling a truncated start-up message.
    inbox, outbox = server.Pipe(duplex=False)
    receiver, sender = server.Pipe(duplex=False)
    child = server.Process(target=_child, args=(inbox, sender), daemon=True)
    try:
        child.start()
        inbox.close()
        sender.close()
        try:
            outbox.send_bytes(call.getbuffer())
            if not receiver.poll(timeout):
                raise subprocess.TimeoutExpired(what, timeout or 0.0)
            ok, payload = receiver.recv()
        except (BrokenPipeError, EOFError):  # it died without answering (killed for memory, ...)
            ok, payload = False, "no output"
    except BaseException:  # timed out or interrupted (Ctrl-C, SIGTERM): its work is not wanted any more
        if child.pid is not None:
            child.kill()
        raise
    finally:
        for end in (inbox, sender, outbox, receiver):
            end.close()  # closing `outbox` also tells a child still running that we are gone
        if child.pid is not None:
            child.join()
    if not ok:
        raise RuntimeError(f"{what} child process failed: {payload}")
    return torch.load(io.BytesIO(payload), weights_only=False)  # our own child's answer


_server_policy: str | None = None  # OMP_WAIT_POLICY of the running server; None before it starts


def _server() -> multiprocessing.context.ForkServerContext:
    """multiprocessing's fork server, started on first use with the timing environment."""
    global _server_policy
    context = multiprocessing.get_context("forkserver")
    if _server_policy is None:
        context.set_forkserver_preload(["__main__", __name__, "litv2cli.models"])
        saved = dict(os.environ)
        environment = timing_environment()
        os.environ.update(environment)  # the server inherits this process's environment
        # Started with Ctrl-C ignored, which it and its children inherit: a terminal's Ctrl-C
        # reaches the whole process group, and would otherwise print the traceback of a server
        # still importing torch. The caller stops the children it no longer wants.
        interrupt = signal.getsignal(signal.SIGINT)
        ignoring = interrupt is not None and threading.current_thread() is threading.main_thread()
        if ignoring:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            if ignoring:
                signal.signal(signal.SIGINT, interrupt)
            os.environ.clear()
            os.environ.update(saved)
        _server_policy = environment["OMP_WAIT_POLICY"]
    return context


def _child(inbox: multiprocessing.connection.Connection, sender: multiprocessing.connection.Connection) -> None:
    """Runs in the forked process: sends (True, result bytes) or (False, the error in one line)."""
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)  # what the function prints is not ours to show (nor its warnings)
    os.dup2(quiet, 2)
    try:
        call = inbox.recv_bytes()
        threading.Thread(target=_exit_with_caller, args=(inbox,), daemon=True).start()
        function, args, kwargs = torch.load(io.BytesIO(call), weights_only=False)  # written by our parent
        result = io.BytesIO()
        torch.save(function(*args, **kwargs), result)
        sender.send((True, result.getvalue()))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        sender.send((False, f"{type(exc).__name__}: {exc}".splitlines()[0]))
    finally:
        sender.close()


def _exit_with_caller(inbox: multiprocessing.connection.Connection) -> None:
    """End this process as soon as the caller closes its end of the call pipe: it does so once it
    has the answer, or by dying. The fork server's children outlive a caller killed by a signal
    (SIGTERM from `timeout`, SIGKILL, the OOM killer), and one still measuring would load the
    cores under the user's next measurement."""
    try:
        inbox.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(1)
