"""ONNX export of a LITv2 model, checked before the file is kept.

The exporter is `torch.onnx.export(dynamo=True)`: it captures the model with `torch.export` and
translates `torchvision::deform_conv2d` to ONNX `DeformConv`, so DTM exports as one operator. The
TorchScript exporter has no translation for it, and its tracing would silently bake HiLo's Python
padding branch into a graph it calls dynamic; `torch.export` reasons about sizes symbolically, so
we can say exactly which sizes a file accepts. The batch axis is dynamic unless a fixed batch is
asked for. Height and width are dynamic (multiples of 32) only when every HiLo window s divides
its stage's 32 / stride, so that no size needs padding (the paper's windows do); otherwise the
padding is a Python decision on the size and the file gets a fixed height and width. Every file
is written next to the output, passed through `onnx.checker`, run in onnxruntime at two sizes per
dynamic axis and compared with PyTorch before it is renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from litv2cli.errors import UserError

DEFORM_CONV_FORMS = ("native", "gridsample")  # ONNX DeformConv, or GridSample + Conv (deform.py)
SPATIAL_MODES = ("auto", "dynamic", "static")
# Lowest opset per form: DeformConv is opset 19. The GridSample form's operators exist at 17, but
# PyTorch's exporter writes 18 and reaches 17 only through onnx's version converter, which has no
# Pad adapter down to 17 and then keeps 18 with no error: 18 is the lowest it writes faithfully.
MIN_OPSET = {"native": 19, "gridsample": 18}
# Newest opset the exporter here translates and onnxruntime 1.32 runs: at 26 the onnx version
# converter has no DeformConv adapter and writes an invalid file.
MAX_OPSET = 25
MODEL_STRIDE = 32
ATOL = 1e-4  # max |onnxruntime - PyTorch| over the outputs
INPUT_NAME = "images"


class ExportError(UserError):
    """A configuration that cannot be exported, or a file that failed its check (nothing kept)."""


@dataclass(frozen=True)
class OnnxExportOptions:
    """What the user asked for; `plan_export` turns it into a checked `ExportPlan`."""

    resolution: tuple[int, int] = (224, 224)
    batch_size: int | None = None  # None: dynamic batch axis
    opset: int | None = None  # None: the lowest opset that holds the graph
    deform_conv: str = "native"
    spatial: str = "auto"  # auto: dynamic height/width where the graph allows, else fixed


@dataclass(frozen=True)
class ExportPlan:
    resolution: tuple[int, int]
    batch_size: int | None
    opset: int
    deform_conv: str
    dynamic_spatial: bool
    static_reason: str | None  # why height/width are fixed, when they are
    output_name: str

    @property
    def trace_shape(self) -> tuple[int, int, int, int]:
        """Example input for the trace: `torch.export` fixes any dynamic size that is 1 in it,
        so a dynamic batch is traced at 2 and dynamic sides at 64 or more."""
        height, width = self.resolution
        if self.dynamic_spatial:
            height, width = max(height, 2 * MODEL_STRIDE), max(width, 2 * MODEL_STRIDE)
        return (self.batch_size or 2, 3, height, width)

    def check_shapes(self) -> list[tuple[int, int, int, int]]:
        """Inputs the file is run on after export: the export size, then each dynamic axis changed."""
        height, width = self.resolution
        first = self.batch_size or 2
        shapes = [(first, 3, height, width)]
        if self.batch_size is None:
            shapes.append((1, 3, height, width))
        if self.dynamic_spatial:
            shapes.append((self.batch_size or 1, 3, height + MODEL_STRIDE, width + 2 * MODEL_STRIDE))
        return shapes

    def input_description(self) -> str:
        height, width = self.resolution
        batch = "batch" if self.batch_size is None else str(self.batch_size)
        sides = "32*height_over_32, 32*width_over_32" if self.dynamic_spatial else f"{height}, {width}"
        text = f"{INPUT_NAME}[{batch}, 3, {sides}]: batch {'dynamic' if self.batch_size is None else 'fixed'}, "
        if self.dynamic_spatial:
            return text + "height and width dynamic (any multiples of 32)"
        return text + f"height and width fixed at {height}x{width}" + (
            f" ({self.static_reason})" if self.static_reason else "")


@dataclass(frozen=True)
class Verification:
    """The post-export check: checker passed, and the max |difference| per input shape."""

    runtime: str
    differences: list[tuple[tuple[int, ...], float]] = field(default_factory=list)
    atol: float = ATOL

    @property
    def max_difference(self) -> float:
        return max(diff for _, diff in self.differences)

    def summary(self) -> str:
        shapes = ", ".join(f"{diff:.1e} at {'x'.join(map(str, shape))}" for shape, diff in self.differences)
        return f"onnx.checker ok; {self.runtime} vs PyTorch max abs diff {shapes} (tolerance {self.atol:g}): ok"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    plan: ExportPlan
    verification: Verification
    size_bytes: int


def size_dependent_padding(model: nn.Module) -> list[str]:
    """Why HiLo's padding would depend on the input size (multiples of 32), one reason per stage."""
    reasons = []
    for stage, (window, info) in enumerate(zip(model.local_ws, model.feature_info), start=1):
        granule = MODEL_STRIDE // info["reduction"]  # the stage's map is a multiple of this
        if window > 1 and granule % window:
            reasons.append(f"HiLo window {window} in stage {stage} pads its 1/{info['reduction']} map at "
                           f"some multiples of 32 and not at others")
    return reasons


