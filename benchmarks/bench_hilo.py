"""HiLo speed targets, each a ratio of two models measured side by side in one process.

    python benchmarks/bench_hilo.py layer --batch 64 --repeats 30
    python benchmarks/bench_hilo.py model --batch 8 --repeats 20 --compile
    python benchmarks/bench_hilo.py model --batch 8 --repeats 20 --parts
    python benchmarks/bench_hilo.py dtm --batch 8 --repeats 20
    python benchmarks/bench_hilo.py swin --batch 8 --repeats 20
    python benchmarks/bench_hilo.py band --repeats 10
    python benchmarks/bench_hilo.py keys --repeats 15

- `layer`: one HiLo layer of LITv2-S stage 3 (dim 384, 12 heads, window 2, alpha 0.9) on a
  14 x 14 map, fast `HiLo` against `HiLoReference` (the paper's equations, explicit
  softmax(QK^T)V), same weights; and, for inference, the fast layer on
  scaled_dot_product_attention instead of the compiled kernels (`litv2cli.models.native`),
  the layer's five linear layers alone on inputs of their shapes (the part neither
  implementation can avoid), the SDPA layer with its output projections concatenated instead
  of sharing one buffer, and with --compile the fast layer under torch.compile (which takes
  the SDPA path).
- `model`: LITv2-S fast (`create_model("s")`) against its reference form
  (`create_model("s", reference=True)`: the paper-style HiLo and torchvision's deformable conv),
  same weights, with learned-looking offsets in the DTMs (random, about a pixel: the initial
  ones are all zero). With --parts, also the fast model with HiLo on SDPA instead of the
  compiled kernels, and with only one of its fast paths (fast HiLo with torchvision's
  deformable conv, and the reverse), so each path's share is measured
  in the same run; with --compile, the fast model under torch.compile.
- `dtm`: each of LITv2-S's three DTMs (96 -> 192 channels at 56 x 56, 192 -> 384 at 28 x 28,
  384 -> 768 at 14 x 14) on its own, the gather form against torchvision's deformable conv.
- `swin`: LITv2-S against timm's swin_tiny_patch4_window7_224, the paper's Table 1 pair.
- `keys`: HiLo on the native kernels against SDPA as the Lo-Fi keys per image grow (LITv2-S
  stages 3 and 4 on larger maps), which `native.MAX_KEYS` bounds.
- `band`: the Hi-Fi branch alone (alpha 0, dim 384, 12 heads) on maps of growing width, masked
  bands against the window partition, which `uses_bands` in `litv2cli.models.hilo` chooses
  between.

Protocol: random weights and inputs, float32, `--warmup` untimed steps of every model, then
`--repeats` cycles; a cycle runs one step of every model, in an order that rotates from cycle
to cycle, each step timed by `perf_counter` (so drift and other processes hit all models
alike). A step is `infer` (forward under inference_mode, eval mode) or `train` (forward,
backward of the mean output, gradients cleared; no optimizer, so the ratio is the layers'
own). Reported: median images/s per model, the ratio of medians and the median of per-cycle
ratios (with its interquartile range), and the same ratio of the process's CPU time per step:
the work each model does, which other processes on the machine do not change (wall-clock
ratios do: copies and memory traffic slow down more than arithmetic on a busy machine). The
load average before and after is printed with the results.

OpenMP's worker threads spin while waiting for work by default; on a CPU shared with other
processes a spinning worker takes the core the main thread needs and a step can take ten
times longer. So this script asks for passive waiting (`OMP_WAIT_POLICY=PASSIVE`) unless the
environment already sets a policy; it must be set before torch is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from litv2cli.defaults import PAPER_ALPHA  # noqa: E402
from litv2cli.measure.protocol import interleaved  # noqa: E402
from litv2cli.models import HiLo, HiLoReference, create_model, native  # noqa: E402
from litv2cli.models.dtm import DeformConv2d  # noqa: E402

Step = Callable[[], None]


def infer_step(model: nn.Module, *inputs) -> Step:
    model.eval()

    def step() -> None:
        with torch.inference_mode():
            model(*inputs)
    return step


def train_step(model: nn.Module, *inputs) -> Step:
    model.train()

    def step() -> None:
        model(*inputs).mean().backward()
        model.zero_grad(set_to_none=True)
    return step


def timed_cycles(steps: dict[str, Step], warmup: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds of every step of every model: `repeats` cycles, order rotating each cycle."""
    for _ in range(warmup):
        for step in steps.values():
            step()

    def wall_and_cpu(step: Step) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        return time.perf_counter() - wall, time.process_time() - cpu

    timings = interleaved({name: lambda step=step: wall_and_cpu(step) for name, step in steps.items()}, repeats)
    return {name: {"wall": [wall for wall, _ in pairs], "cpu": [cpu for _, cpu in pairs]}
            for name, pairs in timings.items()}


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def report(title: str, seconds: dict[str, dict[str, list[float]]], batch: int, baseline: str) -> dict:
    """Print and return images/s per model and every model's speed-up over `baseline`."""
    load = os.getloadavg()[0]
    print(f"{title}  [load average {load:.1f}]")
    result = {"title": title, "batch": batch, "models": {}, "speedup": {}, "load_after": load}
    for name, times in seconds.items():
        q1, median, q3 = quartiles(times["wall"])
        cpu = statistics.median(times["cpu"])
        result["models"][name] = {"images_per_s": batch / median, "median_ms": median * 1e3,
                                  "spread": (q3 - q1) / median, "cpu_ms": cpu * 1e3, "steps": len(times["wall"])}
        print(f"  {name:>34}: {batch / median:8.2f} images/s  (median {median * 1e3:7.1f} ms, "
              f"IQR/median {(q3 - q1) / median:4.0%}; CPU {cpu * 1e3:7.1f} ms)")
    base = seconds[baseline]
    for name, times in seconds.items():
        if name == baseline:
            continue
        of_medians = statistics.median(base["wall"]) / statistics.median(times["wall"])
        per_cycle = quartiles([b / v for b, v in zip(base["wall"], times["wall"])])
        of_cpu = statistics.median(base["cpu"]) / statistics.median(times["cpu"])
        result["speedup"][f"{name} / {baseline}"] = {
            "ratio_of_medians": of_medians, "median_per_cycle": per_cycle[1],
            "per_cycle_iqr": [per_cycle[0], per_cycle[2]], "cpu_time_ratio": of_cpu}
        print(f"  {name} / {baseline}: {of_medians:.3f}x (ratio of medians), {per_cycle[1]:.3f}x median per "
              f"cycle (IQR {per_cycle[0]:.3f}-{per_cycle[2]:.3f}); CPU time {of_cpu:.3f}x")
    return result


