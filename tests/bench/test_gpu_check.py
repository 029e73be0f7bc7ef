"""benchmarks/gpu_check.py on a CPU at its quick sizes: the paths a CPU can run pass with real
figures, the CUDA-only ones are skipped (not failed), and the report holds what BENCHMARKS.md needs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
CPU_PATHS = ("data", "pretrain", "finetune", "eval", "bench-model", "vs-swin")
CUDA_ONLY = ("sdpa-kernels", "dtm")


@pytest.mark.slow
def test_quick_cpu_check_passes_the_cpu_paths_and_skips_the_cuda_ones(tmp_path):
    out = tmp_path / "check.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--only", ",".join(CPU_PATHS + CUDA_ONLY),
         "--out", str(out), "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=600, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = result.stdout.splitlines()
    context = result.stdout + result.stderr
    for name in CPU_PATHS:
        assert any(line.startswith(f"PASS {name}: ") for line in lines), context
    for name in CUDA_ONLY:
        assert f"SKIP {name}: needs CUDA (--device cpu)" in lines, context
    assert not any(line.startswith("FAIL ") for line in lines), context
    assert result.returncode == 0, context

    report = json.loads(out.read_text())
    assert report["settings"]["device"] == "cpu" and report["settings"]["precision"] == "bf16"
    assert report["settings"]["train_batch"] == 4 and report["settings"]["bench_batch"] == 4
    assert report["environment"]["torch"] and report["environment"]["device_name"].startswith("cpu")
    paths = report["paths"]
    assert {name: paths[name]["status"] for name in CPU_PATHS + CUDA_ONLY} == {
        **{name: "PASS" for name in CPU_PATHS}, **{name: "SKIP" for name in CUDA_ONLY}}
    assert paths["data"]["figures"]["train_images"] == 32 and paths["data"]["figures"]["val_images"] == 8
    for name in ("pretrain", "finetune"):
        figures = paths[name]["figures"]
        assert figures["steps"] == 2 and figures["train_images_per_s"] > 0 and figures["val_images"] == 8
        assert 0 <= figures["val_top1"] <= 100
    assert paths["finetune"]["figures"]["res"] == 96
    evaluation = paths["eval"]["figures"]
    assert evaluation["count"] == 8 and evaluation["resolution"] == "96x96" and 0 <= evaluation["top1"] <= 100
    speeds = {row["model"]: row["images_per_s"] for row in paths["bench-model"]["figures"]["rows"]}
    assert speeds["litv2_t"] > 0 and speeds["swin_tiny_patch4_window7_224"] > 0
    assert paths["vs-swin"]["figures"]["ratio"] == pytest.approx(
        speeds["litv2_t"] / speeds["swin_tiny_patch4_window7_224"])
