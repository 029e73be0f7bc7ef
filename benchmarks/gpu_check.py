"""GPU acceptance check: every GPU path of litv2cli run once, PASS or FAIL per path, figures in one JSON.

Run it from a fresh clone, after `pip install -e .`, on a machine with one GPU (within 6 minutes):

    python benchmarks/gpu_check.py --out gpu_check.json

It writes a small synthetic ImageFolder, then runs the paths below in this order, the CLI ones as
real `litv2` subprocesses, the measurements in child processes, each with a timeout, and prints
one line per path as it ends:

    PASS <path>: <figure>     FAIL <path>: <one-line reason>     SKIP <path>: <why>

A failing path does not stop the others (a path that needs a failed one is SKIP); paths not
started within --budget seconds (default 360) are SKIP (budget), and so is a path the budget's
end cuts short. The exit code is 1 if any path failed, 2 for a bad option or no visible GPU. The JSON file holds every figure with the GPU's name, compute capability, torch, CUDA and
cuDNN versions, the precision and the batch sizes: figures go into BENCHMARKS.md together with
those, and with the command that produced them.

Paths (full sizes; --quick in brackets):
  data             10 classes x 40 train / 10 val JPEGs at 256x256 [4 x 8 / 2 at 72x72]
  precision-auto   what `--precision auto` resolves to here (bf16 on a GPU of compute capability
                   8.0 or newer, fp16 before; no autocast on a CPU)
  pretrain         `litv2 pretrain` LITv2-S [T], bf16, 224 [64], batch 32 [4], 10 [2] steps, eval at
                   the end: train images/s, loss, val top-1
  finetune         `litv2 finetune --from <pretrain run> --res 384 [96]`, same sizes: images/s, top-1
  eval             `litv2 eval --checkpoint <finetune run> --json`: top-1/top-5 over every val image
  sdpa-kernels     (CUDA) each distinct scaled_dot_product_attention call of HiLo in LITv2-S at 224,
                   bf16, batch 64 (stage 3 Hi-Fi bands with their mask, stage 3 Lo-Fi, stage 4
                   global) under each SDPA backend alone: which run, which raise and why, time of
                   each, and the backend the default dispatcher picks (read from the profiler).
                   PASS if a fused kernel (flash or memory-efficient) runs every call
  dtm              (CUDA) DTM's gather-form deformable conv against torchvision.ops.deform_conv2d
                   on the three DTM shapes of LITv2-S at 224, float32 (TF32 off), batch 64: output
                   and gradients (input, weight, offsets, bias) within 1e-4 of the largest reference
                   value; forward and forward+backward time of both
  vs-reference     LITv2-S against its reference form (the paper's HiLo equations, torchvision's
                   deformable conv), same weights, inference throughput interleaved step by step
                   (`measure_throughput_interleaved`), bf16, batch 64; float32 on a CPU, where
                   torchvision's deformable conv has no bf16 kernel
  bench-model      `litv2 bench model` LITv2-S [T] and Swin-T, bf16, batch 64 [4]: images/s, memory
  vs-swin          LITv2-S over Swin-T images/s, from bench-model (not measured again)
  search           `litv2 search` over alpha 0.5,0.9 x window 2,4 on the device, `--precision auto`,
                   batch 64 [4]: images/s per point, the chosen point, and that it timed them in the
                   precision precision-auto found
  zero2, zero3     `litv2 pretrain --gpus 1 --deepspeed zero2|zero3`, bf16, 3 [2] steps, eval at the
                   end: a checkpoint written, images/s, loss, val top-1
  bench-attention  `litv2 bench attention` in LITv2-S [T] (MSA, SRA, W-MSA, T-MSA, HiLo [MSA, HiLo]),
                   bf16, batch 64 [4], over 224, 512, 1024 [64]: images/s and memory per attention

Options: --device cpu runs what a CPU can (sdpa-kernels and dtm SKIP; DeepSpeed runs over gloo);
--quick uses the sizes in brackets, for a test on a CPU; --only name,name runs those paths and the
ones they need; --workdir DIR keeps the data, runs and logs there (default: a temporary directory,
removed at the end unless a path failed).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PRECISION = "bf16"  # of every training, evaluation and benchmark path (search: --precision auto)
DTM_TOLERANCE = 1e-4  # max |gather - torchvision| / max |torchvision|, float32
REFERENCE_TOLERANCE = 1e-3  # max |logit difference| / max |logit|, float32
MIN_START_S = 10.0  # a path is not started with less of the budget left
STOP_GRACE_S = 15.0  # a timed-out command gets this long to save and exit after SIGTERM


@dataclass(frozen=True)
class Sizes:
    """Everything that sets the amount of work: the full check, or --quick."""

    variant: str
    res: int
    finetune_res: int
    train_batch: int
    bench_batch: int
    train_steps: int
    deepspeed_steps: int
    warmup: int
    repeats: int
    kernel_repeats: int  # SDPA and DTM calls take well under a millisecond: more samples
    classes: int
    train_per_class: int
    val_per_class: int
    image_size: int
    workers: int
    attentions: str
    attention_res: str


FULL = Sizes(variant="s", res=224, finetune_res=384, train_batch=32, bench_batch=64, train_steps=10,
             deepspeed_steps=3, warmup=3, repeats=10, kernel_repeats=30, classes=10, train_per_class=40,
             val_per_class=10, image_size=256, workers=4, attentions="msa,sra,w_msa,t_msa,hilo",
             attention_res="224,512,1024")
QUICK = Sizes(variant="t", res=64, finetune_res=96, train_batch=4, bench_batch=4, train_steps=2,
              deepspeed_steps=2, warmup=1, repeats=3, kernel_repeats=3, classes=4, train_per_class=8,
              val_per_class=2, image_size=72, workers=0, attentions="msa,hilo", attention_res="64")


class Failed(Exception):
    """The path ran and did not do what it should; the message is the one-line reason."""


class TimedOut(Failed):
    """The path ran past its timeout."""


@dataclass
class Result:
    status: str  # PASS, FAIL or SKIP
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    command: str | None = None
    log_tail: list[str] | None = None

    def line(self, name: str) -> str:
        return f"{self.status} {name}: {self.summary}"


class Check:
    """What the paths share: the options, the sizes, the working directory, the results so far,
    and the running path's timeout and log."""

    def __init__(self, device: str, sizes: Sizes, workdir: Path):
        self.device, self.sizes, self.workdir = device, sizes, workdir
        self.results: dict[str, Result] = {}
        self.timeout_s = 0.0
        self.command: str | None = None
        self.log: Path | None = None
        self.data_dir = workdir / "data"

    def run_dir(self, name: str) -> Path:
        return self.workdir / "runs" / name

    def figures(self, name: str) -> dict[str, Any]:
        return self.results[name].figures

    def child_environment(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def litv2(self, *args: str, name: str) -> str:
        """Run `litv2 ARGS` to its end within the path's timeout; its output (stdout and stderr)
        goes to logs/<name>.log and is returned. Raises Failed with the command's own error line."""
        command = [sys.executable, "-m", "litv2cli.cli.main", *args]
        self.command = "litv2 " + shlex.join(args)
        self.log = self.workdir / "logs" / f"{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as handle:
            # Its own session: a Ctrl-C here reaches it only through `stop`, which lets it save first.
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=self.workdir,
                                       env=self.child_environment(), start_new_session=True)
            try:
                code = process.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                stop(process)
                raise TimedOut(f"timed out after {self.timeout_s:.0f} s") from None
            except BaseException:
                stop(process)
                raise
        output = self.log.read_text(errors="replace")
        if code != 0:
            raise Failed(failure_reason(output, code))
        return output

    def isolated(self, name: str, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` in a fresh process within the path's timeout, its output in
        logs/<name>.log: a crash or a hang in CUDA code ends that path only, and this process
        never holds a CUDA context."""
        self.log = self.workdir / "logs" / f"{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_child, args=(sender, str(self.log), function, args), daemon=True)
        process.start()
        sender.close()
        try:
            if not receiver.poll(self.timeout_s):
                raise TimedOut(f"timed out after {self.timeout_s:.0f} s")
            kind, value = receiver.recv()
        except EOFError:
            process.join(5)
            raise Failed(f"the measuring process died (exit code {process.exitcode})") from None
        finally:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
        if kind == "error":
            raise Failed(value)
        return value


def _child(sender, log: str, function: Callable[..., Any], args: tuple) -> None:
    handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(handle, 1)  # the C++ side's messages too (the profiler's, CUDA's)
    os.dup2(handle, 2)
    try:
        sender.send(("ok", function(*args)))
    except Exception as exc:  # reported by the parent as the path's reason
        import traceback

        traceback.print_exc()
        sender.send(("error", one_line(exc)))


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (litv2 saves a checkpoint and exits), then kill it and everything it started."""
    import psutil

    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    process.terminate()
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for child in family:  # the launcher runs in a session of its own, out of reach of a group kill
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


WRAPPER_ERRORS = ("ChildFailedError", "CalledProcessError")
ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b")


def failure_reason(output: str, code: int) -> str:
    """One line saying why a command failed: its `litv2: error:` line, else the last exception
    line that is not a launcher wrapping a worker's, else its last line."""
    lines = [re.sub(r"^\[rank\d+\]:\s*", "", line).strip() for line in output.splitlines()]
    lines = [line for line in lines if line]
    user_errors = [line for line in lines if line.startswith("litv2: error:")]
    if user_errors:
        return user_errors[-1][:300]
    errors = [line for line in lines if ERROR_LINE.match(line) and not line.startswith(WRAPPER_ERRORS)]
    last = errors[-1] if errors else (lines[-1] if lines else "no output")
    return f"{last[:300]} (exit code {code})"


def log_tail(path: Path | None, count: int = 30) -> list[str] | None:
    if path is None or not path.is_file():
        return None
    return path.read_text(errors="replace").splitlines()[-count:]


def last_json_line(output: str) -> dict[str, Any]:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise Failed("no JSON line in the output")


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(train lines, eval lines) of a run's metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise Failed(f"{path} was not written")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if "loss" in r], [r for r in records if "top1" in r]


def training_figures(run_dir: Path, steps: int) -> dict[str, Any]:
    """Images/s (median over the logged steps after the first, which includes the warm-up), the
    loss at the first and last step, and the last evaluation, from metrics.jsonl."""
    train, evals = read_metrics(run_dir)
    if len(train) < steps:
        raise Failed(f"{len(train)} training steps logged, {steps} expected")
    losses = [r["loss"] for r in train]
    if not all(math.isfinite(loss) for loss in losses):
        raise Failed(f"non-finite loss: {losses}")
    speeds = [r["images_per_s"] for r in (train[1:] or train)]
    figures = dict(steps=len(train), train_images_per_s=statistics.median(speeds), first_loss=losses[0],
                   last_loss=losses[-1])
    if not evals:
        raise Failed("no evaluation was logged")
    figures.update(val_top1=evals[-1]["top1"], val_top5=evals[-1]["top5"], val_images=evals[-1]["val_images"])
    return figures


def describe_training(figures: dict[str, Any], classes: int) -> str:
    return (f"{figures['train_images_per_s']:.1f} train images/s, loss {figures['first_loss']:.3f} -> "
            f"{figures['last_loss']:.3f} over {figures['steps']} steps, val top-1 {figures['val_top1']:.1f}% "
            f"(chance {100 / classes:.0f}%)")


# --- the data ----------------------------------------------------------------------------------


def synthetic_image(label: int, classes: int, size: int, rng) -> Any:
    """A colour field crossed by stripes: the class sets the hue and the stripes' angle, each image
    its own phase and noise, so the classes are learnable and no two images are equal."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    hue = 2 * np.pi * label / classes
    colour = 128 + 90 * np.cos(hue - np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]))  # (3,) RGB
    angle = np.pi * label / classes
    stripes = np.sin(2 * np.pi * 8 * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 2 * np.pi))
    image = colour * (0.75 + 0.25 * stripes[..., None]) + rng.normal(0, 8, size=(size, size, 3))
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def make_data(check: Check) -> tuple[str, dict]:
    """root/train/class_<c>/NNN.jpg and root/val/class_<c>/NNN.jpg."""
    import numpy as np

    sizes, rng = check.sizes, np.random.default_rng(0)
    for split, count in (("train", sizes.train_per_class), ("val", sizes.val_per_class)):
        for label in range(sizes.classes):
            folder = check.data_dir / split / f"class_{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                synthetic_image(label, sizes.classes, sizes.image_size, rng).save(folder / f"{index:03d}.jpg",
                                                                                  quality=90)
    figures = dict(classes=sizes.classes, train_images=sizes.classes * sizes.train_per_class,
                   val_images=sizes.classes * sizes.val_per_class, image_size=sizes.image_size,
                   path=str(check.data_dir))
    return (f"{figures['train_images']} train + {figures['val_images']} val JPEGs, {sizes.classes} classes, "
            f"{sizes.image_size}x{sizes.image_size}"), figures


# --- training, fine-tuning, evaluation ---------------------------------------------------------


def training_args(check: Check, run: Path, steps: int) -> list[str]:
    """The flags every training path shares: data, precision, one process, budget, logging."""
    sizes = check.sizes
    return ["--data", str(check.data_dir), "--precision", PRECISION, "--gpus", "1", "--epochs", "1",
            "--max-steps", str(steps), "--batch-size", str(sizes.train_batch), "--output", str(run),
            "--no-progress", "--log-with", "none", "--log-every", "1", "--workers", str(sizes.workers)]


def pretrain(check: Check) -> tuple[str, dict]:
    sizes, run = check.sizes, check.run_dir("pretrain")
    check.litv2("pretrain", "--variant", sizes.variant, "--res", str(sizes.res),
                *training_args(check, run, sizes.train_steps), name="pretrain")
    if not (run / "model.safetensors").is_file():
        raise Failed(f"no model.safetensors in {run}")
    figures = training_figures(run, sizes.train_steps)
    figures.update(variant=sizes.variant, res=sizes.res, batch_size=sizes.train_batch, precision=PRECISION)
    title = f"LITv2-{sizes.variant.upper()} {PRECISION} {sizes.res}: "
    return title + describe_training(figures, sizes.classes), figures


def finetune(check: Check) -> tuple[str, dict]:
    sizes, run = check.sizes, check.run_dir("finetune")
    output = check.litv2("finetune", "--from", str(check.run_dir("pretrain")), "--res", str(sizes.finetune_res),
                         *training_args(check, run, sizes.train_steps), name="finetune")
    if not (run / "model.safetensors").is_file():
        raise Failed(f"no model.safetensors in {run}")
    figures = training_figures(run, sizes.train_steps)
    loaded = re.search(r"checkpoint .*: (LITv2-\w, .*)", output)
    figures.update(res=sizes.finetune_res, batch_size=sizes.train_batch, precision=PRECISION,
                   weights=loaded.group(1) if loaded else None)
    return f"{sizes.res} -> {sizes.finetune_res}: " + describe_training(figures, sizes.classes), figures


def evaluate(check: Check) -> tuple[str, dict]:
    sizes = check.sizes
    output = check.litv2("eval", "--checkpoint", str(check.run_dir("finetune")), "--data", str(check.data_dir),
                         "--precision", PRECISION, "--gpus", "1", "--batch-size", str(sizes.train_batch),
                         "--workers", str(sizes.workers), "--json", name="eval")
    result = last_json_line(output)
    expected = check.figures("data")["val_images"]
    if result.get("count") != expected:
        raise Failed(f"evaluated {result.get('count')} images, the validation split has {expected}")
    figures = {key: result.get(key) for key in ("top1", "top5", "count", "resolution", "processes")}
    figures["precision"] = PRECISION
    return (f"top-1 {result['top1']:.1f}% top-5 {result['top5']:.1f}% on {result['count']} images at "
            f"{result['resolution']}"), figures


def deepspeed(stage: str) -> Callable[[Check], tuple[str, dict]]:
    """The path of one ZeRO stage: LITv2 pretraining through DeepSpeed on one device."""

    def run_stage(check: Check) -> tuple[str, dict]:
        sizes, run = check.sizes, check.run_dir(stage)
        check.litv2("pretrain", "--variant", sizes.variant, "--res", str(sizes.res), "--deepspeed", stage,
                    *training_args(check, run, sizes.deepspeed_steps), name=stage)
        checkpoints = run / "checkpoints"
        if not checkpoints.is_dir() or not any(checkpoints.iterdir()):
            raise Failed(f"no checkpoint in {checkpoints}")
        figures = training_figures(run, sizes.deepspeed_steps)
        figures.update(stage=stage, batch_size=sizes.train_batch, precision=PRECISION,
                       checkpoints=sorted(path.name for path in checkpoints.iterdir()),
                       consolidated_weights=(run / "model.safetensors").is_file())
        return f"{stage} {PRECISION}: " + describe_training(figures, sizes.classes), figures

    return run_stage


# --- precision ---------------------------------------------------------------------------------


def resolved_auto_precision(device: str) -> dict[str, Any]:
    """What `--precision auto` means on `device`, and what it should mean there."""
    import torch

    from litv2cli.precision import resolve_precision

    if device == "cuda":
        capability = torch.cuda.get_device_capability()
        expected = "bf16" if capability >= (8, 0) else "fp16"  # native bf16 from Ampere on
        why = f"compute capability {capability[0]}.{capability[1]}"
    else:
        expected, why = "no", "no autocast on a CPU"
    return dict(resolved=resolve_precision("auto", device), expected=expected, why=why)


def precision_auto(check: Check) -> tuple[str, dict]:
    figures = check.isolated("precision-auto", resolved_auto_precision, check.device)
    if figures["resolved"] != figures["expected"]:
        raise Failed(f"auto resolves to {figures['resolved']} on {check.device}, expected {figures['expected']} "
                     f"({figures['why']})")
    return f"auto -> {figures['resolved']} on {check.device} ({figures['why']})", figures


# --- SDPA kernels of HiLo ----------------------------------------------------------------------


@contextmanager
def recorded_sdpa():
    """Every call of F.scaled_dot_product_attention inside the block, as (args, kwargs)."""
    import torch.nn.functional as F

    original, calls = F.scaled_dot_product_attention, []

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    F.scaled_dot_product_attention = recording
    try:
        yield calls
    finally:
        F.scaled_dot_product_attention = original


def hilo_sdpa_calls(variant: str, batch: int, res: int, device: str, dtype) -> list[tuple[str, tuple, dict]]:
    """(label, args, kwargs) of each distinct SDPA call HiLo makes in LITv2-`variant` at `res`:
    the first block of every HiLo stage (the others repeat its shapes), its own `hifi` and `lofi`
    on its own projections of a random map, so strides and masks are the model's."""
    import torch

    from litv2cli.models import HiLo, create_model
    from litv2cli.models.hilo import pad_to_window

    model = create_model(variant)
    calls = []
    for index, stage in enumerate(model.layers):
        layer = stage.blocks[0].attn if hasattr(stage.blocks[0], "attn") else None
        if not isinstance(layer, HiLo):
            continue
        side = res // model.feature_info[index]["reduction"]
        layer = layer.to(device=device, dtype=dtype)
        tokens = torch.randn(batch, side, side, layer.dim, device=device, dtype=dtype)
        padded = pad_to_window(tokens, layer.window_size)  # (B, Hp, Wp, C)
        label = f"stage {index + 1} {{}} ({side}x{side}, s={layer.window_size})"
        with torch.no_grad():
            hifi_qkv, lofi_q, lofi_kv = layer.project(padded)
            if layer.hifi_heads:
                with recorded_sdpa() as recorded:
                    layer.hifi(hifi_qkv)
                calls += [(label.format("Hi-Fi"), args, kwargs) for args, kwargs in recorded]
            if layer.lofi_heads:
                with recorded_sdpa() as recorded:
                    layer.lofi(lofi_q, padded, lofi_kv)
                branch = "Lo-Fi" if layer.window_size > 1 else "global"
                calls += [(label.format(branch), args, kwargs) for args, kwargs in recorded]
    return calls


def describe_call(args: tuple, kwargs: dict) -> str:
    q, k = args[0], args[1]
    mask = kwargs.get("attn_mask")
    text = f"q {tuple(q.shape)}, k/v {tuple(k.shape)}"
    return text + (f", {str(mask.dtype).removeprefix('torch.')} mask {tuple(mask.shape)}" if mask is not None else "")


@contextmanager
def float32_without_tf32():
    """Float32 comparisons on a GPU: no TF32 rounding in GEMMs or convolutions inside the block."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def median_ms(step: Callable[[], Any], device: str, warmup: int, repeats: int) -> float:
    """Median milliseconds of `step`: CUDA events around each step on a GPU, perf_counter on a CPU."""
    import torch

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            step()
            times.append(1e3 * (time.perf_counter() - begin))
    return statistics.median(times)


def dispatched_kernel(step: Callable[[], Any]) -> str:
    """The SDPA backend the default dispatcher runs for `step`, read from the profiler's op names."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step()
    names = " ".join(event.name for event in profiler.events() if "scaled_dot_product" in event.name)
    for key in ("cudnn", "flash", "efficient", "math"):
        if key in names:
            return key
    return f"unknown ({names or 'no SDPA op recorded'})"


def sdpa_backend_timings(variant: str, batch: int, res: int, device: str, warmup: int,
                         repeats: int) -> list[dict[str, Any]]:
    """For each HiLo SDPA call: each backend alone (time, or why it cannot run), the default."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "math": SDPBackend.MATH}
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        backends["cudnn"] = SDPBackend.CUDNN_ATTENTION
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[PRECISION]
    rows = []
    for label, args, kwargs in hilo_sdpa_calls(variant, batch, res, device, dtype):
        def step(args=args, kwargs=kwargs):
            return F.scaled_dot_product_attention(*args, **kwargs)

        row: dict[str, Any] = dict(call=label, shapes=describe_call(args, kwargs), backends={})
        for name, backend in backends.items():
            with warnings.catch_warnings(record=True) as caught, sdpa_kernel(backend):
                warnings.simplefilter("always")
                try:
                    row["backends"][name] = dict(runs=True, ms=median_ms(step, device, warmup, repeats))
                except RuntimeError as exc:
                    # torch says why a backend declines in warnings before "No available kernel".
                    reasons = [re.sub(r"\s*\(Triggered internally at .*", "", str(w.message).strip().splitlines()[0])
                               for w in caught]
                    reasons = [reason for reason in reasons if reason and not reason.endswith("because:")]
                    row["backends"][name] = dict(runs=False, why="; ".join(reasons) or one_line(exc))
        row["default"] = dispatched_kernel(step)
        row["default_ms"] = median_ms(step, device, warmup, repeats)
        row["fused"] = [name for name in ("flash", "efficient") if row["backends"][name]["runs"]]
        rows.append(row)
    return rows


def sdpa_kernels(check: Check) -> tuple[str, dict]:
    sizes = check.sizes
    rows = check.isolated("sdpa-kernels", sdpa_backend_timings, sizes.variant, sizes.bench_batch, sizes.res,
                          check.device, sizes.warmup, sizes.kernel_repeats)
    if not rows:
        raise Failed(f"LITv2-{sizes.variant.upper()} made no SDPA call")
    unfused = [row["call"] for row in rows if not row["fused"]]
    if unfused:
        raise Failed("no fused kernel (flash or memory-efficient) runs " + "; ".join(
            f"{row['call']}: {row['backends']['flash']['why']} / {row['backends']['efficient']['why']}"
            for row in rows if not row["fused"]))
    figures = dict(variant=sizes.variant, res=sizes.res, batch_size=sizes.bench_batch, precision=PRECISION,
                   calls=rows)
    parts = [f"{row['call'].split(' (')[0]}: default {row['default']} {row['default_ms']:.3f} ms, fused "
             f"{'+'.join(row['fused'])}" for row in rows]
    return "; ".join(parts), figures


# --- DTM: the gather form against torchvision --------------------------------------------------


def dtm_shapes(variant: str, res: int) -> list[tuple[int, int]]:
    """(input channels, map side) of every DTM of LITv2-`variant` at `res`."""
    from litv2cli.models import create_model

    model = create_model(variant)
    return [(stage.downsample.dconv.weight.shape[1], res // model.feature_info[index]["reduction"])
            for index, stage in enumerate(model.layers) if stage.downsample is not None]


def dtm_comparison(variant: str, batch: int, res: int, device: str, warmup: int, repeats: int) -> list[dict]:
    """Output and gradients of both forms on the same inputs, and the time of each, per DTM shape."""
    from torchvision.ops import deform_conv2d

    from litv2cli.models.dtm import deform_conv2d_gather

    forms = {"gather": deform_conv2d_gather, "torchvision": deform_conv2d}
    rows = []
    with float32_without_tf32():
        for channels, side in dtm_shapes(variant, res):
            rows.append(compare_dtm_forms(forms, channels, side, batch, device, warmup, repeats))
    return rows


def compare_dtm_forms(forms: dict[str, Callable], channels: int, side: int, batch: int, device: str, warmup: int,
                      repeats: int) -> dict[str, Any]:
    """One DTM shape: relative errors of the gather form's output and gradients, times of both."""
    import torch

    generator = torch.Generator().manual_seed(side)
    inputs = {  # the offsets are about a pixel, as a trained DTM's are
        "input": torch.randn(batch, channels, side, side, generator=generator),
        "weight": torch.randn(2 * channels, channels, 2, 2, generator=generator) / (4 * channels) ** 0.5,
        "offset": torch.randn(batch, 8, side // 2, side // 2, generator=generator),
        "bias": torch.randn(2 * channels, generator=generator),
    }
    inputs = {key: value.to(device) for key, value in inputs.items()}
    grad_output = torch.randn(batch, 2 * channels, side // 2, side // 2, generator=generator).to(device)
    results, times = {}, {}
    for name, form in forms.items():
        leaves = {key: value.clone().requires_grad_() for key, value in inputs.items()}

        def forward(form=form, leaves=leaves):
            return form(leaves["input"], leaves["offset"], leaves["weight"], leaves["bias"], stride=2)

        def train_step(forward=forward, leaves=leaves):
            return torch.autograd.grad(forward(), list(leaves.values()), grad_output)

        results[name] = {"output": forward().detach(), **dict(zip(leaves, train_step()))}
        with torch.no_grad():
            times[f"{name}_forward_ms"] = median_ms(forward, device, warmup, repeats)
        times[f"{name}_forward_backward_ms"] = median_ms(train_step, device, warmup, repeats)
    errors = {key: ((results["gather"][key] - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()
              for key, expected in results["torchvision"].items()}
    return dict(shape=f"{channels} -> {2 * channels} at {side}x{side}", relative_errors=errors, **times)


def dtm(check: Check) -> tuple[str, dict]:
    sizes = check.sizes
    rows = check.isolated("dtm", dtm_comparison, sizes.variant, sizes.bench_batch, sizes.res, check.device,
                          sizes.warmup, sizes.kernel_repeats)
    figures = dict(variant=sizes.variant, res=sizes.res, batch_size=sizes.bench_batch, dtype="float32",
                   tolerance=DTM_TOLERANCE, shapes=rows)
    worst = {key: max(row["relative_errors"][key] for row in rows) for key in rows[0]["relative_errors"]}
    figures["worst_relative_errors"] = worst
    off = {key: value for key, value in worst.items() if not value <= DTM_TOLERANCE}
    if off:
        raise Failed("gather form differs from torchvision beyond " + f"{DTM_TOLERANCE:g}: " +
                     ", ".join(f"{key} {value:.1e}" for key, value in off.items()))
    speedups = [row["torchvision_forward_backward_ms"] / row["gather_forward_backward_ms"] for row in rows]
    figures["forward_backward_speedups"] = speedups
    return (f"values and gradients within {DTM_TOLERANCE:g} (worst {max(worst.values()):.1e}); forward+backward "
            f"speed-up of the gather form over torchvision {', '.join(f'{s:.2f}x' for s in speedups)} "
            f"(DTM 1-{len(rows)})"), figures


# --- LITv2 against its reference form ----------------------------------------------------------


def fast_and_reference(variant: str, batch: int, res: int, device: str, warmup: int, repeats: int,
                       precision: str) -> dict[str, Any]:
    """Logit agreement in float32, then interleaved inference throughput of both forms."""
    import torch
    from torch import nn

    from litv2cli.measure.protocol import measure_throughput_interleaved
    from litv2cli.models import create_model
    from litv2cli.models.dtm import DeformConv2d
    from litv2cli.precision import autocast_dtype

    torch.manual_seed(0)
    fast = create_model(variant).eval()
    for module in fast.modules():  # offsets of about a pixel, as trained DTMs have (the initial ones are zero)
        if isinstance(module, DeformConv2d):
            nn.init.normal_(module.conv_offset.weight, std=1 / module.conv_offset.weight[0].numel() ** 0.5)
            nn.init.normal_(module.conv_offset.bias, std=0.5)
    reference = create_model(variant, reference=True).eval()
    reference.load_state_dict(fast.state_dict(), strict=True)
    images = torch.randn(2, 3, res, res).to(device)
    with torch.inference_mode(), float32_without_tf32():
        expected = reference.to(device)(images)
        difference = (fast.to(device)(images) - expected).abs().max() / expected.abs().max()
    dtype = autocast_dtype(precision, device)
    measured = measure_throughput_interleaved({"litv2": fast, "reference": reference}, batch, (res, res),
                                              device=device, warmup=warmup, repeats=repeats, max_rounds=1,
                                              autocast_dtype=dtype)
    return dict(relative_logit_difference=difference.item(), dtype=measured["litv2"].dtype,
                protocol=measured["litv2"].protocol,
                images_per_s={name: m.images_per_s for name, m in measured.items()},
                spread={name: m.spread for name, m in measured.items()})


def vs_reference(check: Check) -> tuple[str, dict]:
    sizes = check.sizes
    # torchvision's CPU deformable conv, which the reference form runs, has no bfloat16 kernel.
    precision = PRECISION if check.device == "cuda" else "no"
    figures = check.isolated("vs-reference", fast_and_reference, sizes.variant, sizes.bench_batch, sizes.res,
                             check.device, sizes.warmup, sizes.repeats, precision)
    if not figures["relative_logit_difference"] <= REFERENCE_TOLERANCE:
        raise Failed(f"logits differ from the reference form by {figures['relative_logit_difference']:.1e} of "
                     f"their largest value (float32; limit {REFERENCE_TOLERANCE:g})")
    speed = figures["images_per_s"]
    figures.update(variant=sizes.variant, res=sizes.res, batch_size=sizes.bench_batch,
                   ratio=speed["litv2"] / speed["reference"])
    return (f"{figures['ratio']:.2f}x the reference form ({speed['litv2']:.1f} vs {speed['reference']:.1f} "
            f"images/s, {figures['dtype']}, batch {sizes.bench_batch}); logits agree to "
            f"{figures['relative_logit_difference']:.1e}"), figures


# --- benchmarks and search ---------------------------------------------------------------------


def bench_model(check: Check) -> tuple[str, dict]:
    sizes, out = check.sizes, check.run_dir("bench-model")
    litv2, swin = f"litv2_{sizes.variant}", "swin_tiny_patch4_window7_224"
    memory = [] if check.device == "cuda" else ["--no-memory"]  # a CPU measures memory in fresh processes: slow
    check.litv2("bench", "model", "--models", f"{litv2},{swin}", "--res", str(sizes.res), "--batch-size",
                str(sizes.bench_batch), "--dtype", "bfloat16", "--repeats", str(sizes.repeats), "--warmup",
                str(sizes.warmup), "--output", str(out), *memory, name="bench-model")
    payload = json.loads((out / "models.json").read_text())
    rows = {row["model"]: row for row in payload["rows"]}
    missing = [name for name in (litv2, swin) if not (rows.get(name, {}).get("images_per_s") or 0) > 0]
    if missing:
        raise Failed("no throughput for " + ", ".join(f"{name} ({rows.get(name, {}).get('status', 'no row')})"
                                                      for name in missing))
    figures = dict(protocol=payload["protocol"], rows=payload["rows"], litv2=litv2, swin=swin,
                   batch_size=sizes.bench_batch, dtype="bfloat16")
    memory_text = (f", test memory {rows[litv2]['test_memory_mib']:.0f} MiB"
                   if rows[litv2].get("test_memory_mib") else "")
    return (f"{litv2} {rows[litv2]['images_per_s']:.1f} images/s, {swin} {rows[swin]['images_per_s']:.1f} images/s "
            f"(batch {sizes.bench_batch}, bf16, {sizes.res}){memory_text}"), figures


def vs_swin(check: Check) -> tuple[str, dict]:
    bench = check.figures("bench-model")
    rows = {row["model"]: row for row in bench["rows"]}
    litv2, swin = rows[bench["litv2"]], rows[bench["swin"]]
    ratio = litv2["images_per_s"] / swin["images_per_s"]
    figures = dict(ratio=ratio, litv2_images_per_s=litv2["images_per_s"], swin_images_per_s=swin["images_per_s"],
                   protocol=bench["protocol"])
    return f"{bench['litv2']} {ratio:.2f}x Swin-T images/s (from bench-model, interleaved)", figures


def search(check: Check) -> tuple[str, dict]:
    sizes, out = check.sizes, check.run_dir("search")
    check.litv2("search", "--variant", sizes.variant, "--alpha", "0.5,0.9", "--window", "2,4", "--objective",
                "throughput", "--device", check.device, "--precision", "auto", "--no-recipes", "--output",
                str(out), "--res", str(sizes.res), "--batch-size", str(sizes.bench_batch), "--repeats",
                str(sizes.repeats), "--warmup", str(sizes.warmup), name="search")
    found = sorted(out.rglob("search.json"))
    if not found:
        raise Failed(f"no search.json under {out}")
    result = json.loads(found[0].read_text())
    points = result["points"]
    bad = [f"{p['label']}: {p['status']} {p.get('reason', '')}".strip() for p in points
           if p["status"] != "ok" or not (p.get("throughput") or 0) > 0]
    if len(points) != 4 or bad:
        raise Failed(f"{len(points)} points, 4 expected" + (f"; {'; '.join(bad)}" if bad else ""))
    dtypes = sorted({p.get("dtype", "?") for p in points})
    auto = check.results.get("precision-auto")
    if auto is not None and auto.status == "PASS":
        # As litv2cli.measure.protocol labels them: "float32", or "float32, autocast bfloat16".
        wanted = {"bf16": "autocast bfloat16", "fp16": "autocast float16", "no": "float32"}[auto.figures["resolved"]]
        if not all(dtype.endswith(wanted) for dtype in dtypes):
            raise Failed(f"--precision auto timed the points in {', '.join(dtypes)}; auto means {wanted} here")
    chosen = result["chosen"]
    figures = dict(points={p["label"]: p["throughput"] for p in points}, chosen=chosen["label"],
                   chosen_images_per_s=chosen["throughput"], dtypes=dtypes, protocol=chosen.get("protocol"),
                   batch_size=sizes.bench_batch)
    return (f"4 points, chosen {chosen['label']} at {chosen['throughput']:.1f} images/s, timed in "
            f"{', '.join(dtypes)}"), figures


def bench_attention(check: Check) -> tuple[str, dict]:
    sizes, out = check.sizes, check.run_dir("bench-attention")
    memory = [] if check.device == "cuda" else ["--no-memory"]
    check.litv2("bench", "attention", "--variant", sizes.variant, "--attentions", sizes.attentions,
                "--res", sizes.attention_res,
                "--batch-size", str(sizes.bench_batch), "--dtype", "bfloat16", "--repeats", str(sizes.repeats),
                "--warmup", str(sizes.warmup), "--output", str(out), *memory, name="bench-attention")
    payload = json.loads((out / "attention.json").read_text())
    rows = payload["rows"]
    hilo = [row for row in rows if row["attention"] == "hilo"]
    if not hilo or not (hilo[0].get("images_per_s") or 0) > 0:
        raise Failed(f"HiLo not measured at {sizes.attention_res.split(',')[0]}: "
                     f"{hilo[0]['status'] if hilo else 'no row'}")
    not_measured = [f"{row['attention']}@{row['height']} {row['status']}" for row in rows
                    if not row.get("images_per_s")]
    figures = dict(protocol=payload["protocol"], rows=rows, batch_size=sizes.bench_batch, dtype="bfloat16")
    hilo_text = ", ".join(f"{row['height']}: {row['images_per_s']:.1f}" if row.get("images_per_s")
                          else f"{row['height']}: {row['status']}" for row in hilo)
    summary = f"HiLo images/s at {hilo_text}"
    if not_measured:
        summary += f"; not measured: {', '.join(not_measured)}"
    return summary, figures


# --- the table of paths and the driver ---------------------------------------------------------


@dataclass(frozen=True)
class CheckPath:
    name: str
    run: Callable[[Check], tuple[str, dict]]
    timeout_s: float
    needs: tuple[str, ...] = ()
    cuda_only: bool = False


PATHS = (
    CheckPath("data", make_data, 60),
    CheckPath("precision-auto", precision_auto, 60),
    CheckPath("pretrain", pretrain, 150, needs=("data",)),
    CheckPath("finetune", finetune, 150, needs=("pretrain",)),
    CheckPath("eval", evaluate, 90, needs=("finetune",)),
    CheckPath("sdpa-kernels", sdpa_kernels, 90, cuda_only=True),
    CheckPath("dtm", dtm, 90, cuda_only=True),
    CheckPath("vs-reference", vs_reference, 120),
    CheckPath("bench-model", bench_model, 150),
    CheckPath("vs-swin", vs_swin, 10, needs=("bench-model",)),
    CheckPath("search", search, 150),
    CheckPath("zero2", deepspeed("zero2"), 150, needs=("data",)),
    CheckPath("zero3", deepspeed("zero3"), 150, needs=("data",)),
    CheckPath("bench-attention", bench_attention, 180),
)
BY_NAME = {path.name: path for path in PATHS}


def selected(only: str | None) -> list[CheckPath]:
    """The paths named in --only and every path they need, in the table's order."""
    if not only:
        return list(PATHS)
    names = {name.strip() for name in only.split(",") if name.strip()}
    unknown = sorted(names - set(BY_NAME))
    if unknown:
        raise ValueError(f"--only: unknown path {', '.join(unknown)}; paths: {', '.join(BY_NAME)}")
    pending = list(names)
    while pending:
        for need in BY_NAME[pending.pop()].needs:
            if need not in names:
                names.add(need)
                pending.append(need)
    return [path for path in PATHS if path.name in names]


def environment(device: str) -> dict[str, Any]:
    """Versions and the device, read in a child so that this process holds no CUDA context."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from litv2cli.measure.protocol import device_name

    info = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version())
    for package in ("torchvision", "timm", "accelerate", "deepspeed", "litv2cli"):
        try:  # read from the installed metadata: importing DeepSpeed alone takes seconds
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = "not installed"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device is visible; run with --device cpu to check the CPU paths")
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, capability=f"{properties.major}.{properties.minor}",
                    gpu_memory_gib=round(properties.total_memory / 2**30, 1), gpus_visible=torch.cuda.device_count())
    info["device_name"] = device_name(torch.device(device))
    return info


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10, check=False).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_path(check: Check, path: CheckPath, deadline: float, budget_s: float) -> Result:
    """One path to its Result: SKIP for a missing device, a failed prerequisite or the budget."""
    if path.cuda_only and check.device != "cuda":
        return Result("SKIP", "needs CUDA (--device cpu)")
    for need in path.needs:
        if need not in check.results or check.results[need].status != "PASS":
            status = check.results[need].status if need in check.results else "not run"
            return Result("SKIP", f"needs {need}, which did not pass ({status})")
    left = deadline - time.monotonic()
    if left < MIN_START_S:
        return Result("SKIP", f"budget: not started within --budget {budget_s:.0f} s")
    check.timeout_s, check.command, check.log = min(path.timeout_s, left), None, None
    begin = time.monotonic()
    try:
        summary, figures = path.run(check)
        result = Result("PASS", summary, figures)
    except TimedOut as exc:
        # Cut short by the run's budget rather than by its own timeout: not shown to fail.
        cut = check.timeout_s < path.timeout_s
        result = Result("SKIP" if cut else "FAIL", f"budget: stopped at the end of --budget {budget_s:.0f} s"
                        if cut else str(exc), log_tail=log_tail(check.log))
    except Failed as exc:
        result = Result("FAIL", str(exc), log_tail=log_tail(check.log))
    except Exception as exc:  # a defect of this script or an unexpected output: that path fails, not the run
        result = Result("FAIL", f"{one_line(exc)} (in gpu_check.py)", log_tail=log_tail(check.log))
    result.seconds, result.command = round(time.monotonic() - begin, 1), check.command
    return result


def write_report(out: Path, report: dict[str, Any], check: Check) -> None:
    report["paths"] = {name: asdict(result) for name, result in check.results.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="paths: " + ", ".join(BY_NAME))
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cuda (default) or cpu: CUDA-only paths SKIP on a CPU")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (LITv2-T, 64x64, 2 steps, batch 4)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON report (default gpu_check.json)")
    parser.add_argument("--budget", type=float, default=360.0, help="seconds for the whole run (default 360)")
    parser.add_argument("--only", default=None, help="comma-separated paths (and what they need)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep data, runs and logs here (default: a temporary directory)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        paths = selected(args.only)
    except ValueError as exc:
        print(f"gpu_check.py: {exc}", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    if args.device == "cpu":
        # `litv2 bench` and the trainer take a GPU whenever they see one; so would the children here.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="litv2-gpu-check-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    check = Check(args.device, sizes, workdir)
    start = time.monotonic()
    deadline = start + args.budget
    print(f"litv2 GPU check on {args.device}{' (quick sizes)' if args.quick else ''}: {len(paths)} paths, "
          f"budget {args.budget:.0f} s, working in {workdir}", flush=True)
    check.timeout_s = 120.0
    try:
        env = check.isolated("environment", environment, args.device)
    except Failed as exc:
        print(f"gpu_check.py: {exc}", file=sys.stderr)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        return 2
    print(f"  {env['device_name']}; torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}", flush=True)
    report: dict[str, Any] = dict(
        command="python benchmarks/gpu_check.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), commit=git_commit(), environment=env,
        settings=dict(device=args.device, quick=args.quick, precision=PRECISION, search_precision="auto",
                      budget_s=args.budget, **asdict(sizes)))
    for index, path in enumerate(paths, 1):
        print(f"[{index}/{len(paths)}] {path.name} ({time.monotonic() - start:.0f} s elapsed) ...", flush=True)
        result = run_path(check, path, deadline, args.budget)
        check.results[path.name] = result
        print(result.line(path.name), flush=True)
        report["duration_s"] = round(time.monotonic() - start, 1)
        write_report(args.out, report, check)
    counts = {status: sum(r.status == status for r in check.results.values()) for status in ("PASS", "FAIL", "SKIP")}
    failed = counts["FAIL"] > 0
    print(f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP in "
          f"{time.monotonic() - start:.0f} s; report: {args.out}", flush=True)
    if args.workdir is None and not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"data, runs and logs kept in {workdir}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
