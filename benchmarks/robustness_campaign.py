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
  refused;
- and, first, issue 20's five classes on run and comparison folders: (1) a payload pickle
  in every position incop reads, plain and re-signed (its digests made to fit), never runs;
  (2) byte flips of ``state.pt``, a state without a key, swapped warm-ups and checkpoints,
  edited summaries, plans and metrics are refused in one line naming the file, changing
  nothing; (3) symlinked sub-folders, a user's files named like incop's, a method named
  ``../../x``, a start killed during its first write; (4) a real full disk (a small tmpfs,
  when run as root) in run, compare and export, then the resume once space is freed; (5)
  YAML values of the wrong type or out of range, odd flags and masks.

    python benchmarks/robustness_campaign.py [--kills 30] [--seed 0] [--flips 20]
                                             [--only-folders]

Prints each broken case, tried / held per class, then ``tried N, held N, broken N``.
Measured here (2 cores, ``--kills 30``): about 6 minutes for the kill trials and older parts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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
    """Invocations tried and held, per class of promise (``part`` is set by each part)."""

    def __init__(self) -> None:
        self.tried = self.held = 0
        self.broken: list[str] = []
        self.part = "other"
        self.per_part: dict[str, list[int]] = {}

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.tried += 1
        counts = self.per_part.setdefault(self.part, [0, 0])
        counts[0] += 1
        if ok:
            self.held += 1
            counts[1] += 1
        else:
            self.broken.append(f"{self.part}: {name}: {detail}".strip())
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


# --- issue 20: classes 1-5 ------------------------------------------------------------------------

MARKER_NAME = "pwned"


class Payload:
    """Unpickling this makes a folder: the proof that code from a file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def resign(folder: Path, relative: str) -> None:
    """Make every digest of ``folder/relative`` fit its current bytes (the state's, the
    manifest's, and state.pt's own digest line): a forger's edit, not damage."""
    from incop.engine.outputs import STATE_MAGIC, read_state_file, state_bytes

    data = (folder / relative).read_bytes()
    if relative == "state.pt" and not data.startswith(STATE_MAGIC):
        data = STATE_MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n" + data
        (folder / relative).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    if relative != "state.pt" and (folder / "state.pt").exists():
        state = read_state_file(folder / "state.pt")
        if relative in state["files"]:
            state["files"][relative] = digest
            (folder / "state.pt").write_bytes(state_bytes(state))
            resign(folder, "state.pt")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][relative] = [[len(data), digest]]
    (folder / "manifest.json").write_text(json.dumps(manifest))


def one_line_refusal(result: subprocess.CompletedProcess, named: str, code: int = 2) -> bool:
    last = result.stderr.strip().splitlines()[-1:] or [""]
    return result.returncode == code and "Traceback" not in result.stderr and named in last[0]


def payloads(tally: Tally, scratch: Path, good: Path, cmp: Path) -> None:
    """Class 1: a payload in every position incop reads, plain and re-signed."""
    marker = scratch / MARKER_NAME
    snapshot = next((good / "snapshots").iterdir()).relative_to(good).as_posix()
    for relative in ("state.pt", "levels/1/checkpoint.pt", snapshot):
        for signed in (False, True):
            run = scratch / "payload-run"
            shutil.copytree(good, run)
            torch.save({"x": Payload(marker)}, run / relative)
            if signed:
                resign(run, relative)
            result = incop("run", "--resume", str(run))
            ok = not marker.exists() and one_line_refusal(result, Path(relative).name)
            tally.check(f"payload in {relative} (signed {signed}) on run --resume", ok,
                        result.stderr.strip()[-200:])  # fmt: skip
            shutil.rmtree(run)
            marker.rmdir() if marker.exists() else None
    for relative in ("warmup/seed-0.pt", "sap/seed-0/levels/1/checkpoint.pt"):
        for command in (["compare", "--resume"], ["report"]):
            folder = scratch / "payload-cmp"
            shutil.copytree(cmp, folder)
            (folder / "comparison.json").unlink(missing_ok=command[0] == "compare")
            if command[0] == "report":
                shutil.copy(cmp / "comparison.json", folder / "comparison.json")
            torch.save({"x": Payload(marker)}, folder / relative)
            result = incop(*command, str(folder))
            ok = not marker.exists() and one_line_refusal(result, Path(relative).name)
            tally.check(f"payload in {relative} on {' '.join(command)}", ok,
                        result.stderr.strip()[-200:])  # fmt: skip
            shutil.rmtree(folder)
            marker.rmdir() if marker.exists() else None
    run = scratch / "payload-export"
    shutil.copytree(good, run)
    torch.save({"x": Payload(marker)}, run / "levels" / "2" / "checkpoint.pt")
    result = incop("export", str(run), "--format", "state_dict", "--out", str(scratch / "t.pt"))
    tally.check("payload on export", not marker.exists() and result.returncode == 2)
    code = f"import incop; incop.load_ticket({str(run)!r})"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    tally.check("payload on load_ticket", not marker.exists() and "UserError" in loaded.stderr)
    shutil.rmtree(run)


