"""CLI start-up: `litv2 --help` (and other commands) as whole processes, against `python -c pass`.

Protocol: every command runs as a fresh process, in rounds; each round runs every command once,
in an order that rotates from round to round, so load from other processes hits all alike. One
warm-up round (file cache) is dropped. Reported: the median wall time of each command over the
rounds, its spread (min-max), and its ratio to the median of `python -c pass` from the same runs.

    python benchmarks/bench_cli_startup.py                         # litv2 --help, 30 rounds
    python benchmarks/bench_cli_startup.py --rounds 50 --command "litv2 --version" --command "litv2 --help"
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def measure(commands: dict[str, list[str]], rounds: int) -> dict[str, list[float]]:
    names = list(commands)
    for name in names:  # warm-up round, dropped
        time_once(commands[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_once(commands[name]))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--command", action="append", help="Command to time (repeatable); default: litv2 --help.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    script = shutil.which("litv2") or str(Path(sys.executable).with_name("litv2"))
    commands = {"python -c pass": [sys.executable, "-c", "pass"]}
    for text in args.command or ["litv2 --help"]:
        argv = shlex.split(text)
        commands[text] = [script, *argv[1:]] if argv[0] == "litv2" else argv
    times = measure(commands, args.rounds)
    baseline = statistics.median(times["python -c pass"])
    rows = [{"command": name, "median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
             "ratio_to_python": statistics.median(t) / baseline} for name, t in times.items()]
    print(f"CPU: {cpu_model()}; {args.rounds} interleaved rounds, median wall time of a whole process")
    for row in rows:
        print(f"  {row['command']:<36} {row['median_s']:.3f} s  ({row['min_s']:.3f}-{row['max_s']:.3f})  "
              f"{row['ratio_to_python']:.1f}x python -c pass")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "rounds": args.rounds, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