def step_kinds(args: argparse.Namespace) -> list[tuple[str, Callable[..., Step]]]:
    """(mode, step maker) for every mode in `--modes`, inference first."""
    return [(mode, make) for mode, make in (("infer", infer_step), ("train", train_step)) if mode in args.modes]


def measure(steps: dict[str, Step], args: argparse.Namespace, title: str, baseline: str,
            batch: int | None = None) -> dict:
    """Time `steps` interleaved with the command's warm-up and cycles, and report them against `baseline`."""
    seconds = timed_cycles(steps, args.warmup, args.repeats)
    return report(title, seconds, batch or args.batch, baseline)


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
            f"torch threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, torch {torch.__version__}, "
            f"HiLo's native CPU kernels {native.status()}")


class LinearLayersOnly(nn.Module):
    """The GEMMs of one HiLo layer on contiguous inputs of their shapes, nothing else."""

    def __init__(self, layer: HiLo, tokens: torch.Tensor):
        super().__init__()
        self.layer = layer
        B, N, _ = tokens.shape
        pooled = N // layer.window_size**2
        self.inputs = (tokens, tokens[:, :pooled].contiguous(), torch.randn(B, N, layer.hifi_dim),
                       torch.randn(B, N, layer.lofi_dim))

    def forward(self, *unused) -> torch.Tensor:
        tokens, pooled, hifi_out, lofi_out = self.inputs
        layer = self.layer
        layer.h_qkv(tokens), layer.l_q(tokens), layer.l_kv(pooled)
        return layer.h_proj(hifi_out), layer.l_proj(lofi_out)


