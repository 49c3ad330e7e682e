"""How fast the command line answers (issue 28, "a fast start").

Times ``incop --help``, ``incop list`` and a refusal of bad input (``incop run --lr -1``) as
whole processes, the way a user meets them, beside the interpreter's own start
(``python -c pass``) and ``python -c "import torch"`` for scale. Repetitions are interleaved
(one of each command per round) so the machine's other load falls on all of them alike;
the median wall-clock and CPU seconds (user + system of the child) of each are printed.

    python benchmarks/start.py [--reps 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time


def commands() -> dict[str, list[str]]:
    incop = shutil.which("incop")
    cli = [incop] if incop else [sys.executable, "-m", "incop"]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "incop --help": [*cli, "--help"],
        "incop list": [*cli, "list"],
        "incop run --lr -1": [*cli, "run", "--lr", "-1"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    }


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="rounds (default 7)")
    args = parser.parse_args()
    runs = commands()
    walls: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.reps):
        for name, argv in runs.items():
            wall, cpu = timed(argv)
            walls[name].append(wall)
            cpus[name].append(cpu)
    print(f"{args.reps} interleaved rounds, {os.cpu_count()} CPUs seen; medians (min-max)")
    print(f"{'command':<26} {'wall s':>20} {'CPU s':>8}")
    for name in runs:
        w = walls[name]
        print(f"{name:<26} {statistics.median(w):>7.3f} ({min(w):.3f}-{max(w):.3f})"
              f" {statistics.median(cpus[name]):>8.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