def damage(tally: Tally, scratch: Path, good: Path, cmp: Path, flips: int, rng) -> None:
    """Class 2: byte flips, swaps, edits and truncations of what --resume and report read."""
    size = (good / "state.pt").stat().st_size
    for offset in [0, 25, size - 1, *rng.sample(range(size), flips)]:
        run = scratch / "flip"
        shutil.copytree(good, run)
        data = bytearray((run / "state.pt").read_bytes())
        data[offset] ^= 1 << rng.randrange(8)
        (run / "state.pt").write_bytes(bytes(data))
        result = incop("run", "--resume", str(run))
        tally.check(f"state.pt byte {offset} flipped", one_line_refusal(result, "state.pt"),
                    result.stderr.strip()[-200:])  # fmt: skip
        shutil.rmtree(run)
    from incop.engine.outputs import read_state_file, state_bytes

    run = scratch / "nokey"
    shutil.copytree(good, run)
    state = read_state_file(run / "state.pt")
    del state["files"]
    (run / "state.pt").write_bytes(state_bytes(state))
    resign(run, "state.pt")
    result = incop("run", "--resume", str(run))
    tally.check("state.pt without its files key", one_line_refusal(result, "state.pt"))
    shutil.rmtree(run)
    cases = {
        "warm-up swapped with another seed's": (
            lambda c: shutil.copy(c / "warmup" / "seed-1.pt", c / "warmup" / "seed-0.pt"),
            "seed-0.pt",
        ),
        "edited lth/seed-0/summary.json": (
            lambda c: (c / "lth" / "seed-0" / "summary.json").write_text(
                (c / "lth" / "seed-0" / "summary.json")
                .read_text()
                .replace('"val_accuracy": 0.', '"val_accuracy": 0.999', 1)
            ),
            "summary.json",
        ),  # fmt: skip
        "edited compare.yaml": (
            lambda c: (c / "compare.yaml").write_text((c / "compare.yaml").read_text() + "\n#"),
            "compare.yaml",
        ),
        "level checkpoint swapped with another seed's": (
            lambda c: shutil.copy(
                c / "sap" / "seed-1" / "levels" / "1" / "checkpoint.pt",
                c / "sap" / "seed-0" / "levels" / "1" / "checkpoint.pt",
            ),
            "checkpoint.pt",
        ),  # fmt: skip
        "truncated metrics": (
            lambda c: (c / "sap" / "seed-1" / "metrics.jsonl").write_bytes(
                (c / "sap" / "seed-1" / "metrics.jsonl").read_bytes()[:-30]
            ),
            "metrics.jsonl",
        ),  # fmt: skip
    }
    for name, (edit, named) in cases.items():
        for command in (["compare", "--resume"], ["report"]):
            folder = scratch / "damaged-cmp"
            shutil.copytree(cmp, folder)
            edit(folder)
            before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
            result = incop(*command, str(folder))
            same = all(p.read_bytes() == b for p, b in before.items() if p.name != ".incop.lock")
            ok = one_line_refusal(result, named) and same
            tally.check(f"{name} on {' '.join(command)}", ok, result.stderr.strip()[-200:])
            shutil.rmtree(folder)


