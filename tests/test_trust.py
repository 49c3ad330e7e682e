"""Opening a run or comparison folder never runs code, a damaged or edited folder is refused
naming the file, and nothing of the user's is touched (issue 20's classes 1-3)."""

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from helpers import rewrite_state
from incop import load_ticket
from incop.engine.outputs import STATE_MAGIC, read_state_file
from incop.errors import UserError
from incop.tools.cli import main

QUICK = ["--levels", "2", "--warmup-epochs", "1", "--max-epochs", "1"]
COMPARE = ["compare", "--methods", "lth,sap", "--seeds", "0,1", "--levels", "1",
           "--warmup-epochs", "1", "--max-epochs", "1"]  # fmt: skip


class Payload:
    """Unpickling this makes the folder ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def payload_file(path: Path, marker: Path, *, around=None) -> None:
    """Replace ``path`` by a torch file whose unpickling would run ``os.mkdir(marker)``;
    ``around``: a dict the payload is put into (e.g. the real content)."""
    content = dict(around or {})
    content["payload"] = Payload(marker)
    torch.save(content, path)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    assert main(["run", *QUICK, "--out", str(root / "run")]) == 0
    assert main([*COMPARE, "--out", str(root / "cmp")]) == 0
    return root


def copy(finished, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(finished / name, target)
    return target


def snapshot_of(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".incop.lock"}


def refused(argv, capsys, named: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert named in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


# --- class 1: no pickle from a folder -----------------------------------------------------------

RUN_POSITIONS = ["state.pt", "levels/1/checkpoint.pt", "snapshots"]


@pytest.mark.parametrize("position", RUN_POSITIONS)
@pytest.mark.parametrize("signed", [False, True])
def test_no_payload_in_a_run_folder_runs_on_resume(finished, tmp_path, capsys, position, signed):
    run = copy(finished, tmp_path, "run")
    marker = tmp_path / "pwned"
    if position == "snapshots":
        position = next((run / "snapshots").iterdir()).relative_to(run).as_posix()
    payload_file(run / position, marker)
    if signed:  # a forger's edit: every digest that names the file made to fit it
        _resign(run, position, None)
    code = main(["run", "--resume", str(run)])
    err = capsys.readouterr().err
    assert not marker.exists(), "code from a folder's file ran"
    assert code == 2 and "Traceback" not in err, err


def test_a_payload_in_a_signed_state_is_refused_naming_what_it_asked_for(
    finished, tmp_path, capsys
):
    run = copy(finished, tmp_path, "run")
    marker = tmp_path / "pwned"
    state = read_state_file(run / "state.pt")
    rewrite_state(run, {**state, "payload": Payload(marker)})
    err = refused(["run", "--resume", str(run)], capsys, "state.pt")
    assert "mkdir" in err and not marker.exists()


@pytest.mark.parametrize("position", ["warmup/seed-0.pt", "sap/seed-1/state.pt"])
@pytest.mark.parametrize("signed", [False, True])
def test_no_payload_in_a_comparison_runs_on_resume(finished, tmp_path, capsys, position, signed):
    cmp = copy(finished, tmp_path, "cmp")
    marker = tmp_path / "pwned"
    # As if killed during its last run: that run's state.pt is read on resume.
    (cmp / "sap" / "seed-1" / "summary.json").unlink()
    manifest = json.loads((cmp / "manifest.json").read_text())
    manifest["files"] = {
        k: v for k, v in manifest["files"].items() if not k.startswith("sap/seed-1/")
    }
    (cmp / "manifest.json").write_text(json.dumps(manifest))
    payload_file(cmp / position, marker)
    if signed:
        folder, name = (
            (cmp, position)
            if position.startswith("warmup")
            else (cmp / "sap" / "seed-1", "state.pt")
        )
        _resign(folder, name, None)
    code = main(["compare", "--resume", str(cmp)])
    err = capsys.readouterr().err
    assert not marker.exists(), "code from a folder's file ran"
    assert code == 2 and "Traceback" not in err and position.split("/")[-1] in err, err
    if signed:
        assert "mkdir" in err, err


def test_no_payload_runs_on_export_or_load_ticket(finished, tmp_path, capsys):
    run = copy(finished, tmp_path, "run")
    marker = tmp_path / "pwned"
    payload_file(run / "levels" / "2" / "checkpoint.pt", marker)
    code = main(["export", str(run), "--format", "state_dict", "--out", str(tmp_path / "t.pt")])
    assert code == 2 and not marker.exists()
    with pytest.raises(UserError):
        load_ticket(run)
    with pytest.raises(UserError):
        load_ticket(run / "levels" / "2" / "checkpoint.pt")
    assert not marker.exists()


def test_report_reads_no_pickle(finished, tmp_path):
    cmp = copy(finished, tmp_path, "cmp")
    marker = tmp_path / "pwned"
    for path in cmp.rglob("*.pt"):
        payload_file(path, marker)
    # The report checks every file against the manifest, and unpickles none.
    assert main(["report", str(cmp)]) == 2
    assert not marker.exists()


# --- class 2: every byte a resume or report reads is checked -------------------------------------


def test_every_byte_flip_in_state_is_refused(finished, tmp_path, capsys):
    size = (finished / "run" / "state.pt").stat().st_size
    rng = random.Random(0)
    offsets = [0, 10, 25, 70, size - 1, *rng.sample(range(size), 12)]
    for offset in offsets:
        run = tmp_path / f"flip-{offset}"
        shutil.copytree(finished / "run", run)
        data = bytearray((run / "state.pt").read_bytes())
        data[offset] ^= 0x10
        (run / "state.pt").write_bytes(bytes(data))
        before = snapshot_of(run)
        refused(["run", "--resume", str(run)], capsys, "state.pt")
        assert snapshot_of(run) == before


def test_a_state_without_a_key_or_with_a_wrong_type_is_one_line(finished, tmp_path, capsys):
    for edit in ("files", "level", "masks"):
        run = tmp_path / f"edit-{edit}"
        shutil.copytree(finished / "run", run)
        state = read_state_file(run / "state.pt")
        if edit == "files":
            del state["files"]
        elif edit == "level":
            state["level"] = "3"
        else:
            state["masks"] = {"fc1.weight": "bits"}
        rewrite_state(run, state)
        err = refused(["run", "--resume", str(run)], capsys, "state.pt")
        assert repr(edit) in err or edit in err


def test_a_state_naming_a_path_outside_the_folder_is_refused(finished, tmp_path, capsys):
    run = copy(finished, tmp_path, "run")
    state = read_state_file(run / "state.pt")
    state["snapshots"]["init"] = "../../etc/passwd"
    rewrite_state(run, state)
    refused(["run", "--resume", str(run)], capsys, "state.pt")


def test_a_state_of_the_same_run_elsewhere_is_refused(finished, tmp_path, capsys):
    # Same settings, another folder: the manifest did not record that file here.
    twin = tmp_path / "twin"
    assert main(["run", *QUICK, "--out", str(twin)]) == 0
    capsys.readouterr()
    run = copy(finished, tmp_path, "run")
    shutil.copy(twin / "state.pt", run / "state.pt")
    if (twin / "state.pt").read_bytes() != (finished / "run" / "state.pt").read_bytes():
        refused(["run", "--resume", str(run)], capsys, "state.pt")


def _unfinish(cmp: Path) -> None:
    """Make the comparison look interrupted after its last run, so --resume reads it all."""
    (cmp / "comparison.json").unlink()


COMPARISON_DAMAGE = {
    "warm-ups swapped": (
        lambda c: (
            shutil.move(c / "warmup" / "seed-0.pt", c / "x"),
            shutil.move(c / "warmup" / "seed-1.pt", c / "warmup" / "seed-0.pt"),
            shutil.move(c / "x", c / "warmup" / "seed-1.pt"),
        ),
        "warmup/seed-0.pt",
    ),
    "edited summary": (
        lambda c: (c / "lth" / "seed-0" / "summary.json").write_text(
            (c / "lth" / "seed-0" / "summary.json")
            .read_text()
            .replace('"val_accuracy": 0.', '"val_accuracy": 0.999', 1)
        ),
        "lth/seed-0/summary.json",
    ),
    "edited plan": (
        lambda c: (c / "compare.yaml").write_text(
            (c / "compare.yaml").read_text().replace("- 1\n", "- 1\n- 2\n")
        ),
        "compare.yaml",
    ),
    "checkpoint swapped": (
        lambda c: shutil.copy(
            c / "sap" / "seed-1" / "levels" / "1" / "checkpoint.pt",
            c / "sap" / "seed-0" / "levels" / "1" / "checkpoint.pt",
        ),
        "sap/seed-0/levels/1/checkpoint.pt",
    ),
    "truncated final metrics": (
        lambda c: (c / "sap" / "seed-1" / "metrics.jsonl").write_text(
            (c / "sap" / "seed-1" / "metrics.jsonl").read_text()[:-40]
        ),
        "sap/seed-1/metrics.jsonl",
    ),
}


@pytest.mark.parametrize("case", COMPARISON_DAMAGE)
def test_a_damaged_comparison_is_refused_naming_the_file(finished, tmp_path, capsys, case):
    damage, named = COMPARISON_DAMAGE[case]
    cmp = copy(finished, tmp_path, "cmp")
    _unfinish(cmp)
    damage(cmp)
    before = snapshot_of(cmp)
    refused(["compare", "--resume", str(cmp)], capsys, named)
    assert snapshot_of(cmp) == before


@pytest.mark.parametrize("edit", ["summary", "metrics", "method", "seed"])
def test_report_refuses_edited_files(finished, tmp_path, capsys, edit):
    cmp = copy(finished, tmp_path, "cmp")
    comparison = json.loads((cmp / "comparison.json").read_text())
    if edit == "summary":
        comparison["methods"]["lth"]["totals"]["final_accuracy"]["mean"] = 0.999
        (cmp / "comparison.json").write_text(json.dumps(comparison))
        named = "comparison.json"
    elif edit == "metrics":
        path = cmp / "lth" / "seed-0" / "metrics.jsonl"
        path.write_text(path.read_text().replace("0.", "0.9", 1))
        named = "lth/seed-0/metrics.jsonl"
    elif edit == "method":
        comparison["methods"]["../../x"] = comparison["methods"].pop("lth")
        _resign(cmp, "comparison.json", json.dumps(comparison))
        named = "../../x"
    else:
        comparison["seeds"] = [0, 7]
        _resign(cmp, "comparison.json", json.dumps(comparison))
        named = "7"
    refused(["report", str(cmp)], capsys, named)


def _resign(folder: Path, relative: str, text: str | None) -> None:
    """Edit a file (``text``; None: as it is now) and make every digest of it in the folder fit
    (the manifest's and, in a run, the state's): a forger's edit, not damage."""
    if text is not None:
        (folder / relative).write_text(text)
    data = (folder / relative).read_bytes()
    if relative == "state.pt" and not data.startswith(STATE_MAGIC):
        data = STATE_MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n" + data
        (folder / relative).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    if relative != "state.pt" and (folder / "state.pt").exists():
        state = read_state_file(folder / "state.pt")
        if relative in state["files"]:
            state["files"][relative] = digest
            rewrite_state(folder, state)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][relative] = [[len(data), digest]]
    (folder / "manifest.json").write_text(json.dumps(manifest))