def bench_layer(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    fast = HiLo(384, 12, window_size=2, alpha=PAPER_ALPHA)
    reference = HiLoReference(384, 12, window_size=2, alpha=PAPER_ALPHA)
    reference.load_state_dict(fast.state_dict(), strict=True)
    tokens = torch.randn(args.batch, 14 * 14, 384)
    with torch.no_grad():
        difference = (fast(tokens, 14, 14) - reference(tokens, 14, 14)).abs().max().item()
    print(f"max |fast - reference| = {difference:.2e}")
    results = []
    for mode, make in step_kinds(args):
        inputs = tokens.clone().requires_grad_(mode == "train")
        steps = {"hilo_reference": make(reference, inputs, 14, 14), "hilo": make(fast, inputs, 14, 14)}
        if mode == "infer":
            steps["hilo, SDPA"] = make(without_kernels(copy.deepcopy(fast)), inputs, 14, 14)
            steps["linear layers only"] = make(LinearLayersOnly(fast, tokens))
            concatenating = ConcatenatedOutputs(384, 12, window_size=2, alpha=PAPER_ALPHA)
            concatenating.load_state_dict(fast.state_dict(), strict=True)
            steps["hilo, SDPA, outputs concatenated"] = make(without_kernels(concatenating), inputs, 14, 14)
            if args.compile:
                steps["hilo compiled"] = make(torch.compile(copy.deepcopy(fast)), inputs, 14, 14)
        title = f"HiLo layer, dim 384, 12 heads, s=2, alpha 0.9, 14x14, batch {args.batch}, {mode}"
        results.append(measure(steps, args, title, "hilo_reference"))
    return results


def without_kernels(model: nn.Module) -> nn.Module:
    """`model` with every HiLo on scaled_dot_product_attention, not on the compiled kernels
    (`litv2cli.models.native`): what the kernels bring, in the same run."""
    for module in model.modules():
        if isinstance(module, HiLo):
            module.forward_native = lambda padded: None
    return model


class ConcatenatedOutputs(HiLo):
    """The fast layer with its inference output step undone (`h_proj` and `l_proj` concatenated
    as under autograd): what writing both into one buffer saves."""

    def output(self, hifi: torch.Tensor, lofi: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.h_proj(hifi), self.l_proj(lofi)], dim=-1)


def with_learned_offsets(model: nn.Module) -> nn.Module:
    """Offsets of about a pixel in every DTM, as a trained model has (the initial ones are all
    zero, which would make the deformable conv a plain one)."""
    for module in model.modules():
        if isinstance(module, DeformConv2d):
            nn.init.normal_(module.conv_offset.weight, std=1 / module.conv_offset.weight[0].numel() ** 0.5)
            nn.init.normal_(module.conv_offset.bias, std=0.5)
    return model


def one_fast_path(fast: nn.Module, reference: nn.Module, keep: str) -> nn.Module:
    """A copy of the fast model with only its `keep` fast path ("hilo" or "dtm")."""
    model = copy.deepcopy(fast)
    for stage, reference_stage in zip(model.layers, reference.layers):
        if keep == "hilo" and stage.downsample is not None:
            stage.downsample.dconv.reference = True
        if keep == "dtm":
            for block, reference_block in zip(stage.blocks, reference_stage.blocks):
                if hasattr(block, "attn"):
                    block.attn = copy.deepcopy(reference_block.attn)
    return model


