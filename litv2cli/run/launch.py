"""Starting the worker processes: in-process, through accelerate's launcher, or not at all.

Inside an existing launcher (torchrun, `accelerate launch`, a multi-task `srun` step) the workers
are already there, so we run in-process. Otherwise one process runs in-process (with a one-rank
process group when DeepSpeed needs one), and several processes or nodes go through accelerate's
launcher (torchrun); without GPUs the workers join over gloo, which is how the tests cover this
path. A failing rank writes its error into a folder this command watches; the command prints the
first one as one line and ends the job within seconds, instead of torchrun's traceback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from litv2cli.recipe import package_file
from litv2cli.errors import UserError
from litv2cli.files import write_text_atomic

ERROR_DIR_VARIABLE = "LITV2_ERROR_DIR"  # where launched ranks report their errors
KILL_AFTER_ERROR_S = 5.0  # how long the other ranks get to end by themselves once one has failed
ACCELERATE_CONFIG = package_file("accelerate_config.yaml")  # the top-level one in a checkout links here


@dataclass(frozen=True)
class LaunchPlan:
    """Where the processes come from: per-node count, nodes and the rendezvous address."""

    processes: int = 1
    nodes: int = 1
    node_rank: int = 0
    main_addr: str | None = None
    main_port: int | None = None
    needs_launcher: bool = False
    external: bool = False  # the ranks were started by torchrun, `accelerate launch` or srun

    @property
    def first_process(self) -> bool:
        """Whether this command is the job's first (node 0, or rank 0 of an external launch)."""
        return self.node_rank == 0 and (not self.external or os.environ.get("RANK", "0") == "0")


def inside_launcher() -> bool:
    """True when this process is already one rank of a launched job."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


# --- SLURM ---------------------------------------------------------------------------------


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[07-09,12],cpu1' -> 'gpu07'."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise UserError(f"cannot read the SLURM node list {nodelist!r}; pass --main-addr")
    prefix, ranges = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def slurm_tasks_per_node(env: Mapping[str, str]) -> int:
    """Tasks on this node: SLURM_NTASKS_PER_NODE, else this node's entry of SLURM_TASKS_PER_NODE
    ('4(x2),3' means 4, 4, 3), else all tasks over all nodes."""
    if "SLURM_NTASKS_PER_NODE" in env:
        return int(env["SLURM_NTASKS_PER_NODE"])
    if "SLURM_TASKS_PER_NODE" in env:
        counts = []
        for part in env["SLURM_TASKS_PER_NODE"].split(","):
            count, _, repeat = part.partition("(x")
            counts += [int(count)] * int(repeat.rstrip(")") or 1)
        return counts[min(int(env.get("SLURM_NODEID", "0")), len(counts) - 1)]
    return max(int(env["SLURM_NTASKS"]) // max(int(env.get("SLURM_NNODES", "1")), 1), 1)


def slurm_environment(env: Mapping[str, str], visible_gpus: int, main_addr: str | None,
                      main_port: int | None) -> dict[str, str] | None:
    """torch.distributed's variables for one task of a multi-task SLURM step, or None when this
    is no such step. The task's GPU index (LOCAL_RANK) is its local id when it sees all the
    node's GPUs, and 0 when SLURM gave it its own (`--gpus-per-task`, one GPU visible)."""
    tasks = int(env.get("SLURM_NTASKS", "1"))
    if tasks <= 1 or "SLURM_PROCID" not in env:
        return None
    if "SLURM_STEP_ID" not in env and "SLURM_STEPID" not in env:
        raise UserError(
            f"SLURM_NTASKS={tasks} but this process was not started by srun, so the other {tasks - 1} ranks will "
            f"never join: put `srun` before `litv2` in the batch script, or ask for one task per node and pass "
            f"--gpus N (litv2 then starts the N processes itself)")
    address = main_addr or env.get("MASTER_ADDR") or first_host(
        env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or "")
    local_id, per_node = int(env.get("SLURM_LOCALID", "0")), slurm_tasks_per_node(env)
    gpu_index = local_id if visible_gpus >= per_node else (local_id % visible_gpus if visible_gpus else local_id)
    return dict(RANK=env["SLURM_PROCID"], WORLD_SIZE=str(tasks), LOCAL_RANK=str(gpu_index),
                LOCAL_WORLD_SIZE=str(per_node), NODE_RANK=env.get("SLURM_NODEID", "0"), MASTER_ADDR=address,
                MASTER_PORT=str(main_port or env.get("MASTER_PORT", "29500")))


