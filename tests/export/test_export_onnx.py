"""ONNX export: LITv2-T and LITv2-S run in onnxruntime and match PyTorch; refusals are clear."""

import numpy as np
import onnx
import onnx.helper
import onnxruntime as ort
import pytest
import torch
from torch import nn

from litv2cli.export import (
    ATOL, ExportError, OnnxExportOptions, export_checked, load_export_source, open_session, plan_export,
)
from litv2cli.export import onnx as onnx_export
from litv2cli.models import create_model
from tests.helpers.model_fixtures import with_learned_offsets


def onnxruntime_vs_pytorch(path, model: nn.Module, shape: tuple[int, ...]) -> float:
    """Max |onnxruntime - PyTorch| on a fresh random input, run by a fresh session."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.randn(shape)
    (actual,) = session.run(None, {"images": images.numpy()})
    with torch.inference_mode():
        expected = model(images).numpy()
    assert actual.shape == expected.shape
    return float(np.abs(actual - expected).max())


def operators(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def opset(path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


def input_dims(path) -> list[str | int]:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def test_litv2_s_from_an_official_checkpoint_runs_in_onnxruntime_like_pytorch(tmp_path):
    torch.manual_seed(0)
    trained = with_learned_offsets(create_model("s")).eval()
    checkpoint = tmp_path / "litv2_s.pth"
    torch.save({"model": trained.state_dict(), "epoch": 299}, checkpoint)  # the model-zoo layout
    source = load_export_source(str(checkpoint), "s")
    plan = plan_export(source.model, OnnxExportOptions(resolution=(224, 224)))
    assert plan.batch_size is None and plan.dynamic_spatial

    result = export_checked(source.model, tmp_path / "litv2-s.onnx", plan)

    assert result.verification.max_difference <= ATOL
    assert "DeformConv" in operators(result.path) and opset(result.path) == 19
    assert input_dims(result.path) == ["batch", 3, "32*height_over_32", "32*width_over_32"]
    for shape in [(1, 3, 224, 224), (3, 3, 224, 224)]:
        assert onnxruntime_vs_pytorch(result.path, trained, shape) <= ATOL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["litv2-s.onnx", "litv2_s.pth"]  # no temp file left


def test_gridsample_form_with_hilo_padding_uses_standard_operators_and_matches(tmp_path):
    # Window 3 at stride 16 and 2 at stride 32 pad the 4x6 and 2x3 maps of a 64x96 input.
    torch.manual_seed(1)
    model = with_learned_offsets(create_model("t", num_classes=10, local_ws=(0, 0, 3, 2))).eval()
    plan = plan_export(model, OnnxExportOptions(resolution=(64, 96), deform_conv="gridsample"))
    assert not plan.dynamic_spatial and "window 3 in stage 3" in plan.static_reason
    assert plan.opset == 18

    result = export_checked(model, tmp_path / "t.onnx", plan)

    assert opset(result.path) == 18
    found = operators(result.path)
    assert {"GridSample", "Pad"} <= found and "DeformConv" not in found
    assert input_dims(result.path) == ["batch", 3, 64, 96]
    for batch in (1, 3):
        assert onnxruntime_vs_pytorch(result.path, model, (batch, 3, 64, 96)) <= ATOL


def test_sizes_that_change_hilo_padding_cannot_be_dynamic():
    model = create_model("t", local_ws=(0, 0, 4, 1))
    with pytest.raises(ExportError, match=r"window 4 in stage 3 .*--spatial static"):
        plan_export(model, OnnxExportOptions(resolution=(224, 224), spatial="dynamic"))
    auto = plan_export(model, OnnxExportOptions(resolution=(224, 224)))
    assert not auto.dynamic_spatial and "fixed at 224x224" in auto.input_description()
    paper = plan_export(create_model("t"), OnnxExportOptions(resolution=(224, 224), spatial="dynamic"))
    assert paper.dynamic_spatial


@pytest.mark.parametrize(("options", "message"), [
    (OnnxExportOptions(opset=18), "DeformConv is opset 19"),
    (OnnxExportOptions(opset=17, deform_conv="gridsample"), "use 18 to"),
    (OnnxExportOptions(opset=26), "use 19 to 25"),
    (OnnxExportOptions(deform_conv="plugin"), "--deform-conv 'plugin'"),
    (OnnxExportOptions(resolution=(224, 100)), "multiples of 32"),
    (OnnxExportOptions(batch_size=0), "at least 1"),
])
def test_configurations_that_cannot_be_exported_are_refused_in_one_line(options, message):
    with pytest.raises(ExportError, match=message) as error:
        plan_export(create_model("t"), options)
    assert "\n" not in str(error.value)


def test_a_file_that_fails_its_check_is_never_written(tmp_path, monkeypatch):
    def broken_export(model, path, plan, metadata=None):
        path.write_bytes(b"not an onnx model")

    monkeypatch.setattr(onnx_export, "export_onnx", broken_export)
    model = create_model("t")
    plan = plan_export(model, OnnxExportOptions(resolution=(32, 32)))
    with pytest.raises(ExportError, match="nothing written"):
        export_checked(model, tmp_path / "model.onnx", plan)
    assert list(tmp_path.iterdir()) == []


def _single_node_model(path, node: onnx.NodeProto, elem_type: int) -> None:
    x = onnx.helper.make_tensor_value_info("x", elem_type, [2, 4])
    y = onnx.helper.make_tensor_value_info("y", elem_type, [2, 4])
    graph = onnx.helper.make_graph([node], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)]), str(path))


def test_an_operator_onnxruntime_lacks_is_named(tmp_path):
    path = tmp_path / "relu_int16.onnx"  # a valid model: ONNX Relu allows int16, onnxruntime's CPU kernel does not
    _single_node_model(path, onnx.helper.make_node("Relu", ["x"], ["y"]), onnx.TensorProto.INT16)
    onnx.checker.check_model(str(path), full_check=True)
    with pytest.raises(ExportError, match=r"no CPU kernel for operator Relu \(version 14\)"):
        open_session(path)


def test_a_missing_deformconv_kernel_points_to_the_gridsample_form():
    # The message onnxruntime releases without a DeformConv kernel (e.g. 1.18) give.
    error = ("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for "
             "DeformConv(19) node with name 'node_deform_conv2d'")
    message = onnx_export._missing_operator_message(error)
    assert "operator DeformConv (version 19)" in message and "--deform-conv gridsample" in message
