"""Data-parallel runs: batches sharded over ranks, and `incop run` on 2 gloo ranks (torchrun)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import torchrun, wait_mid_level
from incop.core.training import EpochStats
from incop.core.world import World
from incop.engine.distributed import mask_fingerprint
from incop.tools.cli import _without_nproc, main
from incop.workload.data import Batches


def shards(n, batch_size, ranks, **options):
    x = torch.arange(n).float().unsqueeze(1)
    return [
        Batches(x, torch.arange(n), batch_size, shard=(rank, ranks), **options)
        for rank in range(ranks)
    ]


@given(st.integers(1, 60), st.integers(1, 13), st.integers(1, 4), st.booleans())
def test_ranks_split_every_batch_and_cover_each_example_once(n, batch_size, ranks, shuffle):
    parts = shards(n, batch_size, ranks, shuffle=shuffle, seed=3)
    for part in parts:
        part.set_epoch(5)
    whole = Batches(torch.zeros(n, 1), torch.arange(n), batch_size, shuffle=shuffle, seed=3)
    whole.set_epoch(5)
    seen = sorted(int(i) for part in parts for _, y in part for i in y)
    assert seen == list(range(n))
    # Every single-process batch is split over the ranks in parts differing by at most one.
    pieces = [y.tolist() for part in parts for _, y in part]
    for batch in (y.tolist() for _, y in whole):
        mine = [p for p in pieces if set(p) <= set(batch)]
        assert sorted(i for p in mine for i in p) == sorted(batch)
        assert max(map(len, mine)) - min(map(len, mine)) <= 1
    assert all(len(part) == len(list(part)) for part in parts)


@given(st.integers(1, 60), st.integers(1, 13), st.integers(1, 4))
def test_even_shards_give_every_rank_the_same_number_of_steps(n, batch_size, ranks):
    parts = shards(n, batch_size, ranks, even=True)
    counts = {len(list(part)) for part in parts}
    assert len(counts) == 1
    dropped = n - sum(len(y) for part in parts for _, y in part)
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    assert dropped == sum(size for size in sizes if size < ranks)


def test_a_world_of_one_changes_nothing():
    world = World()
    stats = EpochStats(0.5, 0.25, 8, 1.5)
    assert world.combine(stats) is stats
    assert torch.equal(world.sum(torch.ones(3)), torch.ones(3, dtype=torch.float64))
    world.check_same(torch.ones(2), "anything")  # nothing to compare with


def test_the_mask_fingerprint_tells_masks_with_equal_counts_apart():
    a = {"w": torch.tensor([True, False, True, False])}
    b = {"w": torch.tensor([False, True, False, True])}
    assert not torch.equal(mask_fingerprint(a), mask_fingerprint(b))
    assert torch.equal(mask_fingerprint(a), mask_fingerprint({"w": a["w"].clone()}))


def test_nproc_is_taken_out_of_what_each_rank_runs():
    argv = ["run", "--nproc", "2", "--levels", "1", "--nproc=3", "--out", "x"]
    assert _without_nproc(argv) == ["run", "--levels", "1", "--out", "x"]


def test_bad_nproc_is_refused_before_anything_starts(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--nproc", "0", "--out", str(out)]) == 2
    assert "nproc: 0" in capsys.readouterr().err
    assert not out.exists()


# --- end to end: torchrun, 2 CPU ranks (gloo) ---------------------------------------------------

SETTINGS = ["--method", "incop-gf", "--levels", "3", "--warmup-epochs", "3", "--max-epochs", "4",
            "--eps", "1e-9", "--probe-size", "256", "--batch-size", "32"]  # fmt: skip


def incop(*args):
    # One thread per rank: two ranks on two cores, as the README advises.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "incop", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # torchrun and its ranks: one group, killed together
    )


def masks(folder, level):
    return torch.load(folder / "levels" / str(level) / "checkpoint.pt")["masks"]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    run = incop("run", *SETTINGS, "--nproc", "2", "--out", str(root / "ddp"))
    assert run.wait(timeout=600) == 0, run.stderr.read()
    return root


@pytest.mark.slow
def test_two_ranks_find_the_ticket_one_process_finds(two_ranks, tmp_path):
    assert [p.name for p in two_ranks.iterdir()] == ["ddp"]  # one folder, by rank 0
    single = tmp_path / "single"
    assert main(["run", *SETTINGS, "--threads", "1", "--out", str(single)]) == 0
    a = json.loads((two_ranks / "ddp" / "summary.json").read_text())
    b = json.loads((single / "summary.json").read_text())
    assert [lv["remaining_fraction"] for lv in a["levels"]] == [
        lv["remaining_fraction"] for lv in b["levels"]
    ]
    ma, mb = masks(two_ranks / "ddp", 1), masks(single, 1)
    differ = sum(int((ma[k] != mb[k]).sum()) for k in ma) / sum(m.numel() for m in ma.values())
    assert differ < 0.01
    for x, y in zip(a["levels"], b["levels"], strict=True):
        assert abs(x["val_accuracy"] - y["val_accuracy"]) <= 0.02
        assert abs(x["test_accuracy"] - y["test_accuracy"]) <= 0.02


@pytest.mark.slow
def test_two_ranks_killed_mid_level_resume_under_torchrun_exactly(two_ranks, tmp_path):
    killed = tmp_path / "killed"
    victim = incop("run", *SETTINGS, "--nproc", "2", "--out", str(killed))
    wait_mid_level(killed)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it was killed"

    resumed = incop("run", "--resume", str(killed), "--nproc", "2")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()

    def decided(folder):
        summary = json.loads((folder / "summary.json").read_text())
        return [
            (lv["epochs"], lv["remaining_fraction"], lv["val_accuracy"], lv["stop_reason"])
            for lv in summary["levels"]
        ]

    assert decided(killed) == decided(two_ranks / "ddp")
    whole = masks(two_ranks / "ddp", 3)
    assert all(torch.equal(whole[k], v) for k, v in masks(killed, 3).items())


@pytest.mark.slow
def test_a_comparison_on_two_ranks_matches_one_process(tmp_path):
    plan = ["compare", "--methods", "sap,incop-gf", "--seeds", "0", "--levels", "2",
            "--warmup-epochs", "2", "--max-epochs", "3", "--probe-size", "256",
            "--batch-size", "32"]  # fmt: skip
    ranks = incop(*plan, "--nproc", "2", "--out", str(tmp_path / "ddp"))
    assert ranks.wait(timeout=600) == 0, ranks.stderr.read()
    assert main([*plan, "--threads", "1", "--out", str(tmp_path / "one")]) == 0
    a = json.loads((tmp_path / "ddp" / "comparison.json").read_text())
    b = json.loads((tmp_path / "one" / "comparison.json").read_text())
    for method in ("sap", "incop-gf"):
        x, y = a["methods"][method], b["methods"][method]
        assert [lv["remaining_fraction"]["mean"] for lv in x["levels"]] == [
            lv["remaining_fraction"]["mean"] for lv in y["levels"]
        ]
        assert (
            abs(x["totals"]["final_accuracy"]["mean"] - y["totals"]["final_accuracy"]["mean"])
            <= 0.02
        )
    assert (tmp_path / "ddp" / "report.md").exists()


@pytest.mark.slow
def test_prune_under_torchrun_with_a_distributed_sampler(tmp_path):
    torchrun("ddp_prune_script.py", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "masks-0.pt", "masks-1.pt", "run", "val-0.pt", "val-1.pt"
    ]  # fmt: skip
    assert torch.equal(torch.load(tmp_path / "masks-0.pt"), torch.load(tmp_path / "masks-1.pt"))
    # Each rank validated on its half; the summed statistics are the same on both.
    assert torch.load(tmp_path / "val-0.pt") == torch.load(tmp_path / "val-1.pt")
    assert (tmp_path / "run" / "summary.json").exists()
