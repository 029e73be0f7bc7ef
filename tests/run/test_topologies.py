"""The launch topologies the README promises, each run on the CPU: one process under DeepSpeed,
two nodes (two launches on 127.0.0.1) with a shared or node-local --output, SLURM steps with
their environments set by hand, and a rank that dies taking the job down with it in seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from tests.helpers.data_fixtures import make_image_folder
from litv2cli.run.launch import free_port
from litv2cli.train.spec import read_metrics

pytestmark = pytest.mark.slow

TINY = ["--variant", "t", "--res", "32", "--batch-size", "4", "--workers", "0", "--no-progress", "--log-with", "none",
        "--lr", "1e-3"]
COMMAND = [sys.executable, "-m", "litv2cli.cli.main"]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*COMMAND, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or environment())


def finish(processes: list[subprocess.Popen], timeout: int = 300) -> list[tuple[int, str]]:
    """(exit code, stdout + stderr) of each process."""
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        results.append((process.returncode, stdout + stderr))
    return results


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "folder", num_classes=3, per_class=12, size=40)


def two_nodes(folder: Path, outputs: tuple[Path, Path], *args: str) -> list[tuple[int, str]]:
    """The README's two-node command, node 0 and node 1 started side by side on this machine."""
    port = str(free_port())
    common = ["pretrain", *TINY, "--data", str(folder), "--gpus", "1", "--nodes", "2", "--main-addr", "127.0.0.1",
              "--main-port", port, *args]
    return finish([start(*common, "--node-rank", str(rank), "--output", str(out)) for rank, out in enumerate(outputs)])


def test_one_gpu_deepspeed_zero2_runs_in_this_process_and_saves_float32_weights(folder, tmp_path):
    out = tmp_path / "run"
    [(code, text)] = finish([start("pretrain", *TINY, "--data", str(folder), "--gpus", "1", "--deepspeed", "zero2",
                                   "--precision", "bf16", "--max-steps", "2", "--output", str(out))])
    assert code == 0, text[-3000:]
    checkpoint = sorted((out / "checkpoints").iterdir())[-1]
    assert len(list(checkpoint.rglob("*optim_states.pt"))) == 1
    weights = load_file(str(out / "model.safetensors"))
    floats = {k: v.dtype for k, v in weights.items() if v.is_floating_point()}
    assert set(floats.values()) == {__import__("torch").float32}, floats


@pytest.mark.parametrize("layout", ["shared", "node-local"])
def test_two_nodes_train_save_and_resume_the_same_step_on_every_rank(folder, tmp_path, layout):
    outputs = (tmp_path / "run", tmp_path / "run") if layout == "shared" else (tmp_path / "node0", tmp_path / "node1")
    first = two_nodes(folder, outputs, "--max-steps", "2", "--save-every", "1")
    assert all(code == 0 for code, _ in first), [text[-2000:] for _, text in first]
    for out in set(outputs):  # each node's directory holds whole checkpoints of its own ranks
        step = out / "checkpoints" / "step-00000002"
        assert json.loads((step / "train_state.json").read_text())["world_size"] == 2
        assert (step / "model.safetensors").is_file()
    ranks = {p.name for out in set(outputs) for p in (out / "checkpoints" / "step-00000002").glob("random_states_*")}
    assert ranks == {"random_states_0.pkl", "random_states_1.pkl"}

    again = two_nodes(folder, outputs, "--max-steps", "3", "--save-every", "1", "--resume", "auto")
    for (code, text), out in zip(again, outputs):
        assert code == 0, text[-3000:]
        assert f"resumed from {out / 'checkpoints' / 'step-00000002'} (epoch 0, step 2)" in text
    evaluations = [r for r in read_metrics(outputs[0] / "metrics.jsonl") if "top1" in r]
    assert [r["step"] for r in evaluations] == [2, 3]


def slurm_task(rank: int, tasks: int, **extra: str) -> dict[str, str]:
    """What `srun --ntasks N` sets for one task on one node (no --gpus-per-task: no GPUs here)."""
    variables = dict(SLURM_JOB_ID="4242", SLURM_STEP_ID="0", SLURM_NTASKS=str(tasks), SLURM_PROCID=str(rank),
                     SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_NNODES="1", SLURM_TASKS_PER_NODE=str(tasks),
                     SLURM_JOB_NODELIST="127.0.0.1", SLURM_CPUS_PER_TASK="1")
    return environment(**{**variables, **extra})


