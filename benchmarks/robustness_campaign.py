"""Crash and bad-input campaign: does incop keep its promises about the user's files?

Runs the command line as a user would, in a scratch folder, and counts every invocation
as held or broken:

- kill trials: ``incop run`` and ``incop compare`` SIGKILLed at a random moment, then
  ``--resume``d (twice when the resume itself is killed); held if the finished folder
  matches an uninterrupted run's (summary without timings, metrics, final masks);
- bad input: each refusal exits 2 (1 for the environment) with one line and no traceback,
  leaving no folder behind;
- damaged folders: resume exits 2 naming the damaged file, changing nothing;
- overwrite and concurrency: a user's files survive ``--overwrite``, a second writer is
  refused.

    python benchmarks/robustness_campaign.py [--kills 30] [--seed 0]

Prints each broken case, then ``tried N, held N, broken N``. Measured here (2 cores,
``--kills 30``): about 6 minutes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RUN = ["run", "--method", "incop-gf", "--levels", "3", "--warmup-epochs", "3", "--max-epochs",
       "3", "--eps", "1e-9", "--probe-size", "256", "--batch-size", "16"]  # fmt: skip
COMPARE = ["compare", "--methods", "sap,incop-gf", "--seeds", "0", "--levels", "2",
           "--warmup-epochs", "3", "--max-epochs", "2", "--batch-size", "16"]  # fmt: skip
QUICK = ["--levels", "1", "--warmup-epochs", "1", "--max-epochs", "1"]


class Tally:
    def __init__(self) -> None:
        self.tried = self.held = 0
        self.broken: list[str] = []

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.tried += 1
        if ok:
            self.held += 1
        else:
            self.broken.append(f"{name}: {detail}".strip())
            print(f"BROKEN {name} {detail}", flush=True)


def incop(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "incop", *args],
        capture_output=True, text=True, cwd=cwd, timeout=600,
    )  # fmt: skip


def fingerprint(folder: Path) -> dict:
    """What must equal an uninterrupted run: summary and metrics without timings, masks."""

    def clean(record: dict) -> dict:
        return {k: v for k, v in record.items() if not k.endswith("_seconds") and k != "out"}

    summary = json.loads((folder / "summary.json").read_text())
    levels = [clean(lv) for lv in summary["levels"]]
    metrics = [clean(json.loads(line)) for line in (folder / "metrics.jsonl").open()]
    last = max(int(p.name) for p in (folder / "levels").iterdir())
    masks = torch.load(folder / "levels" / str(last) / "checkpoint.pt")["masks"]
    return {
        "levels": levels,
        "metrics": metrics,
        "masks": {k: v.tolist() for k, v in masks.items()},
    }


def killed_then_resumed(args: list[str], out: Path, rng: random.Random, seconds: float) -> int:
    """Run, SIGKILL at a random moment (up to twice, the resume too); finish with --resume."""
    command = [sys.executable, "-m", "incop", *args, "--out", str(out)]
    for _ in range(rng.choice([1, 1, 2])):
        victim = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, seconds))
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        command = [sys.executable, "-m", "incop", args[0], "--resume", str(out)]
        if not (out / ("compare.yaml" if args[0] == "compare" else "config.yaml")).exists():
            # Killed before anything was written: nothing to resume, start again.
            command = [sys.executable, "-m", "incop", *args, "--out", str(out)]
    return subprocess.run(command, capture_output=True, timeout=600).returncode


def kill_trials(tally: Tally, scratch: Path, kills: int, rng: random.Random) -> None:
    whole = scratch / "whole"
    started = time.perf_counter()
    assert incop(*RUN, "--out", str(whole / "run")).returncode == 0
    run_seconds = time.perf_counter() - started
    started = time.perf_counter()
    assert incop(*COMPARE, "--out", str(whole / "cmp")).returncode == 0
    compare_seconds = time.perf_counter() - started
    expected = fingerprint(whole / "run")
    expected_cmp = {m: fingerprint(whole / "cmp" / m / "seed-0") for m in ("sap", "incop-gf")}
    for trial in range(kills):
        out = scratch / f"kill-{trial}"
        if trial % 3 == 2:
            code = killed_then_resumed(COMPARE, out, rng, compare_seconds)
            same = code == 0 and all(
                fingerprint(out / m / "seed-0") == expected_cmp[m] for m in expected_cmp
            )
            tally.check(f"kill compare #{trial}", same, f"exit {code}")
        else:
            code = killed_then_resumed(RUN, out, rng, run_seconds)
            same = code == 0 and fingerprint(out) == expected
            tally.check(f"kill run #{trial}", same, f"exit {code}")
        left = list(out.rglob("*.tmp"))
        tally.check(f"no .tmp left #{trial}", not left, ", ".join(map(str, left)))
        shutil.rmtree(out, ignore_errors=True)


BAD_RUNS = [
    ["--p", "nan"], ["--q", "inf"], ["--gamma", "nan"], ["--gamma", "inf"], ["--eta-r", "nan"],
    ["--eta-r", "inf"], ["--eps", "nan"], ["--delta", "nan"], ["--lr", "1e308"],
    ["--momentum", "nan"], ["--weight-decay", "inf"], ["--seed", "20000000000000"],
    ["--device", "cuda:abc"], ["--device", "cuda:99"], ["--model", "nosuch"],
    ["--dataset", "nosuch"], ["--model", "nosuch", "--lr", "-1"],
    ["--lr", "3", "--batch-size", "1"],
    ["--batch-size", "5000", "--lr", "1e20"], ["--exclude", "fc3.weights"],
    ["--include", "nothing"], ["--dataset", "mnist", "--data-dir", "/nonexistent"],
    ["--rewind", "epoch:9"], ["--p", "2", "--q", "1"], ["--levels", "-1"],
]  # fmt: skip
BAD_COMPARES = [
    ["--methods", ""], ["--methods", "sap,sap"], ["--seeds", "0,0"], ["--methods", "nope"],
    ["--seeds", "x"], ["--model", "nosuch"],
]  # fmt: skip


def refused_cleanly(result: subprocess.CompletedProcess, out: Path) -> tuple[bool, str]:
    lines = result.stderr.strip().splitlines()
    ok = result.returncode in (1, 2) and lines and "Traceback" not in result.stderr
    ok = ok and not out.exists()
    return bool(ok), f"exit {result.returncode}, {lines[-1] if lines else ''}"


def bad_inputs(tally: Tally, scratch: Path) -> None:
    for flags in BAD_RUNS:
        out = scratch / "bad" / "run"
        result = incop("run", *QUICK, *flags, "--out", str(out))
        tally.check(f"run {' '.join(flags)}", *refused_cleanly(result, out))
        shutil.rmtree(scratch / "bad", ignore_errors=True)
    for flags in BAD_COMPARES:
        out = scratch / "bad" / "cmp"
        result = incop("compare", *QUICK, "--methods", "sap", "--seeds", "0", *flags,
                       "--out", str(out))  # fmt: skip
        tally.check(f"compare {' '.join(flags)}", *refused_cleanly(result, out))
        shutil.rmtree(scratch / "bad", ignore_errors=True)
    configs = {"binary": b"\x00\xff\xfe", "list": b"- 1\n", "int keys": b"1: 2\n"}
    for name, content in configs.items():
        path = scratch / "c.yaml"
        path.write_bytes(content)
        out = scratch / "bad"
        result = incop("run", "--config", str(path), "--out", str(out))
        tally.check(f"config {name}", *refused_cleanly(result, out))
    result = incop("run", "--config", str(scratch), "--out", str(scratch / "bad"))
    tally.check("config is a folder", *refused_cleanly(result, scratch / "bad"))
    target = scratch / "a-file"
    target.write_text("mine")
    result = incop("run", *QUICK, "--out", str(target))
    tally.check("out is a file", result.returncode == 2 and target.read_text() == "mine")


def damaged_folders(tally: Tally, scratch: Path) -> None:
    good = scratch / "good"
    other = scratch / "other"
    assert incop("run", *QUICK, "--levels", "2", "--out", str(good)).returncode == 0
    assert incop("run", *QUICK, "--levels", "2", "--seed", "1", "--out", str(other)).returncode == 0
    cases = {
        "empty config.yaml": ("config.yaml", lambda p: p.write_text("")),
        "truncated config.yaml": ("config.yaml", lambda p: p.write_text(p.read_text()[:150])),
        "garbled checkpoint": ("levels/1/checkpoint.pt", lambda p: p.write_bytes(b"xx")),
        "missing checkpoint": ("levels/1/checkpoint.pt", lambda p: p.unlink()),
        "deleted metrics": ("metrics.jsonl", lambda p: p.unlink()),
        "garbage metrics": ("metrics.jsonl", lambda p: p.write_text("{oops\n" + p.read_text())),
        "corrupt state": ("state.pt", lambda p: p.write_bytes(p.read_bytes()[:100])),
        "foreign state": ("state.pt", lambda p: shutil.copy(other / "state.pt", p)),
    }
    for name, (relative, damage) in cases.items():
        run = scratch / "damaged"
        shutil.copytree(good, run)
        damage(run / relative)
        result = incop("run", "--resume", str(run))
        named = relative.split("/")[-1] in result.stderr or relative in result.stderr
        tally.check(f"resume with {name}", result.returncode == 2 and named
                    and "Traceback" not in result.stderr, result.stderr.strip()[-200:])  # fmt: skip
        shutil.rmtree(run)


def overwrite_and_concurrency(tally: Tally, scratch: Path) -> None:
    for command in (["run"], ["compare", "--methods", "sap", "--seeds", "0"]):
        folder = scratch / "precious"
        (folder / "sub").mkdir(parents=True)
        (folder / "thesis.txt").write_text("x")
        result = incop(*command, *QUICK, "--out", str(folder), "--overwrite")
        kept = (folder / "thesis.txt").exists() and (folder / "sub").is_dir()
        tally.check(
            f"{command[0]} --overwrite keeps a user's files", kept and result.returncode == 2
        )
        shutil.rmtree(folder)
    out = scratch / "busy"
    first = subprocess.Popen([sys.executable, "-m", "incop", *RUN, "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    while not (out / "config.yaml").exists():
        time.sleep(0.01)
    second = incop(*RUN, "--out", str(out), "--overwrite")
    tally.check("a second writer is refused", second.returncode == 2
                and "another incop process" in second.stderr, second.stderr[-200:])  # fmt: skip
    tally.check("the first writer finishes", first.wait(timeout=600) == 0)
    names = scratch / "names"
    names.mkdir()
    procs = [subprocess.Popen([sys.executable, "-m", "incop", "run", *QUICK, "--seed", str(s)],
                              cwd=names, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for s in range(3)]  # fmt: skip
    codes = [p.wait(timeout=600) for p in procs]
    folders = list((names / "runs").iterdir())
    tally.check(
        "three runs in one second get three folders", codes == [0, 0, 0] and len(folders) == 3
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30, help="random SIGKILL trials")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    args = parser.parse_args()
    tally, rng = Tally(), random.Random(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for part in (bad_inputs, damaged_folders, overwrite_and_concurrency):
            part(tally, scratch)
        kill_trials(tally, scratch, args.kills, rng)
    print(f"\n{time.perf_counter() - started:.0f} s")
    print(f"tried {tally.tried}, held {tally.held}, broken {len(tally.broken)}")
    for line in tally.broken:
        print(f"  broken: {line}")


if __name__ == "__main__":
    main()
