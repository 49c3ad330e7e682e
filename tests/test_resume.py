import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import TinyNet, blobs, rewrite_state, wait_mid_level
from incop import prune
from incop.engine.outputs import read_metrics, read_state_file
from incop.tools.cli import main

SETTINGS = ["--levels", "3", "--warmup-epochs", "3", "--max-epochs", "4", "--method", "incop-gf",
            "--eps", "1e-9", "--probe-size", "256"]  # fmt: skip


def incop(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "incop", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def without_timings(summary):
    for level in summary["levels"]:
        for key in ("train_seconds", "eval_seconds", "flow_seconds"):
            level.pop(key)
    summary["config"].pop("out")
    return summary


def final_masks(folder):
    return torch.load(folder / "levels" / "3" / "checkpoint.pt")["masks"]


@pytest.mark.slow
def test_sigkill_mid_level_then_resume_matches_an_uninterrupted_run(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert incop("run", *SETTINGS, "--out", str(whole)).wait(timeout=300) == 0

    victim = incop("run", *SETTINGS, "--out", str(killed))
    wait_mid_level(killed)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it was killed"

    resumed = incop("run", "--resume", str(killed))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()

    a = json.loads((whole / "summary.json").read_text())
    b = json.loads((killed / "summary.json").read_text())
    assert without_timings(a) == without_timings(b)
    ma, mb = final_masks(whole), final_masks(killed)
    assert all(torch.equal(ma[name], mb[name]) for name in ma)

    def epochs(folder):
        return [
            {k: v for k, v in r.items() if not k.endswith("_seconds")}
            for r in read_metrics(folder / "metrics.jsonl")
        ]

    assert epochs(whole) == epochs(killed)


def test_a_folder_holding_a_run_is_refused_unless_overwritten(tmp_path):
    x, y = blobs()
    train = [(x, y)]
    prune(TinyNet(), train, train, levels=1, warmup_epochs=1, max_epochs=1, out=tmp_path)
    again = subprocess.run(
        [sys.executable, "-m", "incop", "run", "--levels", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2 and "already holds a run" in again.stderr
    assert (tmp_path / "summary.json").exists()


def test_nan_loss_ends_the_run_cleanly_keeping_the_previous_ticket(tmp_path):
    calls = {"n": 0}

    def loss_fn(out, y):
        loss = torch.nn.functional.cross_entropy(out, y)
        if not torch.is_grad_enabled():  # evaluation
            return loss
        calls["n"] += 1
        # 3 training steps per epoch: warm-up 2 epochs, level 1 2 epochs, then NaN in level 2
        return loss * float("nan") if calls["n"] > 12 else loss

    x, y = blobs()
    train = list(zip(x.split(128), y.split(128), strict=True))
    val = [blobs(seed=1)]
    model = TinyNet()
    with pytest.warns(RuntimeWarning, match="nan"):
        result = prune(
            model, train, val, method="lth", levels=3, warmup_epochs=2, max_epochs=2,
            out=tmp_path, on_divergence="stop", loss_fn=loss_fn,
        )  # fmt: skip
    assert [lv.stop_reason for lv in result.levels] == ["warmup", "cap", "diverged"]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    ticket = torch.load(tmp_path / "levels" / "1" / "checkpoint.pt")
    assert torch.equal(ticket["masks"]["hidden.weight"], result.level_masks[1]["hidden.weight"])
    assert all(torch.isfinite(t).all() for t in ticket["state_dict"].values())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [lv["stop_reason"] for lv in summary["levels"]][-1] == "diverged"


# --- resume is exact or refuses -----------------------------------------------------------------

QUICK = ["--levels", "2", "--warmup-epochs", "2", "--max-epochs", "2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run folder and a second run's folder with other settings (seed 1)."""
    root = tmp_path_factory.mktemp("finished")
    for name, seed in (("a", "0"), ("b", "1")):
        assert main(["run", *QUICK, "--seed", seed, "--out", str(root / name)]) == 0
    return root


def damaged(finished, tmp_path, how):
    run = tmp_path / "run"
    shutil.copytree(finished / "a", run)
    how(run)
    return run


DAMAGE = {
    "empty config": (lambda r: (r / "config.yaml").write_text(""), "config.yaml"),
    "truncated config": (
        lambda r: (r / "config.yaml").write_text((r / "config.yaml").read_text()[:200]),
        "config.yaml",
    ),
    "edited config": (
        lambda r: (r / "config.yaml").write_text(
            (r / "config.yaml").read_text().replace("lr: 0.01", "lr: 0.02")
        ),
        "config.yaml",
    ),
    "garbled checkpoint": (
        lambda r: (r / "levels" / "1" / "checkpoint.pt").write_bytes(b"garbage"),
        "levels/1/checkpoint.pt",
    ),
    "missing checkpoint": (
        lambda r: (r / "levels" / "1" / "checkpoint.pt").unlink(),
        "levels/1/checkpoint.pt",
    ),
    "deleted metrics": (lambda r: (r / "metrics.jsonl").unlink(), "metrics.jsonl"),
    "truncated metrics": (
        lambda r: (r / "metrics.jsonl").write_text(
            "".join((r / "metrics.jsonl").read_text().splitlines(keepends=True)[:3])
        ),
        "metrics.jsonl",
    ),
    "garbage state": (lambda r: (r / "state.pt").write_bytes(b"\x80\x04garbage"), "state.pt"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_resume_refuses_a_damaged_folder_naming_the_file(finished, tmp_path, capsys, case):
    how, named = DAMAGE[case]
    run = damaged(finished, tmp_path, how)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["run", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err, err
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".incop.lock"}
    assert after == {p: b for p, b in before.items() if p.name != ".incop.lock"}


def test_resume_refuses_a_state_from_another_run(finished, tmp_path, capsys):
    run = damaged(finished, tmp_path, lambda r: None)
    shutil.copy(finished / "b" / "state.pt", run / "state.pt")
    assert main(["run", "--resume", str(run)]) == 2
    assert "state.pt" in capsys.readouterr().err


def test_a_state_saved_before_a_setting_existed_resumes_at_its_default(finished, tmp_path):
    # warmup_stop and epi_window came after the first release; a run saved before then ran as their
    # defaults do, so it must still resume.
    run = damaged(finished, tmp_path, lambda r: None)
    state = read_state_file(run / "state.pt")
    for name in ("warmup_stop", "epi_window"):
        del state["config"][name]
    rewrite_state(run, state)
    assert main(["run", "--resume", str(run)]) == 0


def test_without_a_state_metrics_are_cut_back_and_the_run_starts_again(finished, tmp_path):
    # A kill before the first state save (e.g. right after a comparison's shared warm-up
    # records were logged) leaves metrics lines that no state accounts for.
    run = damaged(finished, tmp_path, lambda r: (r / "state.pt").unlink())
    assert main(["run", "--resume", str(run)]) == 0

    def epochs(folder):
        return [(r["level"], r["epoch"], r["val_accuracy"]) for r in read_metrics(folder)]

    assert epochs(run / "metrics.jsonl") == epochs(finished / "a" / "metrics.jsonl")


def test_resume_removes_leftovers_of_killed_writes(finished, tmp_path):
    run = damaged(finished, tmp_path, lambda r: None)
    # Named as mkstemp names them: ".<file>.<8 random characters>.tmp".
    leftovers = [
        run / ".state.pt.k1l2ed_x.tmp",
        run / "levels" / "1" / ".checkpoint.pt.ab12cd34.tmp",
    ]
    for path in leftovers:
        path.write_bytes(b"x" * 1000)
    assert main(["run", "--resume", str(run)]) == 0
    assert not any(path.exists() for path in leftovers)


def test_resume_with_another_thread_count_warns(finished, tmp_path):
    run = damaged(finished, tmp_path, lambda r: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        with pytest.warns(RuntimeWarning, match="threads"):
            assert main(["run", "--resume", str(run)]) == 0
    finally:
        torch.set_num_threads(threads)
    assert json.loads((run / "summary.json").read_text())["threads"] == threads + 1


@pytest.mark.slow
def test_a_comparison_killed_during_its_shared_warmup_resumes_from_the_last_epoch(tmp_path):
    settings = ["--methods", "sap", "--seeds", "0", "--levels", "1", "--max-epochs", "1",
                "--warmup-epochs", "6", "--batch-size", "8"]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(["compare", *settings, "--out", str(whole)]) == 0
    victim = incop("compare", *settings, "--out", str(killed))
    metrics = killed / "warmup" / "seed-0" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (
        metrics.exists() and len(read_metrics(metrics)) >= 2
    ):
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (killed / "warmup" / "seed-0.pt").exists(), "the warm-up finished before the kill"
    trained = len(read_metrics(metrics))
    resumed = incop("compare", "--resume", str(killed))
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert trained >= 2
    run = Path("sap") / "seed-0" / "metrics.jsonl"
    a, b = (
        [(r["level"], r["epoch"], r["val_accuracy"]) for r in read_metrics(f / run)]
        for f in (whole, killed)
    )
    assert a == b and [e for lvl, e, _ in a if lvl == 0] == [1, 2, 3, 4, 5, 6]


def test_state_holds_what_changes_per_epoch_and_snapshots_are_written_once(tmp_path):
    out = tmp_path / "r"
    args = ["run", "--method", "sap", "--levels", "2", "--warmup-epochs", "3", "--max-epochs", "2"]
    assert main([*args, "--rewind", "epoch:1", "--out", str(out)]) == 0
    state = read_state_file(out / "state.pt")
    # Model plus optimiser state, saved alone, against the whole resume state.
    alone = tmp_path / "alone.pt"
    torch.save({"model": state["model"], "optimizer": state["optimizer"]}, alone)
    assert (out / "state.pt").stat().st_size <= 1.1 * alone.stat().st_size
    # theta_0, theta* and epoch K: files on disk, each named by the epoch it was taken at.
    files = sorted(p.name for p in (out / "snapshots").iterdir())
    referenced = {Path(relative).name for relative in state["snapshots"].values()}
    assert files == sorted(referenced)  # nothing else kept
    # theta* of epoch 1, if epoch 1 was the best so far, is also epoch K = 1: one file.
    assert Path(state["snapshots"]["epoch"]).name in ("epoch-1.pt", "dense-1.pt")
    assert Path(state["snapshots"]["init"]).name == "init-0.pt"
    assert Path(state["snapshots"]["dense"]).name.startswith("dense-")
    assert set(state["snapshots"]) == {"init", "dense", "epoch"}
    assert all((out / relative).is_file() for relative in state["snapshots"].values())