def user_files(tally: Tally, scratch: Path, good: Path, cmp: Path) -> None:
    """Class 3: symlinks, a user's files named like incop's, names that lead outside."""
    run, mine = scratch / "linked", scratch / "mine"
    shutil.copytree(good, run)
    shutil.move(run / "snapshots", mine)
    (mine / "thesis.pt").write_bytes(b"mine")
    (run / "snapshots").symlink_to(mine)
    result = incop("run", "--resume", str(run))
    tally.check("symlinked snapshots/ on --resume", one_line_refusal(result, "snapshots")
                and (mine / "thesis.pt").read_bytes() == b"mine")  # fmt: skip
    shutil.rmtree(run)
    shutil.rmtree(mine)
    folder = scratch / "never-a-run"
    folder.mkdir()
    (folder / "config.yaml").write_text("mine: 1\n")
    (folder / "metrics.jsonl").write_text("mine\n")
    result = incop("run", *QUICK, "--out", str(folder), "--overwrite")
    tally.check("--overwrite of a user's config.yaml and metrics.jsonl",
                result.returncode == 2 and (folder / "config.yaml").read_text() == "mine: 1\n"
                and (folder / "metrics.jsonl").read_text() == "mine\n")  # fmt: skip
    shutil.rmtree(folder)
    run = scratch / "extra-level"
    shutil.copytree(good, run)
    (run / "levels" / "9").mkdir()
    (run / "levels" / "9" / "checkpoint.pt").write_bytes(b"mine")
    result = incop("run", *QUICK, "--out", str(run), "--overwrite")
    tally.check("--overwrite of a user's levels/9/checkpoint.pt",
                one_line_refusal(result, "levels/9/checkpoint.pt")
                and (run / "levels" / "9" / "checkpoint.pt").read_bytes() == b"mine")  # fmt: skip
    shutil.rmtree(run)
    folder = scratch / "cmp-mine"
    shutil.copytree(cmp, folder)
    (folder / "plots" / "mine.png").write_bytes(b"mine")
    (folder / "lth" / "seed-0" / "config.yaml").write_text("mine: 1\n")
    result = incop("compare", *QUICK, "--methods", "sap", "--seeds", "0", "--out", str(folder),
                   "--overwrite")  # fmt: skip
    tally.check("compare --overwrite of a user's plot and config", result.returncode == 2
                and (folder / "plots" / "mine.png").read_bytes() == b"mine")  # fmt: skip
    shutil.rmtree(folder)
    folder = scratch / "cmp-names"
    shutil.copytree(cmp, folder)
    comparison = json.loads((folder / "comparison.json").read_text())
    comparison["methods"]["../../x"] = comparison["methods"].pop("lth")
    (folder / "comparison.json").write_text(json.dumps(comparison))
    resign(folder, "comparison.json")
    result = incop("report", str(folder))
    tally.check("report with a method named ../../x", one_line_refusal(result, "../../x"))
    shutil.rmtree(folder)
    one_compare = ["compare", *QUICK, "--methods", "sap", "--seeds", "0"]
    for command, first in ((["run", *QUICK], "config.yaml"), (one_compare, "compare.yaml")):
        folder = scratch / "killed-start"
        folder.mkdir()
        (folder / ".incop.lock").write_bytes(b"")
        (folder / f".{first}.a1b2c3d4.tmp").write_text("half")
        result = incop(*command, "--out", str(folder))
        tally.check(f"{command[0]} killed during its first write, rerun", result.returncode == 0)
        shutil.rmtree(folder)


def full_disk(tally: Tally, scratch: Path) -> None:
    """Class 4: a real full disk (a small tmpfs) in run, compare and export."""
    disk = scratch / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode:
        print("full disk: skipped (mounting a tmpfs needs root and a sandbox that allows it)")
        return
    try:
        whole = scratch / "whole-disk"
        assert incop("run", *QUICK, "--levels", "2", "--out", str(whole)).returncode == 0
        for command in (["run", *QUICK, "--levels", "2"],
                        ["compare", *QUICK, "--methods", "sap", "--seeds", "0"]):  # fmt: skip
            out = disk / command[0]
            result = incop(*command, "--out", str(out))
            tally.check(f"{command[0]} on a full disk: one line, exit 1",
                        one_line_refusal(result, "no space left on device", code=1),
                        result.stderr.strip()[-200:])  # fmt: skip
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
            if (out / ("config.yaml" if command[0] == "run" else "compare.yaml")).exists():
                resumed = incop(command[0], "--resume", str(out))
            else:
                resumed = incop(*command, "--out", str(out))
            same = resumed.returncode == 0 and (
                command[0] != "run" or fingerprint(out) == fingerprint(whole)
            )
            tally.check(f"{command[0]} resumes once space is freed", same,
                        resumed.stderr.strip()[-200:])  # fmt: skip
            shutil.rmtree(out)
            subprocess.run(["mount", "-o", "remount,size=400k", str(disk)], check=True)
        big = scratch / "big"
        assert incop("run", *QUICK, "--model", "lenet5", "--out", str(big)).returncode == 0
        # Leave less room than the ticket needs.
        (disk / "filler").write_bytes(b"x" * (shutil.disk_usage(disk).free - 16_384))
        result = incop("export", str(big), "--format", "state_dict", "--out", str(disk / "t.pt"))
        tally.check("export on a full disk: one line, exit 1",
                    one_line_refusal(result, "no space left on device", code=1),
                    result.stderr.strip()[-200:])  # fmt: skip
    finally:
        subprocess.run(["umount", str(disk)], check=True)


