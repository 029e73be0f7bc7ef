"""LITv2 inference throughput: fast HiLo vs the paper-style reference HiLo, same weights.

Protocol: one process, both models built from the same state dict, warm-up, then rounds. A
round runs the models in A-B-B-A order (A alternating between rounds), so neither always runs
on a warmer cache or a quieter CPU, and keeps each model's faster forward of the two (a spike
from another process hits one forward, not both). Reports images/s from the median over
rounds, and the speed ratio as a ratio of medians and as the median of per-round ratios.

Each forward is timed twice: wall clock, and CPU time of this process. On a CPU shared with
other jobs the wall clock also measures the other jobs; with `--threads 1` the CPU time counts
only our own work (with several threads it would add up the threads), so it is the fairer
number there. On an idle machine the two agree.

    python benchmarks/bench_hilo_reference.py --variant s --batch 8 --res 224 --rounds 12 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from litv2cli.models import create_model


def timed_forward(model: torch.nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward."""
    wall, cpu = time.perf_counter(), time.process_time()
    model(images)
    return time.perf_counter() - wall, time.process_time() - cpu


def summarise(label: str, times: dict[str, list[float]], batch: int) -> None:
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {label:>4} {name:>15}: {batch / median:6.2f} images/s "
              f"(median {median * 1e3:.0f} ms, range {min(values) * 1e3:.0f}-{max(values) * 1e3:.0f} ms)")
    paired = sorted(r / f for f, r in zip(times["hilo"], times["hilo_reference"]))
    of_medians = statistics.median(times["hilo_reference"]) / statistics.median(times["hilo"])
    print(f"  {label:>4} ratio hilo / hilo_reference: {of_medians:.3f}x of medians, "
          f"{statistics.median(paired):.3f}x median per round (range {paired[0]:.3f}-{paired[-1]:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="s")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    fast = create_model(args.variant).eval()
    reference = create_model(args.variant, attention="hilo_reference").eval()
    reference.load_state_dict(fast.state_dict(), strict=True)
    images = torch.randn(args.batch, 3, args.res, args.res)
    models = {"hilo": fast, "hilo_reference": reference}
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}

    with torch.inference_mode():
        difference = (fast(images) - reference(images)).abs().max().item()
        for _ in range(args.warmup):
            for model in models.values():
                model(images)
        for round_index in range(args.rounds):
            first, second = list(models) if round_index % 2 == 0 else list(reversed(models))
            taken: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
            for name in (first, second, second, first):
                taken[name].append(timed_forward(models[name], images))
            for name, pair in taken.items():
                wall[name].append(min(t[0] for t in pair))
                cpu[name].append(min(t[1] for t in pair))

    print(f"LITv2-{args.variant.upper()} inference, batch {args.batch}, {args.res}x{args.res}, "
          f"{args.rounds} interleaved A-B-B-A rounds after {args.warmup} warm-up")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"max |logit difference|: {difference:.2e}")
    summarise("wall", wall, args.batch)
    summarise("cpu", cpu, args.batch)


if __name__ == "__main__":
    main()
