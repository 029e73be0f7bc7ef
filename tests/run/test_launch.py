"""Launch rules that need no second process: SLURM's variables, the cores a process may use,
which rank's error is the cause, and the exit of a process whose loop died with workers alive."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from litv2cli.run import launch
from litv2cli.recipe import Recipe
from litv2cli.errors import UserError
from litv2cli.run.launch import LaunchPlan, first_error, first_host, slurm_environment, slurm_tasks_per_node


@pytest.mark.parametrize("nodelist, host", [("gpu[07-09,12],cpu1", "gpu07"), ("node3", "node3"),
                                            ("a-b[001-004]", "a-b001"), ("127.0.0.1", "127.0.0.1"),
                                            ("x[5,7]", "x5")])
def test_the_first_host_of_a_slurm_node_list(nodelist, host):
    assert first_host(nodelist) == host


@pytest.mark.parametrize("env, tasks", [
    (dict(SLURM_NTASKS_PER_NODE="4", SLURM_NTASKS="8"), 4),
    (dict(SLURM_TASKS_PER_NODE="4(x2),3", SLURM_NODEID="2", SLURM_NTASKS="11"), 3),
    (dict(SLURM_TASKS_PER_NODE="4(x2),3", SLURM_NODEID="1", SLURM_NTASKS="11"), 4),
    (dict(SLURM_NTASKS="16", SLURM_NNODES="2"), 8),
])
def test_tasks_on_this_node(env, tasks):
    assert slurm_tasks_per_node(env) == tasks


def srun_task(local_id: int, **extra: str) -> dict[str, str]:
    return dict(SLURM_STEP_ID="0", SLURM_NTASKS="16", SLURM_PROCID=str(8 + local_id), SLURM_LOCALID=str(local_id),
                SLURM_NODEID="1", SLURM_NNODES="2", SLURM_TASKS_PER_NODE="8(x2)",
                SLURM_STEP_NODELIST="gpu[03-04]", **extra)


def test_a_task_that_sees_every_gpu_of_its_node_takes_the_one_of_its_local_id():
    variables = slurm_environment(srun_task(5), visible_gpus=8, main_addr=None, main_port=None)
    assert variables == dict(RANK="13", WORLD_SIZE="16", LOCAL_RANK="5", LOCAL_WORLD_SIZE="8", NODE_RANK="1",
                             MASTER_ADDR="gpu03", MASTER_PORT="29500")


def test_a_task_given_its_own_gpu_by_gpus_per_task_uses_device_0():
    variables = slurm_environment(srun_task(5), visible_gpus=1, main_addr=None, main_port=None)
    assert variables["LOCAL_RANK"] == "0" and variables["RANK"] == "13"


def test_main_addr_and_port_reach_master_addr_before_the_environment_and_the_node_list():
    env = srun_task(0, MASTER_ADDR="from-env", MASTER_PORT="1234")
    assert slurm_environment(env, 8, None, None)["MASTER_ADDR"] == "from-env"
    variables = slurm_environment(env, 8, "10.1.2.3", 29400)
    assert (variables["MASTER_ADDR"], variables["MASTER_PORT"]) == ("10.1.2.3", "29400")


def test_a_batch_script_without_srun_is_refused_with_what_to_run():
    env = dict(SLURM_NTASKS="8", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_JOB_NODELIST="gpu01")
    with pytest.raises(UserError, match="not started by srun.*srun"):
        slurm_environment(env, 8, None, None)


def test_one_task_or_no_slurm_is_no_slurm_step():
    assert slurm_environment(dict(SLURM_NTASKS="1", SLURM_PROCID="0"), 8, None, None) is None
    assert slurm_environment({}, 8, None, None) is None


def test_loader_workers_come_from_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(launch.os, "cpu_count", lambda: 128)
    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    for name in ("SLURM_CPUS_PER_TASK", "SLURM_PROCID", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launch.default_workers(LaunchPlan(processes=4)) == 2  # 12 cores / 4 processes, one trains
    assert launch.default_workers(LaunchPlan(processes=1)) == 11
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "6")  # torchrun's ranks share the node's cores
    assert launch.default_workers(LaunchPlan(processes=6, external=True)) == 1
    monkeypatch.setenv("SLURM_PROCID", "3")  # an srun task has its own cores
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "10")
    assert launch.default_workers(LaunchPlan(processes=6, external=True)) == 9


def test_the_first_error_is_the_cause_and_a_killed_rank_comes_before_its_peers(tmp_path):
    assert first_error(tmp_path) is None
    (tmp_path / "rank-0.json").write_text(json.dumps(dict(message="rank 0 of 2: peer gone", code=1, time=10.5)))
    (tmp_path / "rank-1.json").write_text(json.dumps(dict(message="rank 1 of 2: bad", code=2, time=10.2)))
    assert first_error(tmp_path)["message"] == "rank 1 of 2: bad"
    (tmp_path / "rank-3.json").write_text(json.dumps(dict(message="rank 3: killed", code=1, time=11, killed=True)))
    assert first_error(tmp_path)["message"] == "rank 3: killed"


def test_a_report_goes_to_the_watching_command_when_there_is_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(launch.ERROR_DIR_VARIABLE, str(tmp_path))
    launch.report_error("it broke", 3)
    assert json.loads((tmp_path / "rank-1.json").read_text())["message"] == "rank 1 of 2: it broke"
    monkeypatch.delenv(launch.ERROR_DIR_VARIABLE)
    monkeypatch.setenv("WORLD_SIZE", "1")
    try:
        raise ValueError("deep inside")
    except ValueError as exc:
        launch.report_error("ValueError: deep inside", 1, exc)
    line = capsys.readouterr().err.strip()
    assert line.startswith("litv2: error: ValueError: deep inside (traceback in ")
    assert "deep inside" in open(line.split("traceback in ")[1].rstrip(")")).read()


def test_a_process_whose_loop_raises_with_loader_workers_alive_exits_at_once(tmp_path):
    # multiprocessing's exit handler stops daemon children with SIGTERM, which our loader workers
    # ignore, and then waits for them: this process used to hang for ever.
    script = textwrap.dedent("""
        import torch
        from litv2cli.data.loading import StopSafeLoader
        loader = StopSafeLoader(torch.arange(64.0), batch_size=4, num_workers=2)
        batches = iter(loader)
        next(batches)
        raise RuntimeError("the training step failed")
    """)
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "the training step failed" in done.stderr
    assert time.monotonic() - began < 60


def test_fewer_epochs_than_the_warm_up_shrink_it_unless_it_is_given():
    imagenet = Recipe()  # 300 epochs, 20 of warm-up
    assert imagenet.with_overrides(epochs=4).warmup_epochs == pytest.approx(0.4)
    assert imagenet.with_overrides(epochs=1).warmup_epochs == 0
    assert imagenet.with_overrides(epochs=30).warmup_epochs == 20
    with pytest.raises(UserError, match="warmup_epochs"):
        imagenet.with_overrides(epochs=4, warmup_epochs=5)
