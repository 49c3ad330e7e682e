import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import TinyNet, blobs
from incop import prune
from incop.outputs import read_metrics

SETTINGS = ["--levels", "3", "--warmup-epochs", "3", "--max-epochs", "4", "--method", "incop-gf",
            "--eps", "1e-9", "--probe-size", "256"]  # fmt: skip


def incop(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "incop.cli", *args],
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
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + 300
    # Kill once level 2 has trained an epoch: mid-level, with earlier levels done.
    while time.monotonic() < deadline:
        if metrics.exists() and any(
            r["level"] == 2 and r["epoch"] >= 1 for r in read_metrics(metrics)
        ):
            break
        time.sleep(0.01)
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
        [sys.executable, "-m", "incop.cli", "run", "--levels", "1", "--out", str(tmp_path)],
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