# --- class 3: nothing of the user's touched, nothing outside the folder --------------------------


def test_resume_never_deletes_through_a_symlinked_snapshots_folder(finished, tmp_path, capsys):
    run = copy(finished, tmp_path, "run")
    mine = tmp_path / "mine"
    shutil.move(run / "snapshots", mine)
    (mine / "precious.pt").write_bytes(b"mine")
    (run / "snapshots").symlink_to(mine)
    before = snapshot_of(mine)
    refused(["run", "--resume", str(run)], capsys, "snapshots")
    assert snapshot_of(mine) == before


def test_overwrite_keeps_a_users_files_named_like_incops(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my: config\n")
    (out / "metrics.jsonl").write_text('{"mine": 1}\n')
    refused(["run", *QUICK, "--out", str(out), "--overwrite"], capsys, "config.yaml")
    assert (out / "config.yaml").read_text() == "my: config\n"
    assert (out / "metrics.jsonl").read_text() == '{"mine": 1}\n'


def test_overwrite_keeps_a_users_checkpoint_in_a_run_folder(finished, tmp_path, capsys):
    run = copy(finished, tmp_path, "run")
    (run / "levels" / "9").mkdir()
    (run / "levels" / "9" / "checkpoint.pt").write_bytes(b"mine")
    refused(["run", *QUICK, "--out", str(run), "--overwrite"], capsys, "levels/9/checkpoint.pt")
    assert (run / "levels" / "9" / "checkpoint.pt").read_bytes() == b"mine"


def test_compare_overwrite_keeps_a_users_plot_and_config(finished, tmp_path, capsys):
    cmp = copy(finished, tmp_path, "cmp")
    (cmp / "plots" / "mine.png").write_bytes(b"mine")
    (cmp / "lth" / "seed-0" / "config.yaml").write_text("mine: 1\n")
    err = refused([*COMPARE, "--out", str(cmp), "--overwrite"], capsys, "plots/mine.png")
    assert "lth/seed-0/config.yaml" in err
    assert (cmp / "plots" / "mine.png").read_bytes() == b"mine"


def test_compare_overwrite_replaces_its_own_comparison(finished, tmp_path):
    cmp = copy(finished, tmp_path, "cmp")
    assert (
        main([*COMPARE, "--methods", "sap", "--seeds", "0", "--out", str(cmp), "--overwrite"]) == 0
    )
    assert not (cmp / "lth").exists() and (cmp / "sap" / "seed-0" / "summary.json").exists()


@pytest.mark.parametrize("command", [["run", *QUICK], COMPARE])
def test_a_start_killed_during_its_first_write_is_restarted_by_the_same_command(tmp_path, command):
    out = tmp_path / "killed"
    out.mkdir()
    # What a SIGKILL during the first atomic write leaves: the lock and a temporary file.
    (out / ".incop.lock").write_bytes(b"")
    first = "compare.yaml" if command[0] == "compare" else "config.yaml"
    (out / f".{first}.a1b2c3d4.tmp").write_text("half")
    assert main([*command, "--out", str(out)]) == 0
    assert not list(out.rglob("*.tmp")) and (out / first).is_file()


def test_a_start_killed_after_its_manifest_is_restarted(tmp_path):
    out = tmp_path / "killed"
    assert main(["run", *QUICK, "--out", str(out)]) == 0
    for path in sorted(out.rglob("*"), reverse=True):
        if path.name not in ("manifest.json", ".incop.lock"):
            path.unlink() if path.is_file() else path.rmdir()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"] = {}
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["run", *QUICK, "--out", str(out)]) == 0


