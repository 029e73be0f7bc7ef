"""Starting the worker processes: in-process, through accelerate's launcher, or not at all.

Inside an existing launcher (torchrun, `accelerate launch`, a multi-task SLURM step) the
workers are already there, so we run in-process. Otherwise one process runs in-process and N
processes (or any DeepSpeed run) go through `accelerate launch`, which uses torchrun; on a
machine without GPUs the workers join over gloo, which is how the tests cover this path.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from litv2cli.errors import UserError

ACCELERATE_CONFIG = Path(__file__).resolve().parent.parent / "accelerate_config.yaml"


@dataclass(frozen=True)
class LaunchPlan:
    """Where the processes come from: per-node count, nodes and the rendezvous address."""

    processes: int = 1
    nodes: int = 1
    node_rank: int = 0
    main_addr: str | None = None
    main_port: int | None = None
    needs_launcher: bool = False


def pin_deepspeed_to_cpu_without_cuda() -> None:
    """Runs without CUDA train on the CPU; tell DeepSpeed so, which it would otherwise guess and
    announce with a warning line in every process (a user's own DS_ACCELERATOR wins)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def inside_launcher() -> bool:
    """True when this process is already one rank of a launched job."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def adopt_slurm_environment() -> bool:
    """Map a multi-task SLURM step (`srun litv2 ...`) onto torch.distributed's variables."""
    if inside_launcher() or int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in os.environ:
        return False
    if "MASTER_ADDR" not in os.environ:
        raise UserError("running under SLURM with several tasks: set MASTER_ADDR (or pass --main-addr) to rank 0's host")
    os.environ.update(
        RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"],
        LOCAL_RANK=os.environ.get("SLURM_LOCALID", "0"),
        LOCAL_WORLD_SIZE=os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0],
        MASTER_PORT=os.environ.get("MASTER_PORT", "29500"),
    )
    return True


def default_processes() -> int:
    import torch

    return max(torch.cuda.device_count(), 1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def plan(processes: int | None, nodes: int, node_rank: int, main_addr: str | None, main_port: int | None,
         deepspeed: bool) -> LaunchPlan:
    """Validate the launch flags (at the edge) and decide whether a launcher is needed."""
    processes = processes or default_processes()
    if processes < 1 or nodes < 1:
        raise UserError("--gpus and --nodes must be at least 1")
    if not 0 <= node_rank < nodes:
        raise UserError(f"--node-rank {node_rank} must lie in [0, {nodes - 1}] for --nodes {nodes}")
    if nodes > 1 and not main_addr:
        raise UserError("--nodes > 1 needs --main-addr (the address of the node with --node-rank 0)")
    if inside_launcher() or adopt_slurm_environment():
        return LaunchPlan(processes=processes, nodes=nodes, needs_launcher=False)
    needs = processes > 1 or nodes > 1 or deepspeed
    return LaunchPlan(processes, nodes, node_rank, main_addr or "127.0.0.1",
                      main_port or (free_port() if nodes == 1 else 29500), needs)


def launcher_command(launch: LaunchPlan, run_json: Path) -> list[str]:
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ACCELERATE_CONFIG),
        "--multi_gpu",
        "--num_processes", str(launch.processes * launch.nodes),
        "--num_machines", str(launch.nodes),
        "--machine_rank", str(launch.node_rank),
        "--main_process_ip", str(launch.main_addr),
        "--main_process_port", str(launch.main_port),
        "--dynamo_backend", "no",
        "-m", "litv2cli.worker", str(run_json),
    ]


def run_launched(launch: LaunchPlan, run_json: Path) -> int:
    """Start the launcher and wait; SIGTERM/SIGINT are passed to the workers, which save and exit.

    The launcher runs in its own session, so that a signal sent to this command's whole process
    group (Ctrl-C in a terminal, `timeout`, `kill -- -PGID`) reaches the workers only through
    `forward`: torchrun's agent, had it received the signal too, would print a traceback and kill
    the workers on its own fixed timeout, however far their save had got."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // launch.processes, 1)))
    process = subprocess.Popen(launcher_command(launch, run_json), env=env, start_new_session=True)

    def forward(signum: int, frame: object) -> None:
        for worker in _workers_of(process.pid):
            try:
                os.kill(worker, signum)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
            if "litv2cli.worker" in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.Error:
            continue
    return found