def plan_export(model: nn.Module, options: OnnxExportOptions) -> ExportPlan:
    """Check the options against the model; every refusal is one `ExportError` line."""
    if options.deform_conv not in DEFORM_CONV_FORMS:
        raise ExportError(f"--deform-conv {options.deform_conv!r}: choose {' or '.join(DEFORM_CONV_FORMS)}")
    if options.spatial not in SPATIAL_MODES:
        raise ExportError(f"--spatial {options.spatial!r}: choose one of {', '.join(SPATIAL_MODES)}")
    height, width = options.resolution
    if height <= 0 or width <= 0 or height % MODEL_STRIDE or width % MODEL_STRIDE:
        raise ExportError(f"resolution {height}x{width}: sides must be positive multiples of {MODEL_STRIDE}")
    if options.batch_size is not None and options.batch_size < 1:
        raise ExportError(f"--batch {options.batch_size}: a fixed batch must be at least 1")
    lowest = MIN_OPSET[options.deform_conv]
    opset = lowest if options.opset is None else options.opset
    if not lowest <= opset <= MAX_OPSET:
        hint = " (ONNX DeformConv is opset 19; --deform-conv gridsample needs 18)" if opset < lowest else ""
        raise ExportError(f"--opset {opset} cannot hold this graph with --deform-conv {options.deform_conv}: "
                          f"use {lowest} to {MAX_OPSET}{hint}")
    reasons = size_dependent_padding(model)
    if options.spatial == "dynamic" and reasons:
        raise ExportError(f"dynamic height/width cannot be exported: {reasons[0]}, which one graph cannot "
                          f"hold; use --spatial static (or auto) for a file at fixed {height}x{width}")
    dynamic_spatial = options.spatial == "dynamic" or (options.spatial == "auto" and not reasons)
    if dynamic_spatial:
        static_reason = None
    elif options.spatial == "static":
        static_reason = "--spatial static"
    else:
        static_reason = "; ".join(reasons)
    output_name = "logits" if getattr(model, "num_classes", 1) else "features"
    return ExportPlan((height, width), options.batch_size, opset, options.deform_conv, dynamic_spatial,
                      static_reason, output_name)


def check_output_path(output: str | Path) -> Path:
    """The output path, after checking a file can be created next to it (nothing is left behind)."""
    output = Path(output)
    if output.is_dir():
        raise ExportError(f"--output {output} is a directory; give a file name such as model.onnx")
    temp = _reserve_temp(output)
    temp.unlink()
    return output


def export_checked(model: nn.Module, output: str | Path, plan: ExportPlan,
                   metadata: dict[str, str] | None = None) -> ExportResult:
    """Export, check and compare; the file appears at `output` only if every check passed."""
    output = Path(output)
    model = model.eval()
    temp = _reserve_temp(output)
    try:
        export_onnx(model, temp, plan, metadata)
        verification = verify_onnx(model, temp, plan)
        _set_default_permissions(temp)
        os.replace(temp, output)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return ExportResult(output, plan, verification, output.stat().st_size)


