"""Deployment exports of LITv2 models: ONNX (checked against PyTorch) and its CPU timing.

    from litv2cli.export import OnnxExportOptions, export_checked, plan_export
    plan = plan_export(model, OnnxExportOptions(resolution=(224, 224)))
    result = export_checked(model, "litv2-s.onnx", plan)   # written only if it matches PyTorch
"""

from litv2cli.export.deform import GridSampleDeformConv2d, with_gridsample_deform_convs
from litv2cli.export.onnx import (
    ATOL, DEFORM_CONV_FORMS, MAX_OPSET, MIN_OPSET, SPATIAL_MODES, ExportError, ExportPlan, ExportResult,
    OnnxExportOptions, Verification, check_output_path, export_checked, export_onnx, open_session, plan_export,
    size_dependent_padding, verify_onnx,
)
from litv2cli.export.source import ExportSource, load_export_source
from litv2cli.export.timing import EngineTiming, Ratio, SideBySide, time_interleaved, time_onnxruntime_vs_pytorch

__all__ = [
    "ATOL", "DEFORM_CONV_FORMS", "MAX_OPSET", "MIN_OPSET", "SPATIAL_MODES", "EngineTiming", "ExportError",
    "ExportPlan", "ExportResult", "ExportSource", "GridSampleDeformConv2d", "OnnxExportOptions", "Ratio", "SideBySide",
    "Verification",
    "check_output_path", "export_checked", "export_onnx", "load_export_source", "open_session", "plan_export",
    "size_dependent_padding", "time_interleaved", "time_onnxruntime_vs_pytorch", "verify_onnx",
    "with_gridsample_deform_convs",
]
