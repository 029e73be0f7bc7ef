"""`litv2 bench model` and `litv2 bench attention` under bf16 and fp16 autocast on a CPU, in
CI size (tiny LITv2-T, batch 2, two timed steps): every row measured, and the dtype stated."""

import json
import math

import pytest

from litv2cli.bench.attention import ATTENTION_LABELS
from litv2cli.cli.main import main

TINY = ["--batch-size", "2", "--repeats", "2", "--warmup", "1"]
AUTOCAST_DTYPES = ["bfloat16", "float16"]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
def test_model_bench_measures_under_autocast_and_says_so(capsys, dtype):
    assert main(["bench", "model", "--models", "litv2_t", "--res", "64", *TINY, "--dtype", dtype, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    (row,) = result["rows"]
    assert row["status"] == "ok"
    for key in ("images_per_s", "test_memory_mib", "train_memory_mib"):
        assert positive(row[key]), (key, row[key])
    assert f"float32 weights, autocast {dtype}" in result["protocol"]
    assert "native CPU kernels not used (float32 only)" in result["protocol"]


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
def test_attention_bench_measures_under_autocast_and_says_so(capsys, tmp_path, dtype):
    assert main(["bench", "attention", "--variant", "t", "--res", "64", *TINY, "--no-memory", "--dtype", dtype,
                 "--output", str(tmp_path)]) == 0
    caption = " ".join(capsys.readouterr().out.split())  # the table wraps its caption at its own width
    assert f"float32 weights, autocast {dtype}" in caption
    rows = json.loads((tmp_path / "attention.json").read_text())["rows"]
    assert [row["attention"] for row in rows] == list(ATTENTION_LABELS)
    for row in rows:
        assert row["status"] == "ok" and positive(row["images_per_s"]), row