def export_onnx(model: nn.Module, path: str | Path, plan: ExportPlan, metadata: dict[str, str] | None = None) -> None:
    """Write the ONNX file (no checks: see `export_checked`)."""
    from torch.export import Dim

    from litv2cli.export.deform import with_gridsample_deform_convs

    if plan.deform_conv == "gridsample":
        model = with_gridsample_deform_convs(model)
    axes: dict[int, object] = {}
    if plan.batch_size is None:
        axes[0] = Dim("batch")
    if plan.dynamic_spatial:
        axes[2] = MODEL_STRIDE * Dim("height_over_32")
        axes[3] = MODEL_STRIDE * Dim("width_over_32")
    example = torch.randn(plan.trace_shape, generator=torch.Generator().manual_seed(0))
    try:
        program = torch.onnx.export(model.eval(), (example,), dynamo=True, opset_version=plan.opset,
                                    input_names=[INPUT_NAME], output_names=[plan.output_name],
                                    dynamic_shapes=({**axes},) if axes else None, verbose=False)
    except torch.onnx.errors.OnnxExporterError as exc:
        cause = exc.__cause__ or exc
        first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ExportError(f"torch.onnx.export failed: {first_line}") from exc
    written = program.model.opset_imports.get("", plan.opset)
    if written != plan.opset:  # the version converter fell back to the exporter's own opset
        raise ExportError(f"torch.onnx.export wrote opset {written}, not the requested {plan.opset}; "
                          f"use --opset {written} or later; nothing written")
    program.model.metadata_props.update({
        "litv2.input": plan.input_description(),
        "litv2.deform_conv": "ONNX DeformConv" if plan.deform_conv == "native" else "GridSample + Conv",
        **(metadata or {}),
    })
    program.save(str(path), external_data=False)


def open_session(path: str | Path, threads: int | None = None, *, spin: bool = True):
    """An onnxruntime CPU session; an operator the runtime lacks is one `ExportError` naming it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spin:  # idle workers would otherwise spin and steal cores from PyTorch in side-by-side timing
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind classes (Fail, NotImplemented, ...)
        raise ExportError(_missing_operator_message(str(exc)) or
                          f"onnxruntime {ort.__version__} cannot load the export: {_first_line(str(exc))}") from None


def verify_onnx(model: nn.Module, path: str | Path, plan: ExportPlan, *, atol: float = ATOL) -> Verification:
    """onnx.checker, then onnxruntime vs PyTorch on random inputs of every shape in `plan.check_shapes()`."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"onnx.checker rejects the export: {_first_line(str(exc))}; nothing written") from None
    session = open_session(path)
    generator = torch.Generator().manual_seed(1)
    differences = []
    for shape in plan.check_shapes():
        images = torch.randn(shape, generator=generator)
        with torch.inference_mode():
            expected = model(images).numpy()
        try:
            (actual,) = session.run(None, {INPUT_NAME: images.numpy()})
        except Exception as exc:
            raise ExportError(f"onnxruntime fails on input {'x'.join(map(str, shape))}: "
                              f"{_first_line(str(exc))}; nothing written") from None
        if actual.shape != expected.shape:
            raise ExportError(f"onnxruntime output shape {actual.shape} differs from PyTorch's {expected.shape} "
                              f"on input {'x'.join(map(str, shape))}; nothing written")
        difference = float(np.abs(actual - expected).max())
        if not difference <= atol:  # also catches NaN
            raise ExportError(f"onnxruntime differs from PyTorch by {difference:.2e} (> {atol:g}) on input "
                              f"{'x'.join(map(str, shape))}; nothing written")
        differences.append((shape, difference))
    return Verification(f"onnxruntime {ort.__version__} (CPU)", differences, atol)


def _missing_operator_message(error: str) -> str | None:
    """'... could not find an implementation for DeformConv(19) ...' -> what to do about it."""
    import re

    import onnxruntime as ort

    match = (re.search(r"Could not find an implementation for (\w+)\((\d+)\)", error)
             or re.search(r"([\w.]*:?\w+)\((-?\d+)\) is not a registered function/op", error))
    if match is None:
        return None
    operator, version = match.groups()
    if operator == "DeformConv":
        advice = "re-export with --deform-conv gridsample (standard ONNX operators only) or upgrade onnxruntime"
    else:
        advice = "run the file with a runtime that implements it, or try another --opset"
    return (f"onnxruntime {ort.__version__} has no CPU kernel for operator {operator} (version {version}); "
            f"{advice}; nothing written")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def _reserve_temp(output: Path) -> Path:
    """An empty temporary file beside `output`, so the final rename stays on one filesystem."""
    parent = output.parent if str(output.parent) else Path(".")
    if not parent.is_dir():
        raise ExportError(f"--output {output}: directory {parent} does not exist")
    try:
        handle, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise ExportError(f"--output {output}: cannot write in {parent} ({exc.strerror})") from None
    os.close(handle)
    return Path(name)


def _set_default_permissions(path: Path) -> None:
    """mkstemp creates files readable by the owner only; give the result a plain file's mode."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)
