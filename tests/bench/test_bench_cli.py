"""`litv2 bench model` and `litv2 bench attention` in CI size: tiny LITv2-T, batch 2, few repeats.

Each command runs once per module (on a CPU every memory measurement, and the timing of a
whole command, runs in a fresh process: that is what takes time) and the tests read its
output: the rows, every measured number, the table as an 80-column terminal shows it, the
files. Speeds are never compared, only checked to be there.
"""

import contextlib
import io
import json
import math

import pytest

from litv2cli.bench.attention import ATTENTION_LABELS
from litv2cli.bench.models import build_model, model_macs
from litv2cli.cli.main import main

TINY = ["--batch-size", "2", "--repeats", "2", "--warmup", "1"]
RESOLUTIONS = ["64x64", "96x96"]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def model_bench():
    with _Capture() as capture:
        code = main(["bench", "model", "--models", "litv2_t", "--res", "64", *TINY, "--json"])
    assert code == 0, capture.err
    return json.loads(capture.out)


@pytest.fixture(scope="module")
def attention_bench(tmp_path_factory):
    output = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as patch, _Capture() as capture:
        patch.setenv("COLUMNS", "80")
        code = main(["bench", "attention", "--variant", "t", "--res", "64,96", *TINY, "--no-memory",
                     "--output", str(output), "--plot"])
    assert code == 0, capture.err
    return capture.out, output


class _Capture:
    """stdout/stderr of a CLI call made from a module-scoped fixture (capsys is per test)."""

    def __enter__(self):
        self._out, self._err = io.StringIO(), io.StringIO()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self._out))
        self._stack.enter_context(contextlib.redirect_stderr(self._err))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        self.out, self.err = self._out.getvalue(), self._err.getvalue()
        return False


def test_model_row_holds_every_number_measured(model_bench):
    (row,) = model_bench["rows"]
    assert row["model"] == "litv2_t" and row["status"] == "ok"
    for key in ("params_m", "gflops", "images_per_s", "test_memory_mib", "train_memory_mib"):
        assert positive(row[key]), (key, row[key])
    assert math.isfinite(row["spread"]) and row["spread"] >= 0
    assert row["train_memory_mib"] > row["test_memory_mib"]  # gradients and AdamW state on top
    assert row["flops_method"].startswith("count_flops")


def test_model_json_states_its_protocol(model_bench):
    protocol = model_bench["protocol"]
    assert "batch 2" in protocol and "64x64" in protocol and "median of 2 steps" in protocol
    assert "OMP_WAIT_POLICY" in protocol
    assert model_bench["options"]["models"] == "litv2_t"


def test_timm_peers_get_counted_flops_and_their_own_size():
    model = build_model("resnet18", (64, 64))
    macs, method = model_macs("resnet18", model, (64, 64))
    assert method.startswith("FlopCounterMode")
    assert 0.1e9 < macs < 0.2e9  # 1.82 GMACs at 224, scaled by (64/224)^2


def test_attention_table_covers_every_attention_at_every_size(attention_bench):
    _, output = attention_bench
    rows = json.loads((output / "attention.json").read_text())["rows"]
    assert [(row["attention"], row["resolution"]) for row in rows] == [
        (name, size) for size in RESOLUTIONS for name in ATTENTION_LABELS]
    for row in rows:
        assert row["status"] == "ok"
        for key in ("params_m", "gflops", "images_per_s"):
            assert positive(row[key]), (row["attention"], row["resolution"], key, row[key])
        assert row["test_memory_mib"] is None and row["train_memory_mib"] is None  # --no-memory
    flops = {(row["attention"], row["height"]): row["gflops"] for row in rows}
    assert all(flops[(name, 96)] > flops[(name, 64)] for name in ATTENTION_LABELS)


def test_attention_run_writes_csv_json_and_plot(attention_bench):
    _, output = attention_bench
    csv_lines = (output / "attention.csv").read_text().splitlines()
    assert csv_lines[0].startswith("attention,height,width,") and len(csv_lines) == 1 + 2 * len(ATTENTION_LABELS)
    assert (output / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_fits_80_columns_with_whole_headers(attention_bench):
    printed, _ = attention_bench
    lines = printed.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in printed
    for header in ("Attention", "Size", "GFLOPs", "(img/s)", "Train", "Test", "Status"):
        assert header in printed
    for label in ATTENTION_LABELS.values():
        assert label in printed


def test_unwritable_output_is_refused_before_measuring(capsys, tmp_path):
    (tmp_path / "file.txt").write_text("a regular file\n")
    blocked = tmp_path / "file.txt" / "out"
    assert main(["bench", "attention", "--variant", "t", "--res", "64", "--output", str(blocked)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == captured.err.strip().splitlines()[0] and str(blocked) in captured.err
    assert captured.out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


@pytest.mark.parametrize(("args", "message"), [
    (["bench", "model", "--models", "litv2_t,no_such_net", "--res", "64"], "unknown model 'no_such_net'"),
    (["bench", "model", "--models", "litv2_t", "--res", "65"], "multiples of 32"),
    (["bench", "model", "--models", "litv2_t", "--mode", "fly"], "--mode 'fly'"),
    (["bench", "model", "--models", "litv2_t", "--dtype", "float64"], "--dtype 'float64'"),
    (["bench", "attention", "--attentions", "hilo,lsh"], "unknown lsh"),
    (["bench", "attention", "--compile", "--compile-mode", "fastest"], "--compile-mode 'fastest'"),
    (["bench", "attention", "--variant", "z", "--res", "64"], "unknown variant 'z'"),
    (["bench", "model", "--batch-size", "0"], "--batch-size"),
])
def test_bad_input_exits_2_with_one_line(capsys, args, message):
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("litv2: error:") and message in lines[0], captured.err
    assert "Traceback" not in captured.err + captured.out
