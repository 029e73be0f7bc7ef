"""`litv2 export` from the command line: a checked file, `--bench` numbers, one-line refusals."""

import math
import re

import numpy as np
import onnx
import onnx.helper
import onnxruntime as ort
import pytest
import torch
from torch import nn

from litv2cli.cli.main import main
from litv2cli.export import (
    OnnxExportOptions, export_checked, plan_export, time_interleaved, time_onnxruntime_vs_pytorch,
)
from litv2cli.export import onnx as onnx_export
from litv2cli.models import create_model

NUMBER = r"(\d+(?:\.\d+)?)"


def test_export_t_replaces_an_old_file_and_benches_onnxruntime_against_pytorch(tmp_path, capsys):
    output = tmp_path / "t.onnx"
    output.write_bytes(b"an older export")
    code = main(["export", "--variant", "t", "--res", "32", "--output", str(output), "--bench", "--bench-batch", "2",
                 "--bench-rounds", "3", "--threads", "1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "replacing the old file" in printed and "onnx.checker ok" in printed
    assert [p.name for p in tmp_path.iterdir()] == ["t.onnx"]

    speeds = [float(v) for v in re.findall(rf"(?:PyTorch|onnxruntime) +{NUMBER} images/s", printed)]
    ratio = re.search(rf"throughput: {NUMBER}x \(median of the per-round ratios; quartiles {NUMBER}x to {NUMBER}x",
                      printed)
    assert len(speeds) == 2 and ratio, printed
    assert all(math.isfinite(v) and v > 0 for v in [*speeds, *map(float, ratio.groups())])

    torch.manual_seed(0)  # the bare variant's weights: seed 0
    model = create_model("t").eval()
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    images = torch.randn(3, 3, 64, 96)  # another batch and size than the export's
    with torch.inference_mode():
        expected = model(images).numpy()
    (actual,) = session.run(None, {"images": images.numpy()})
    assert np.abs(actual - expected).max() <= 1e-4


@pytest.mark.parametrize(("args", "message"), [
    (["--checkpoint", "missing.pth"], "checkpoint not found"),
    (["--variant", "t", "--res", "225"], "multiples of 32"),
    (["--variant", "t", "--opset", "18"], "DeformConv is opset 19"),
    (["--variant", "t", "--deform-conv", "gridsample", "--opset", "17"], "use 18 to"),
    (["--variant", "t", "--format", "tensorrt"], "not supported"),
    (["--variant", "t", "--bench-rounds", "5"], "only apply with --bench"),
    (["--variant", "t", "--batch", "2", "--bench", "--bench-batch", "4"], "fixed batch of 2"),
    ([], "give --checkpoint, or --variant"),
])
def test_mistakes_are_one_line_errors_and_write_nothing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--output", "model.onnx", *args]) == 2
    error = capsys.readouterr().err
    assert error.startswith("litv2: error: ") and message in error and error.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_output_in_a_missing_directory_or_naming_a_directory_is_refused(tmp_path, capsys):
    assert main(["export", "--variant", "t", "--output", str(tmp_path / "no" / "model.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", "--variant", "t", "--output", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_a_failed_export_leaves_an_existing_file_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "export_onnx", lambda model, path, plan, metadata=None: path.write_bytes(b"bad"))
    output = tmp_path / "model.onnx"
    output.write_bytes(b"a good older export")
    model = create_model("t")
    with pytest.raises(onnx_export.ExportError, match="nothing written"):
        export_checked(model, output, plan_export(model, OnnxExportOptions(resolution=(32, 32))))
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"] and output.read_bytes() == b"a good older export"


def test_interleaved_timing_alternates_the_order_and_reports_every_round():
    calls = []
    timings = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, batch_size=4,
                               warmup=1, rounds=4)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]
    for timing in timings.values():
        assert len(timing.samples) == 4 and timing.images_per_s > 0 and math.isfinite(timing.images_per_s)


def test_side_by_side_timing_gives_positive_finite_speeds_and_ratio(tmp_path):
    # A one-node ONNX file and the same computation in PyTorch: fast, and no export needed.
    images = onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["batch", 3, 32, 32])
    pooled = onnx.helper.make_tensor_value_info("pooled", onnx.TensorProto.FLOAT, ["batch", 3, 1, 1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("GlobalAveragePool", ["images"], ["pooled"])], "pool",
                                   [images], [pooled])
    path = tmp_path / "pool.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)]), str(path))

    result = time_onnxruntime_vs_pytorch(nn.AdaptiveAvgPool2d(1), {"onnxruntime": path}, batch_size=2,
                                         resolution=(32, 32), threads=1, warmup=1, rounds=5)

    assert set(result.engines) == {"pytorch", "onnxruntime"}
    for timing in result.engines.values():
        assert timing.images_per_s > 0 and math.isfinite(timing.images_per_s) and timing.spread >= 0
    ratio = result.ratio("onnxruntime")
    assert 0 < ratio.low <= ratio.value <= ratio.high and math.isfinite(ratio.high)
    assert "1 thread per engine" in result.protocol and "5 interleaved rounds" in result.protocol
