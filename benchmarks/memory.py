"""Peak memory (issue 28): the peak resident set size of the default job (``incop run``, the
README's first command, on the embedded ``digits``) and of ``incop run --dataset
fashion-mnist --model lenet5`` (the full Fashion-MNIST training split; its files from
``--data-dir``, default ``../shared/datasets``).

Each job runs in its own process, into a temporary folder, and its peak RSS is the kernel's
``ru_maxrss`` of that process (``os.wait4``), what ``/usr/bin/time -v`` prints as "Maximum
resident set size". The goal for the Fashion-MNIST run is 500 MB. What keeps it there: the
images are held as uint8 and normalised per batch (``incop.workload.data.Normalize``), the
whole dataset is freed once the splits hold their parts, and the finiteness check on a
user's inputs reads them in chunks.

    python benchmarks/memory.py [--data-dir DIR] [--threads N] [--quick]

``--quick`` runs each job with 1 level of 1 epoch after a 1-epoch warm-up (the peak of
loading and of one level, in a minute); without it the jobs run at their defaults.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_MB = 500


def peak(command: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(peak RSS in MB, wall seconds, exit status) of ``command`` run to its end."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code:
            errors.seek(0)
            sys.stderr.write(errors.read().decode(errors="replace")[-2000:])
    # Linux reports ru_maxrss in KiB.
    return usage.ru_maxrss / 1024, time.perf_counter() - start, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--threads", type=int, default=None, help="default: torch's own")
    parser.add_argument("--quick", action="store_true", help="1 level of 1 epoch per job")
    args = parser.parse_args()
    env = {**os.environ, "INCOP_DATA_DIR": args.data_dir}
    extra = ["--levels", "1", "--warmup-epochs", "1", "--max-epochs", "1"] if args.quick else []
    if args.threads is not None:
        extra += ["--threads", str(args.threads)]
    jobs = {
        "incop run (digits, the default job)": [],
        "incop run --dataset fashion-mnist --model lenet5": [
            "--dataset", "fashion-mnist", "--model", "lenet5",
        ],
    }  # fmt: skip
    print(f"peak RSS per job ({'quick' if args.quick else 'defaults'};"
          f" threads {args.threads or 'torch default'})")  # fmt: skip
    print("| job | peak RSS (MB) | wall (s) |\n| --- | --- | --- |")
    worst = 0.0
    for name, flags in jobs.items():
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "run")
            command = [sys.executable, "-m", "incop", "run", *flags, *extra, "--out", out]
            mb, seconds, code = peak(command, env)
        if code:
            sys.exit(f"{name}: exited with {code}")
        print(f"| {name} | {mb:.0f} | {seconds:.1f} |")
        if flags:
            worst = mb
    verdict = "within" if worst <= GOAL_MB else "over"
    print(f"the Fashion-MNIST run peaks at {worst:.0f} MB: {verdict} the {GOAL_MB} MB goal")


if __name__ == "__main__":
    main()
