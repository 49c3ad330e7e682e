"""incop never deletes or overwrites what it did not write, never leaves a half-made folder
behind a refused start, and lets one process at a time write a folder."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from incop.config import resolve
from incop.engine import outputs
from incop.engine.folders import LOCK_FILE, FolderLock
from incop.tools.cli import default_out, main

RUN = ["--levels", "1", "--warmup-epochs", "1", "--max-epochs", "1"]
COMPARE = ["compare", "--methods", "sap", "--seeds", "0", *RUN]


def precious(folder: Path) -> None:
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.txt").write_text("x")


def still_there(folder: Path) -> bool:
    return (folder / "thesis.txt").read_text() == "x" and (folder / "sub").is_dir()


@pytest.mark.parametrize("extra", [[], ["--model", "nosuch"]])
def test_compare_overwrite_refuses_a_folder_holding_a_users_files(tmp_path, capsys, extra):
    out = tmp_path / "precious"
    precious(out)
    assert main([*COMPARE, "--out", str(out), "--overwrite", *extra]) == 2
    err = capsys.readouterr().err
    assert still_there(out)
    assert ("thesis.txt" in err and "--overwrite refused" in err) or "model" in err


def test_run_overwrite_refuses_a_run_folder_with_a_users_file_in_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *RUN, "--out", str(out)]) == 0
    (out / "notes.md").write_text("mine")
    (out / "levels" / "mine").mkdir()
    assert main(["run", *RUN, "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "notes.md" in err and "levels/mine/" in err
    assert (out / "notes.md").read_text() == "mine" and (out / "summary.json").exists()


def test_overwrite_replaces_incops_own_run_and_comparison(tmp_path):
    run, cmp = tmp_path / "run", tmp_path / "cmp"
    assert main(["run", *RUN, "--levels", "2", "--out", str(run)]) == 0
    assert main(["run", *RUN, "--out", str(run), "--overwrite"]) == 0
    assert not (run / "levels" / "2").exists(), "the earlier run's level 2 was left behind"
    assert main([*COMPARE, "--trials", "1", "--out", str(cmp)]) == 0
    assert main([*COMPARE, "--out", str(cmp), "--overwrite", "--methods", "lth"]) == 0
    assert not (cmp / "sap").exists() and (cmp / "lth" / "seed-0" / "summary.json").exists()


def test_new_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "x"
    precious(out)
    assert main(["run", *RUN, "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and still_there(out)
    assert sorted(os.listdir(out)) == ["sub", "thesis.txt"]


REFUSED_RUNS = [
    ["--model", "nosuch"],
    ["--dataset", "mnist", "--data-dir", "/nonexistent"],
    ["--lr", "-1"],
    ["--exclude", "fc9.weight"],
    ["--lr", "3", "--batch-size", "1"],  # diverges in the first dense epoch
]
REFUSED_COMPARES = [
    ["--methods", "sap,sap"],
    ["--seeds", "0,0"],
    ["--methods", ""],
    ["--methods", "sap,nope"],
    ["--model", "nosuch"],
    ["--lr", "3", "--batch-size", "1"],
]


@pytest.mark.parametrize("flags", REFUSED_RUNS)
def test_a_refused_run_leaves_nothing(tmp_path, capsys, flags):
    out = tmp_path / "a" / "b"
    assert main(["run", *RUN, *flags, "--out", str(out)]) == 2
    assert not (tmp_path / "a").exists()
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("flags", REFUSED_COMPARES)
def test_a_refused_comparison_leaves_nothing_and_does_not_block_the_fix(tmp_path, flags):
    out = tmp_path / "cmp"
    assert main([*COMPARE, *flags, "--out", str(out)]) == 2
    assert not out.exists()
    if flags[0] == "--methods":
        assert main([*COMPARE, "--out", str(out)]) == 0


def test_a_second_process_is_refused_while_the_first_holds_the_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lock = FolderLock(out)
    try:
        busy = subprocess.run(
            [
                sys.executable,
                "-m",
                "incop",
                "run",
                *RUN,
                "--out",
                str(out),
                "--overwrite",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        lock.release()
    assert busy.returncode == 2 and "another incop process is using" in busy.stderr
    assert os.listdir(out) == [LOCK_FILE]


def test_a_killed_process_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from incop.engine.folders import FolderLock;"
         f" FolderLock(Path({str(tmp_path)!r})); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    FolderLock(tmp_path).release()  # would raise if the lock were still held


def test_default_folder_names_are_unique_within_a_second():
    config = resolve({})
    names = {default_out("sap", config) for _ in range(50)}
    assert len(names) == 50


@pytest.mark.slow
def test_concurrent_runs_with_default_folders_never_share_one(tmp_path):
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "incop", "run", *RUN, "--seed", str(seed)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(3)
    ]
    for proc in runs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    folders = sorted((tmp_path / "runs").iterdir())
    assert len(folders) == 3
    seeds = set()
    for folder in folders:
        config = yaml.safe_load((folder / "config.yaml").read_text())
        summary = json.loads((folder / "summary.json").read_text())
        assert config["seed"] == summary["config"]["seed"]
        seeds.add(config["seed"])
    assert seeds == {0, 1, 2}


# --- the environment ----------------------------------------------------------------------------


def test_out_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("mine")
    assert main(["run", *RUN, "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is a file" in err and target.read_text() == "mine"


def test_unwritable_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    # Tests run as root here, which chmod cannot stop; the check asks os.access.
    monkeypatch.setattr("incop.engine.folders.os.access", lambda path, mode: False)
    assert main(["run", *RUN, "--out", str(tmp_path / "x")]) == 2
    assert "not writable" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_a_full_disk_is_one_line_naming_the_file_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    whole, full = tmp_path / "whole", tmp_path / "full"
    flags = ["--levels", "2", "--warmup-epochs", "2", "--max-epochs", "2"]
    assert main(["run", *flags, "--out", str(whole)]) == 0
    real_save, calls = outputs.torch.save, {"n": 0}

    def save(obj, handle):
        calls["n"] += 1
        if calls["n"] == 6:  # mid-run: some epochs and a level checkpoint are already saved
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, handle)

    monkeypatch.setattr(outputs.torch, "save", save)
    assert main(["run", *flags, "--out", str(full)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("incop: error: no space left on device while writing")
    assert str(full) in err and "Traceback" not in err
    assert not list(full.rglob("*.tmp"))
    monkeypatch.setattr(outputs.torch, "save", real_save)
    assert main(["run", "--resume", str(full)]) == 0
    a, b = (json.loads((f / "summary.json").read_text()) for f in (whole, full))
    assert [lv["val_accuracy"] for lv in a["levels"]] == [lv["val_accuracy"] for lv in b["levels"]]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_real_full_disk(tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)]).returncode:
        pytest.skip("this sandbox does not allow mounting a tmpfs")
    try:
        code = main(["run", *RUN, "--model", "lenet5", "--out", str(disk / "run")])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 1 and "no space left on device while writing" in err, err
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs (root only), and a function that resizes it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)]).returncode:
        pytest.skip("this sandbox does not allow mounting a tmpfs")

    def resize(size="64m"):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)

    try:
        yield disk, resize
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_real_full_disk_in_compare_is_one_line_and_resumes_identical(
    tmp_path, capsys, small_disk
):
    disk, resize = small_disk
    resize("2m")  # full mid-way: the warm-up done, the method's run not
    whole, full = tmp_path / "whole", disk / "cmp"
    assert main([*COMPARE, "--levels", "2", "--out", str(whole)]) == 0
    capsys.readouterr()
    assert main([*COMPARE, "--levels", "2", "--out", str(full)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "no space left on device while writing" in err[-1] and "Traceback" not in "".join(err)
    assert (full / "warmup" / "seed-0.pt").is_file()
    resize()
    assert main(["compare", "--resume", str(full)]) == 0
    a, b = (json.loads((f / "sap" / "seed-0" / "summary.json").read_text()) for f in (whole, full))
    assert [lv["val_accuracy"] for lv in a["levels"]] == [lv["val_accuracy"] for lv in b["levels"]]


def test_a_real_full_disk_in_export_is_one_line(tmp_path, capsys, small_disk):
    disk, _ = small_disk
    run = tmp_path / "run"
    assert main(["run", *RUN, "--model", "lenet5", "--out", str(run)]) == 0
    # Leave less room than the ticket needs.
    (disk / "filler").write_bytes(b"x" * (shutil.disk_usage(disk).free - 16_384))
    capsys.readouterr()
    out = disk / "ticket.pt"
    assert main(["export", str(run), "--format", "state_dict", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no space left on device while writing" in err, err
    assert not out.exists() and not list(disk.glob(".*.tmp"))