@pytest.mark.parametrize("address", ["--main-addr", "node list"])
def test_an_srun_step_of_two_tasks_trains_as_one_job(folder, tmp_path, address):
    out, port = tmp_path / "run", str(free_port())
    args = ["pretrain", *TINY, "--data", str(folder), "--max-steps", "2", "--output", str(out)]
    if address == "--main-addr":
        args += ["--main-addr", "127.0.0.1", "--main-port", port]
        envs = [slurm_task(rank, 2, SLURM_JOB_NODELIST="unreachable-host[01-02]") for rank in range(2)]
    else:  # rank 0's host from the node list, the port from MASTER_PORT
        envs = [slurm_task(rank, 2, MASTER_PORT=port) for rank in range(2)]
    results = finish([start(*args, env=env) for env in envs])
    assert all(code == 0 for code, _ in results), [text[-2000:] for _, text in results]
    state = json.loads((sorted((out / "checkpoints").iterdir())[-1] / "train_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 2


def test_an_sbatch_script_without_srun_is_refused_at_once_instead_of_waiting_for_its_ranks(folder, tmp_path):
    env = environment(SLURM_JOB_ID="4242", SLURM_NTASKS="8", SLURM_PROCID="0", SLURM_LOCALID="0",
                      SLURM_JOB_NODELIST="gpu[01-02]")
    began = time.monotonic()
    [(code, text)] = finish([start("pretrain", *TINY, "--data", str(folder), "--output", str(tmp_path / "run"),
                                   env=env)], timeout=120)
    assert code == 2 and "Traceback" not in text
    assert "srun" in text and "SLURM_NTASKS=8" in text
    assert time.monotonic() - began < 60
    assert not (tmp_path / "run").exists()


def test_a_rank_killed_mid_run_ends_the_job_within_seconds_with_one_line(folder, tmp_path):
    out = tmp_path / "run"
    process = start("pretrain", *TINY, "--data", str(folder), "--gpus", "2", "--epochs", "200", "--output", str(out))
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (out / "metrics.jsonl").exists() and any(r.get("step", 0) >= 2 for r in read_metrics(out / "metrics.jsonl")):
            break
        time.sleep(0.2)
    workers = [p for p in psutil.Process(process.pid).children(recursive=True) if "RANK" in p.environ()]
    assert len(workers) == 2
    rank_one = next(p for p in workers if p.environ().get("RANK") == "1")
    killed = time.monotonic()
    rank_one.send_signal(signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=120)
    assert time.monotonic() - killed < 30
    assert process.returncode != 0
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("litv2: error:")]
    assert len(lines) == 1 and "rank 1" in lines[0] and "SIGKILL" in lines[0], stderr[-3000:]
    assert not any(psutil.pid_exists(p.pid) and p.status() != psutil.STATUS_ZOMBIE for p in workers)


def test_a_node_started_with_another_model_ends_the_whole_job_in_seconds_with_one_line_each(folder, tmp_path):
    # Every rank raises (DDP checks that all ranks hold the same model): each node says so once.
    port, began = str(free_port()), time.monotonic()
    common = ["pretrain", "--res", "32", "--batch-size", "4", "--workers", "0", "--no-progress", "--log-with", "none",
              "--data", str(folder), "--max-steps", "2", "--gpus", "1", "--nodes", "2", "--main-addr", "127.0.0.1",
              "--main-port", port]
    results = finish([start(*common, "--variant", variant, "--node-rank", str(rank), "--output", str(tmp_path / variant))
                      for rank, variant in enumerate(("t", "s"))], timeout=240)
    assert time.monotonic() - began < 120
    for rank, (code, text) in enumerate(results):
        lines = [line for line in text.splitlines() if line.startswith("litv2: error:")]
        assert code == 1 and "Traceback" not in text, text[-3000:]
        assert len(lines) == 1 and f"rank {rank} of 2: RuntimeError: DDP expects same model" in lines[0], text[-3000:]