def test_the_manifest_lists_every_file_incop_wrote(finished):
    for folder in (finished / "run", finished / "cmp" / "sap" / "seed-0"):
        manifest = json.loads((folder / "manifest.json").read_text())
        on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert on_disk - {"manifest.json", ".incop.lock"} == set(manifest["files"])
    plan = yaml.safe_load((finished / "cmp" / "compare.yaml").read_text())
    assert plan["methods"] == ["lth", "sap"]


# --- folders written before manifests and state digests -----------------------------------------


#: Config fields added since the version before manifests: its config.yaml files lack them.
ADDED_SINCE = ("l1",)


def _as_before_manifests(folder: Path) -> None:
    """What the previous incop wrote: no manifest.json, state.pt a bare torch.save archive, and
    config.yaml (with its digest in the state) without the fields added since."""
    for manifest in folder.rglob("manifest.json"):
        manifest.unlink()
    for config in folder.rglob("config.yaml"):
        saved = yaml.safe_load(config.read_text())
        for name in ADDED_SINCE:
            saved.pop(name, None)
        config.write_text(yaml.safe_dump(saved, sort_keys=False))
    for state_file in folder.rglob("state.pt"):
        state = read_state_file(state_file)
        for name in ADDED_SINCE:
            state["config"].pop(name, None)
        config = state_file.parent / "config.yaml"
        state["files"]["config.yaml"] = hashlib.sha256(config.read_bytes()).hexdigest()
        torch.save(state, state_file)


def test_a_run_folder_of_the_previous_version_resumes_and_gains_a_manifest(finished, tmp_path):
    run = copy(finished, tmp_path, "run")
    _as_before_manifests(run)
    summary = json.loads((run / "summary.json").read_text())
    assert main(["run", "--resume", str(run)]) == 0
    assert (run / "manifest.json").is_file()
    again = json.loads((run / "summary.json").read_text())
    assert [lv["val_accuracy"] for lv in again["levels"]] == [
        lv["val_accuracy"] for lv in summary["levels"]
    ]


def test_a_comparison_of_the_previous_version_resumes_and_reports(finished, tmp_path):
    cmp = copy(finished, tmp_path, "cmp")
    _as_before_manifests(cmp)
    (cmp / "comparison.json").unlink()
    assert main(["compare", "--resume", str(cmp)]) == 0
    assert main(["report", str(cmp)]) == 0
    assert (cmp / "manifest.json").is_file()


def test_overwrite_of_a_folder_without_a_manifest_is_refused(finished, tmp_path, capsys):
    run = copy(finished, tmp_path, "run")
    _as_before_manifests(run)
    refused(["run", *QUICK, "--out", str(run), "--overwrite"], capsys, "config.yaml")
    assert (run / "summary.json").is_file()