def bench_model(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    fast = with_learned_offsets(create_model("s"))
    reference = create_model("s", reference=True)
    reference.load_state_dict(fast.state_dict(), strict=True)
    images = torch.randn(args.batch, 3, args.res, args.res)
    with torch.inference_mode():
        reference_logits = reference.eval()(images)
        difference = (fast.eval()(images) - reference_logits).abs().max().item()
    print(f"max |logit difference| = {difference:.2e}")
    results = []
    for mode, make in step_kinds(args):
        models = {"litv2_s_reference": reference, "litv2_s": fast}
        if args.parts:
            models["litv2_s, HiLo on SDPA"] = without_kernels(copy.deepcopy(fast))
            models["litv2_s, fast HiLo only"] = one_fast_path(fast, reference, "hilo")
            models["litv2_s, fast DTM only"] = one_fast_path(fast, reference, "dtm")
        if args.compile:
            torch._dynamo.reset()
            compiled = torch.compile(fast)
            begin = time.perf_counter()
            with torch.inference_mode() if mode == "infer" else torch.enable_grad():
                output = compiled.eval()(images) if mode == "infer" else compiled.train()(images)
                if mode == "infer":
                    print(f"compiled in {time.perf_counter() - begin:.0f} s; max |logit difference| against "
                          f"the reference: {(output - reference_logits).abs().max().item():.2e}")
            models["litv2_s compiled"] = compiled
        steps = {name: make(model, images) for name, model in models.items()}
        title = f"LITv2-S, batch {args.batch}, {args.res}x{args.res}, {mode}"
        results.append(measure(steps, args, title, "litv2_s_reference"))
    return results


def bench_dtm(args: argparse.Namespace) -> list[dict]:
    from litv2cli.models.dtm import DTM

    results = []
    for dim, size in ((96, 56), (192, 28), (384, 14)):
        torch.manual_seed(0)
        fast = with_learned_offsets(DTM(dim))
        reference = DTM(dim, reference=True)
        reference.load_state_dict(fast.state_dict(), strict=True)
        tokens = torch.randn(args.batch, size * size, dim)
        with torch.no_grad():
            difference = (fast.eval()(tokens, size, size)[0] - reference.eval()(tokens, size, size)[0]).abs().max()
        print(f"max |gather - torchvision| = {difference.item():.2e}")
        for mode, make in step_kinds(args):
            inputs = tokens.clone().requires_grad_(mode == "train")
            steps = {name: make(FirstOutput(layer), inputs, size, size)
                     for name, layer in (("torchvision", reference), ("gather", fast))}
            title = f"DTM {dim} -> {2 * dim}, {size}x{size}, batch {args.batch}, {mode}"
            results.append(measure(steps, args, title, "torchvision"))
    return results


class FirstOutput(nn.Module):
    """A DTM's tokens without its new height and width, so the step helpers can call it."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, *inputs) -> torch.Tensor:
        return self.layer(*inputs)[0]


def bench_swin(args: argparse.Namespace) -> list[dict]:
    import timm

    torch.manual_seed(0)
    models = {"swin_tiny_patch4_window7_224": timm.create_model("swin_tiny_patch4_window7_224"),
              "litv2_s": create_model("s")}
    images = torch.randn(args.batch, 3, args.res, args.res)
    results = []
    for mode, make in step_kinds(args):
        steps = {name: make(model, images) for name, model in models.items()}
        title = f"LITv2-S vs Swin-T, batch {args.batch}, {args.res}x{args.res}, {mode}"
        results.append(measure(steps, args, title, "swin_tiny_patch4_window7_224"))
    return results


def bench_band(args: argparse.Namespace) -> list[dict]:
    from litv2cli.models import hilo

    results = []
    for window, width in ((2, 14), (2, 28), (2, 42), (2, 56), (2, 84), (4, 14), (4, 28), (4, 56)):
        torch.manual_seed(0)
        layer = HiLo(384, 12, window_size=window, alpha=0.0)
        batch = max(1, 64 * 14 * 14 // (width * width))  # about as many tokens as the 14 x 14 batch of 64
        tokens = torch.randn(batch, width * width, 384)

        def with_limit(limit: int) -> Step:
            def step() -> None:
                hilo.BAND_TOKEN_BUDGET = limit  # chooses the path, read at every call
                with torch.inference_mode():
                    layer(tokens, width, width)
            return step

        title = f"Hi-Fi only, s={window}, {width}x{width} map, band of {window * width} tokens, batch {batch}"
        results.append(measure({"window partition": with_limit(0), "masked bands": with_limit(1 << 30)}, args,
                               title, "window partition", batch=batch))
    return results


def bench_keys(args: argparse.Namespace) -> list[dict]:
    """The native kernels against SDPA as the Lo-Fi keys per image grow, past `native.MAX_KEYS`:
    stage 3 (dim 384, 12 heads, s = 2, alpha 0.9) and stage 4 (dim 768, 24 heads, s = 1) of
    LITv2-S on maps of growing side, inference."""
    results = []
    for dim, heads, window, side in ((384, 12, 2, 14), (384, 12, 2, 20), (384, 12, 2, 28), (384, 12, 2, 32),
                                     (768, 24, 1, 7), (768, 24, 1, 10), (768, 24, 1, 14), (768, 24, 1, 16)):
        torch.manual_seed(0)
        layer = HiLo(dim, heads, window_size=window, alpha=PAPER_ALPHA).eval()
        sdpa = without_kernels(copy.deepcopy(layer))
        batch = max(1, 16 * 14 * 14 // (side * side))  # about as many tokens as a 14 x 14 batch of 16
        tokens = torch.randn(batch, side * side, dim)

        def run(model: nn.Module) -> Step:
            def step() -> None:
                native.MAX_KEYS = 1 << 30  # the kernels at every size, read at every call
                with torch.inference_mode():
                    model(tokens, side, side)
            return step

        keys = (side // window) ** 2
        title = f"dim {dim}, s={window}, {side}x{side} map, {keys} Lo-Fi keys per image, batch {batch}"
        results.append(measure({"sdpa": run(sdpa), "native kernels": run(layer)}, args, title, "sdpa", batch=batch))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("layer", "model", "dtm", "swin", "band", "keys"))
    parser.add_argument("--batch", type=int, default=None, help="default 64 for layer, 8 otherwise")
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="layer, model: also time the fast one under "
                        "torch.compile (inference)")
    parser.add_argument("--parts", action="store_true", help="model: also time each fast path alone")
    parser.add_argument("--modes", default="infer,train", help="steps to time, infer and/or train")
    parser.add_argument("--json", type=str, default=None, help="also write the results to this file")
    args = parser.parse_args()
    args.batch = args.batch or (64 if args.what == "layer" else 8)
    args.modes = args.modes.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; warm-up {args.warmup}, {args.repeats} interleaved cycles")
    results = {"layer": bench_layer, "model": bench_model, "dtm": bench_dtm, "swin": bench_swin,
               "band": bench_band, "keys": bench_keys}[args.what](args)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine(), "args": vars(args), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
