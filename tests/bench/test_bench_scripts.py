"""The benchmark scripts behind BENCHMARKS.md still run (tiny sizes; structure, not speed)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_hilo.py"


@pytest.mark.parametrize("args", [
    ["model", "--res", "64", "--batch", "1", "--parts", "--modes", "infer,train"],
    ["dtm", "--batch", "1"],
    ["layer", "--batch", "2", "--modes", "infer,train"],
    ["keys"],
])
def test_bench_hilo_reports_a_finite_ratio_for_every_model(tmp_path, args):
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, str(SCRIPT), *args, "--warmup", "0", "--repeats", "2", "--threads", "1",
                    "--json", str(out)], check=True, capture_output=True, text=True, timeout=600)
    results = json.loads(out.read_text())["results"]
    assert results
    for result in results:
        assert len(result["speedup"]) == len(result["models"]) - 1
        for ratio in result["speedup"].values():
            assert math.isfinite(ratio["ratio_of_medians"]) and ratio["ratio_of_medians"] > 0