BAD_VALUES = [
    'levels: "3"', "levels: true", "levels: .inf",
    "levels: 1234567890123456789012345678901234567890",
    "warmup_epochs: 1234567890123456789012345678901234567890", "levels: 1e308",
    "threads: 2147483648",
]  # fmt: skip


def bad_values(tally: Tally, scratch: Path) -> None:
    """Class 5: YAML values of the wrong type or out of range, odd flags, odd masks."""
    for text in BAD_VALUES:
        path = scratch / "bad.yaml"
        path.write_text(text + "\n")
        out = scratch / "bad"
        result = incop("run", "--config", str(path), "--out", str(out))
        tally.check(f"YAML {text[:30]}", *refused_cleanly(result, out))
    for flags in (["--threads", "2147483648"], ["--levels", "1e308"], ["--batch-size", "0"]):
        out = scratch / "bad"
        result = incop("run", *flags, "--out", str(out))
        tally.check(f"flags {flags}", *refused_cleanly(result, out))
    code = (
        "import torch, incop\nfrom torch import nn\nm = nn.Linear(3, 2)\n"
        "for masks in ([torch.ones(2, 3)], {'weight': torch.full((2, 3), 0.5)},"
        " {'weight': torch.full((2, 3), float('nan'))}):\n"
        "    try:\n        incop.apply_masks(m, masks)\n        print('accepted')\n"
        "    except incop.UserError:\n        print('refused')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    tally.check("apply_masks refuses a list and non-0/1 masks",
                result.stdout.split() == ["refused"] * 3, result.stderr[-200:])  # fmt: skip


def folder_campaign(tally: Tally, scratch: Path, flips: int, rng) -> None:
    good, cmp = scratch / "trust-run", scratch / "trust-cmp"
    assert incop("run", *QUICK, "--levels", "2", "--out", str(good)).returncode == 0
    assert incop("compare", *QUICK, "--methods", "lth,sap", "--seeds", "0,1",
                 "--out", str(cmp)).returncode == 0  # fmt: skip
    for part, run in (("1 payloads", lambda: payloads(tally, scratch, good, cmp)),
                      ("2 damage", lambda: damage(tally, scratch, good, cmp, flips, rng)),
                      ("3 user files", lambda: user_files(tally, scratch, good, cmp)),
                      ("4 environment", lambda: full_disk(tally, scratch)),
                      ("5 bad values", lambda: bad_values(tally, scratch))):  # fmt: skip
        tally.part = part
        run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=30, help="random SIGKILL trials")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--flips", type=int, default=20, help="random byte flips of state.pt")
    only = "issue 20's classes 1-5 only (no kill trials, no older parts)"
    parser.add_argument("--only-folders", action="store_true", help=only)
    args = parser.parse_args()
    tally, rng = Tally(), random.Random(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        folder_campaign(tally, scratch, args.flips, rng)
        if not args.only_folders:
            tally.part = "kills, bad input, concurrency"
            for part in (bad_inputs, damaged_folders, overwrite_and_concurrency):
                part(tally, scratch)
            kill_trials(tally, scratch, args.kills, rng)
    print(f"\n{time.perf_counter() - started:.0f} s")
    for part, (tried, held) in tally.per_part.items():
        print(f"  {part:<32} tried {tried:>3}, held {held:>3}")
    print(f"tried {tally.tried}, held {tally.held}, broken {len(tally.broken)}")
    for line in tally.broken:
        print(f"  broken: {line}")


if __name__ == "__main__":
    main()
