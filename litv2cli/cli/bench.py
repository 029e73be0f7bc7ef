"""`litv2 bench model` and `litv2 bench attention`: the paper's speed and memory comparisons,
measured on the device at hand (CUDA when present, else CPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import click
import typer

from litv2cli.cli.options import JsonOutput, check_choice, check_variant, parse_resolution
from litv2cli.errors import UserError
from litv2cli.run.rundir import check_creatable_dir

app = typer.Typer(name="bench", help="Benchmark speed and memory: LITv2 against its peers, HiLo against other "
                  "attentions.", no_args_is_help=True)

Models = Annotated[str | None, typer.Option(
    "--models", help="Comma-separated models: litv2_s, litv2_m, litv2_b (litv2_<v>_reference: the paper-style "
    "HiLo and torchvision's deformable conv) and any timm model name. Default: LITv2-S/M/B, resnet50, convnext_tiny, swin_tiny_patch4_window7_224, "
    "pvt_v2_b2, twins_pcpvt_small, twins_svt_small.")]
Attentions = Annotated[str, typer.Option(
    "--attentions", help="Comma-separated attentions to put in the backbone: msa, sra, w_msa, t_msa, hilo.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per step (default 64 on CUDA, "
                                                "4 on CPU).")]
Repeats = Annotated[int | None, typer.Option("--repeats", min=1, help="Timed steps per model; the median is kept "
                                              "(default 30; fewer for a quick look on a CPU).")]
Warmup = Annotated[int | None, typer.Option("--warmup", min=0, help="Untimed steps per model first (default 10 on "
                                             "CUDA, 2 on CPU).")]
Compile = Annotated[bool, typer.Option("--compile", help="torch.compile every model before timing (memory is "
                                       "measured eager).")]
CompileMode = Annotated[str, typer.Option("--compile-mode", help="torch.compile mode with --compile: default, "
                                          "reduce-overhead, max-autotune.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto (as training: bf16 autocast on a GPU with native bf16, "
                                    "else fp16; float32 on CPU), float32, or autocast in bfloat16 or float16 "
                                    "(float32 weights).")]
NoMemory = Annotated[bool, typer.Option("--no-memory", help="Skip the train/test peak-memory measurements.")]
Plot = Annotated[bool, typer.Option("--plot", help="Also draw a PNG in --output.")]
Output = Annotated[Path | None, typer.Option("--output", "-o", help="Write CSV and JSON (and the plot) here "
                                            "(default with --plot: bench-results).")]
StepMode = Annotated[str, typer.Option("--mode", help="Throughput of infer (forward) or train (forward, backward, "
                                       "AdamW step) steps.")]
BudgetS = Annotated[float, typer.Option("--budget-s", min=1.0, help="CPU only: a variant whose step takes longer "
                                        "than this (seconds) is marked over budget and not tried at larger sizes.")]
Res = Annotated[str, typer.Option("--res", help="Resolution: 224 or HxW such as 800x1280 (multiples of 32).")]
ResList = Annotated[str | None, typer.Option("--res", help="Comma-separated resolutions, e.g. 224,384,512 or "
                                             "800x1280 (default 224 to 1024 on CUDA, 224,384 on CPU).")]
Variant = Annotated[str, typer.Option("--variant", "-v", help="Backbone whose attention is replaced (the paper: s).")]

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@app.command("model")
def model_command(models: Models = None, res: Res = "224", batch_size: BatchSize = None, repeats: Repeats = None,
                  warmup: Warmup = None, compile: Compile = False, compile_mode: CompileMode = "default",
                  dtype: Dtype = "auto", mode: StepMode = "infer", no_memory: NoMemory = False, plot: Plot = False,
                  output: Output = None, json_output: JsonOutput = False) -> None:
    """Table 1 of the paper on this device: params, GFLOPs, throughput, train and test memory."""
    from litv2cli.bench.models import DEFAULT_MODELS, check_model_names, run_model_bench

    names = _split(models) if models else list(DEFAULT_MODELS)
    check_model_names(names)
    resolution = parse_resolution(res)
    _check_output(output)
    check_choice("--mode", mode, ("infer", "train"))
    settings = _settings(batch_size, warmup, repeats, dtype, compile, compile_mode, not no_memory, None)
    _progress(json_output)(f"measuring {len(names)} models on {settings.device} (batch {settings.batch_size})")
    rows = [row.as_dict() for row in run_model_bench(names, resolution, settings, mode=mode)]
    protocol = f"{mode} throughput; " + settings.protocol(f"{resolution[0]}x{resolution[1]}")
    _finish("models", "Models on this device", rows, protocol, output, plot, json_output)


@app.command("attention")
def attention_command(attentions: Attentions = "msa,sra,w_msa,t_msa,hilo", res: ResList = None,
                      variant: Variant = "s", batch_size: BatchSize = None, repeats: Repeats = None,
                      warmup: Warmup = None, compile: Compile = False, compile_mode: CompileMode = "default",
                      dtype: Dtype = "auto", budget_s: BudgetS = 60.0, no_memory: NoMemory = False,
                      plot: Plot = False, output: Output = None, json_output: JsonOutput = False) -> None:
    """Figure 3 of the paper: HiLo vs MSA, SRA, W-MSA and T-MSA inside one LITv2 backbone, per resolution."""
    from litv2cli.bench.attention import ATTENTION_LABELS, CPU_RESOLUTIONS, GPU_RESOLUTIONS, run_attention_bench

    names = _split(attentions)
    unknown = [name for name in names if name not in ATTENTION_LABELS]
    if unknown:
        raise UserError(f"--attentions: unknown {', '.join(unknown)}; choose from {', '.join(ATTENTION_LABELS)}")
    variant = check_variant(variant)
    _check_output(output)
    settings = _settings(batch_size, warmup, repeats, dtype, compile, compile_mode, not no_memory, budget_s)
    defaults = GPU_RESOLUTIONS if settings.device.type == "cuda" else CPU_RESOLUTIONS
    resolutions = [parse_resolution(text) for text in (_split(res) if res else defaults)]
    rows = [row.as_dict() for row in run_attention_bench(names, resolutions, settings, variant=variant,
                                                          progress=_progress(json_output))]
    sizes = ", ".join(f"{h}x{w}" for h, w in resolutions)
    protocol = f"LITv2-{variant.upper()} backbone, inference throughput; " + settings.protocol(sizes)
    _finish("attention", f"Attentions inside LITv2-{variant.upper()}", rows, protocol, output, plot, json_output)


def _split(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise UserError(f"{text!r}: give at least one comma-separated value")
    return items


def _check_output(output: Path | None) -> None:
    """Refuse an --output that cannot become a directory now, not after minutes of measuring."""
    if output is not None:
        check_creatable_dir(output)


def _settings(batch_size, warmup, repeats, dtype, compile, compile_mode, memory, budget_s):
    from litv2cli.bench.protocol import DTYPES, default_settings

    check_choice("--dtype", dtype, DTYPES)
    check_choice("--compile-mode", compile_mode, COMPILE_MODES)
    return default_settings(batch_size=batch_size, warmup=warmup, repeats=repeats, dtype=dtype,
                            compile_mode=compile_mode if compile else None, measure_memory=memory,
                            step_budget_s=budget_s)


def _progress(quiet: bool):
    from rich.console import Console

    console = Console(stderr=True)
    return (lambda message: None) if quiet else (lambda message: console.print(f"[dim]{message}[/dim]"))


def _finish(stem: str, title: str, rows: list[dict], protocol: str, output: Path | None, plot: bool,
            json_output: bool) -> None:
    from litv2cli.bench.report import ATTENTION_COLUMNS, MODEL_COLUMNS, render_table, save_outputs

    context = click.get_current_context()
    options = {key: str(value) if isinstance(value, Path) else value for key, value in context.params.items()}
    payload = {"command": context.command_path, "options": options, "protocol": protocol, "rows": rows}
    if output is None and plot:
        output = Path("bench-results")
    try:
        written = save_outputs(stem, rows, payload, output, plot) if output is not None else []
    except OSError as exc:
        raise UserError(f"--output {output}: {exc.strerror or exc}") from None
    if json_output:
        typer.echo(json.dumps(payload))
        return
    from rich.console import Console

    console = Console()
    console.print(render_table(title, rows, MODEL_COLUMNS if stem == "models" else ATTENTION_COLUMNS, protocol))
    for path in written:
        console.print(f"wrote {path}")