def adopt_slurm_environment(main_addr: str | None, main_port: int | None) -> bool:
    """Map a multi-task SLURM step (`srun litv2 ...`) onto torch.distributed's variables."""
    if inside_launcher():
        return False
    import torch

    variables = slurm_environment(os.environ, torch.cuda.device_count(), main_addr, main_port)
    if variables is None:
        return False
    os.environ.update(variables)
    return True


# --- the plan ------------------------------------------------------------------------------


def default_processes() -> int:
    import torch

    return max(torch.cuda.device_count(), 1)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which SLURM and containers restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cores_per_process(launch: LaunchPlan) -> int:
    """Cores each training process may use: SLURM's cpus-per-task for an srun task, else this
    process's cores shared among the processes of this node."""
    if launch.external:
        if "SLURM_CPUS_PER_TASK" in os.environ and "SLURM_PROCID" in os.environ:
            return max(int(os.environ["SLURM_CPUS_PER_TASK"]), 1)
        return max(usable_cores() // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1), 1)
    return max(usable_cores() // launch.processes, 1)


def default_workers(launch: LaunchPlan) -> int:
    """DataLoader workers per process: its cores but one, which trains."""
    return cores_per_process(launch) - 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def plan(processes: int | None, nodes: int, node_rank: int, main_addr: str | None, main_port: int | None) -> LaunchPlan:
    """Validate the launch flags (at the edge) and decide whether a launcher is needed."""
    processes = processes or default_processes()
    if processes < 1 or nodes < 1:
        raise UserError("--gpus and --nodes must be at least 1")
    if not 0 <= node_rank < nodes:
        raise UserError(f"--node-rank {node_rank} must lie in [0, {nodes - 1}] for --nodes {nodes}")
    if main_port is not None and not 0 < main_port < 65536:
        raise UserError(f"--main-port {main_port} is not a port number")
    if inside_launcher() or adopt_slurm_environment(main_addr, main_port):
        return LaunchPlan(processes=int(os.environ.get("LOCAL_WORLD_SIZE", processes)), nodes=nodes, external=True)
    if nodes > 1 and not main_addr:
        raise UserError("--nodes > 1 needs --main-addr (the address of the node with --node-rank 0)")
    return LaunchPlan(processes, nodes, node_rank, main_addr or "127.0.0.1",
                      main_port or (free_port() if nodes == 1 else 29500), processes * nodes > 1)


def adopt_single_process() -> None:
    """A one-rank process group for a run in this process that needs one (DeepSpeed)."""
    if inside_launcher():
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


# --- launching -----------------------------------------------------------------------------


def launcher_command(launch: LaunchPlan, run_json: Path) -> list[str]:
    return [
        sys.executable, "-m", "litv2cli.run.launch",
        "--config_file", str(ACCELERATE_CONFIG),
        "--multi_gpu",
        "--num_processes", str(launch.processes * launch.nodes),
        "--num_machines", str(launch.nodes),
        "--machine_rank", str(launch.node_rank),
        "--main_process_ip", str(launch.main_addr),
        "--main_process_port", str(launch.main_port),
        "--dynamo_backend", "no",
        "-m", "litv2cli.run.worker", str(run_json),
    ]


def run_launched(launch: LaunchPlan, run_json: Path) -> int:
    """Start the launcher and wait; SIGTERM/SIGINT are passed to the workers, which save and exit.

    The launcher runs in its own session, so that a signal sent to this command's whole process
    group (Ctrl-C in a terminal, `timeout`, `kill -- -PGID`) reaches the workers only through
    `forward`: torchrun's agent, had it received the signal too, would print a traceback and kill
    the workers on its own fixed timeout, however far their save had got. When a rank reports
    an error, the rest of the job gets `KILL_AFTER_ERROR_S` to end before it is killed."""
    with tempfile.TemporaryDirectory(prefix="litv2-errors-") as error_dir:
        env = dict(os.environ, **{ERROR_DIR_VARIABLE: error_dir})
        env.setdefault("OMP_NUM_THREADS", str(cores_per_process(launch)))
        process = subprocess.Popen(launcher_command(launch, run_json), env=env, start_new_session=True)

        def forward(signum: int, frame: object) -> None:
            for worker in _workers_of(process.pid):
                try:
                    os.kill(worker, signum)
                except ProcessLookupError:
                    pass

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = _wait_ending_on_error(process, Path(error_dir))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        first = first_error(Path(error_dir))
    if first is not None:
        print(f"litv2: error: {first['message']}", file=sys.stderr)
        return int(first["code"])
    return code


def _wait_ending_on_error(process: subprocess.Popen, error_dir: Path) -> int:
    failed_at = None
    while True:
        try:
            return process.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
        if failed_at is None and any(error_dir.iterdir()):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > KILL_AFTER_ERROR_S:
            _kill_session(process.pid)


def _kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _workers_of(pid: int) -> list[int]:
    """The worker processes under the launcher, not the launcher itself: torchrun's agent would
    answer a signal by terminating its workers on a fixed timeout, which could cut a save short."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        try:
            command = child.cmdline()
            if "litv2cli.run.worker" in command and "litv2cli.run.launch" not in command:  # not the agent's helpers
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


# --- errors of the ranks -------------------------------------------------------------------


def rank_label() -> str:
    """'rank 1 of 2' in a job of several processes, '' alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return f"rank {os.environ.get('RANK', '0')} of {world}" if world > 1 else ""


def report_error(message: str, code: int, exc: BaseException | None = None) -> None:
    """One line for the user: to the watching command when launched by it, else to stderr. An
    unexpected exception also leaves its traceback in a file the line names."""
    label = rank_label()
    line = f"{label}: {message}" if label else message
    if exc is not None:
        with tempfile.NamedTemporaryFile("w", prefix="litv2-traceback-", suffix=".txt", delete=False) as handle:
            handle.write("".join(traceback.format_exception(exc)))
        line += f" (traceback in {handle.name})"
    error_dir = os.environ.get(ERROR_DIR_VARIABLE)
    if error_dir and Path(error_dir).is_dir():
        record = dict(message=line, code=code, time=time.time())
        path = Path(error_dir) / f"rank-{os.environ.get('RANK', '0')}.json"
        write_text_atomic(path, json.dumps(record))
    else:
        print(f"litv2: error: {line}", file=sys.stderr, flush=True)


def first_error(error_dir: Path) -> dict | None:
    """The earliest error any rank of this node reported: the cause, not its echoes in peers."""
    records = []
    for path in error_dir.glob("rank-*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    # A rank killed from outside comes first: its peers' errors are what its death caused.
    return min(records, key=lambda r: (not r.get("killed", False), r["time"])) if records else None


# --- the agent: accelerate's launcher without torchrun's traceback -------------------------


def agent_main(argv: list[str]) -> int:
    """`python -m litv2cli.run.launch ARGS`: accelerate's `launch` with ARGS (torchrun underneath),
    except that a failed worker ends it with the worker's exit code and no traceback of its own:
    the ranks report their errors to the watching command, which prints one line."""
    import logging

    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = launch_command_parser().parse_args(argv)
    try:
        launch_command(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        if failure.exitcode < 0:  # killed (out of memory, by hand): the rank could not say so itself
            _record_death(rank, failure.signal_name(), failure.timestamp)
        codes = [f.exitcode for f in exc.failures.values()]
        return next((code for code in codes if code > 0), 1)
    return 0


def _record_death(rank: int, signal_name: str, when: float) -> None:
    error_dir = os.environ.get(ERROR_DIR_VARIABLE)
    if not error_dir or (Path(error_dir) / f"rank-{rank}.json").exists():
        return
    record = dict(message=f"rank {rank}: killed by {signal_name} (out of memory?); the job was stopped",
                  code=1, time=when, killed=True)
    (Path(error_dir) / f"rank-{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    sys.exit(agent_main(sys.argv[1:]))
