"""`litv2 export`: a deployment file of a checkpoint or bare variant, checked against PyTorch."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from litv2cli.cli.options import Resolution, parse_resolution
from litv2cli.errors import UserError

app = typer.Typer()

FORMATS = ("onnx",)
DEFAULT_BENCH_BATCH = 8
DEFAULT_BENCH_ROUNDS = 10


@app.command("export")
def export_command(
    output: Annotated[str, typer.Option("--output", "-o", help="File to write, e.g. litv2-s.onnx. An existing file "
                                        "is replaced, but only by an export that passed its checks.")],
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", help="Our run directory or model.safetensors, a DeepSpeed checkpoint, or an official "
        ".pth file. Without it, --variant is exported with random weights.")] = None,
    variant: Annotated[str | None, typer.Option(
        "--variant", "-v", help="t, s, m or b: checked against the checkpoint, or the bare variant to export.")]
    = None,
    format_: Annotated[str, typer.Option("--format", help="Export format (onnx).")] = "onnx",
    res: Resolution = "224",
    batch: Annotated[str, typer.Option("--batch", help="'dynamic' (a batch axis of any size) or a fixed batch N.")]
    = "dynamic",
    opset: Annotated[int | None, typer.Option(
        "--opset", help="ONNX opset (default: 19 with DeformConv, 18 with --deform-conv gridsample).")] = None,
    deform_conv: Annotated[str, typer.Option(
        "--deform-conv", help="DTM as ONNX 'native' DeformConv, or 'gridsample': GridSample + Conv, standard "
        "operators for runtimes without DeformConv.")] = "native",
    spatial: Annotated[str, typer.Option(
        "--spatial", help="Height/width: 'auto' (dynamic multiples of 32 where the HiLo windows allow, else "
        "fixed at --res), 'dynamic' or 'static'.")] = "auto",
    bench: Annotated[bool, typer.Option("--bench", help="Time onnxruntime against PyTorch on this CPU.")] = False,
    bench_batch: Annotated[int | None, typer.Option(
        "--bench-batch", help=f"Batch for --bench (default: the fixed batch, else {DEFAULT_BENCH_BATCH}).")] = None,
    bench_rounds: Annotated[int | None, typer.Option(
        "--bench-rounds", help=f"Interleaved rounds for --bench, one step per engine each; the median is kept "
        f"(default {DEFAULT_BENCH_ROUNDS}).")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="CPU threads for each engine in --bench (default: PyTorch's).")] = None,
) -> None:
    """Export to ONNX, check it with onnx.checker and compare onnxruntime with PyTorch before keeping it."""
    from litv2cli.export import OnnxExportOptions, check_output_path, export_checked, load_export_source, plan_export

    if format_.lower() not in FORMATS:
        raise UserError(f"--format {format_!r} is not supported; available: {', '.join(FORMATS)} "
                        f"(build TensorRT engines from the ONNX file, e.g. with trtexec)")
    options = OnnxExportOptions(resolution=parse_resolution(res), batch_size=_parse_batch(batch), opset=opset,
                                deform_conv=deform_conv, spatial=spatial)
    bench_batch, bench_rounds = _check_bench(bench, bench_batch, bench_rounds, options.batch_size, threads)
    path = check_output_path(output)
    replacing = path.exists()
    source = load_export_source(checkpoint, variant)
    plan = plan_export(source.model, options)  # refuses before the slow part
    typer.echo(source.description)
    metadata = {"litv2.variant": source.variant, "litv2.weights": "trained" if source.trained else "random"}
    result = export_checked(source.model, path, plan, metadata)
    form = "ONNX DeformConv" if plan.deform_conv == "native" else "GridSample + Conv"
    replaced = ", replacing the old file" if replacing else ""
    typer.echo(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB{replaced}): LITv2-{source.variant.upper()}, "
               f"opset {plan.opset}, DTM as {form}")
    typer.echo(f"input {plan.input_description()}")
    typer.echo(result.verification.summary())
    if bench:
        _bench(source.model, result.path, bench_batch, plan.resolution, threads, bench_rounds)


def _parse_batch(text: str) -> int | None:
    if text.lower() == "dynamic":
        return None
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"--batch {text!r}: use 'dynamic' or a fixed batch size such as 1") from None
    if value < 1:
        raise UserError(f"--batch {value}: a fixed batch must be at least 1")
    return value


def _check_bench(bench: bool, bench_batch: int | None, rounds: int | None, fixed_batch: int | None,
                 threads: int | None) -> tuple[int, int]:
    """The batch and rounds to time with; options that only --bench uses are refused without it."""
    if not bench and (bench_batch is not None or threads is not None or rounds is not None):
        raise UserError("--bench-batch, --bench-rounds and --threads only apply with --bench")
    if rounds is not None and rounds < 1:
        raise UserError(f"--bench-rounds {rounds} must be at least 1")
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads} must be at least 1")
    if bench_batch is not None and bench_batch < 1:
        raise UserError(f"--bench-batch {bench_batch} must be at least 1")
    if fixed_batch is not None and bench_batch not in (None, fixed_batch):
        raise UserError(f"--bench-batch {bench_batch}: the file has a fixed batch of {fixed_batch}")
    return bench_batch or fixed_batch or DEFAULT_BENCH_BATCH, rounds or DEFAULT_BENCH_ROUNDS


def _bench(model, path, batch_size: int, resolution: tuple[int, int], threads: int | None, rounds: int) -> None:
    import onnxruntime
    import torch

    from litv2cli.export import time_onnxruntime_vs_pytorch
    from litv2cli.measure.protocol import MAX_SPREAD

    result = time_onnxruntime_vs_pytorch(model, {"onnxruntime": path}, batch_size=batch_size,
                                         resolution=resolution, threads=threads, rounds=rounds)
    torch_speed, ort_speed = result.engines["pytorch"], result.engines["onnxruntime"]
    ratio = result.ratio("onnxruntime")
    typer.echo(f"bench ({result.protocol}; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}):")
    typer.echo(f"  PyTorch     {torch_speed.images_per_s:8.2f} images/s (spread {torch_speed.spread:.0%})")
    typer.echo(f"  onnxruntime {ort_speed.images_per_s:8.2f} images/s (spread {ort_speed.spread:.0%})")
    typer.echo(f"  onnxruntime / PyTorch throughput: {ratio.value:.2f}x (median of the per-round ratios; quartiles "
               f"{ratio.low:.2f}x to {ratio.high:.2f}x)")
    load, cores = max(result.load_average), os.cpu_count() or 1
    if result.threads > 1 and load > cores:
        typer.echo(f"  warning: load average {load:.1f} on {cores} cores: other processes compete for the cores and "
                   f"PyTorch's OpenMP threads lose most, so the ratio overstates onnxruntime's lead (re-run on an "
                   f"idle machine, or with --threads 1)")
    elif ratio.spread > MAX_SPREAD:
        hint = "more --bench-rounds" if result.threads == 1 else "--threads 1"
        typer.echo(f"  warning: the per-round ratios vary by {ratio.spread:.0%} (quartile range / median), so the "
                   f"machine was busy and the ratio is unreliable (re-run on an idle machine, or with {hint})")
