"""Training throughput (issue 12): incop's masked epoch against a plain PyTorch loop, against the
FLOP lower bound, and data parallel on 2 CPU ranks against one process.

1. **Masked epoch vs plain loop.** For ``mlp``, ``lenet5`` and ``resnet20`` on Fashion-MNIST
   images (``../shared/datasets``; random images of the same shape without them): one epoch of
   ``incop.core.training.train_epoch`` with masks at 10% of the weights (global magnitude), the
   model as incop trains it (``channels_last`` for conv models), against a hand-written loop
   (zero_grad, forward, cross-entropy, backward, step) on a copy of the same model as built,
   same batches, batch size 64, SGD with momentum 0.9 and weight decay 5e-4. The two run
   interleaved, ``--reps`` times each, in this process; printed: median seconds, the median of
   the per-repetition ratios and their range.
2. **FLOP bound.** FLOPs of one training step (``torch.utils.flop_counter``, forward and
   backward) times the steps of the epoch, over this machine's float32 matmul rate (2048 x
   2048, the same threads, best of 3): the time the epoch would take if every operation ran at
   matmul speed. The rate is measured again after every repetition, and each repetition's epoch
   is divided by the bound at its own rate, so that a load on the shared machine slows both
   sides alike; printed: the median of these ratios and their range.
3. **Data parallel.** ``incop run`` (lenet5, lth, 1 level) on 2 gloo ranks of 1 thread
   (``--nproc 2``) against one process of 1 thread and one of 2 threads: the training
   seconds ``summary.json`` records, interleaved.

An "epoch" is ``--examples`` images (default 8,192; resnet20: a quarter of it), so that the
repetitions fit in minutes on 2 cores. Threads: ``--threads`` (default 1, the README's advice
for a shared machine).

``--compile`` also times incop's epoch with ``compile: true`` (after one epoch of compilation).

    python benchmarks/throughput.py [--reps 5] [--threads 1] [--examples 8192] [--skip-ddp]
                                    [--compile]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from incop.core.masks import MaskEnforcer, full_masks, prunable_parameters
from incop.core.training import make_optimizer, train_epoch
from incop.core.world import World
from incop.engine.fastpath import training_module
from incop.methods.pruners import MagnitudePruner
from incop.workload.data import Batches, load_dataset
from incop.workload.models import build_model

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
MODELS = {"mlp": 1.0, "lenet5": 1.0, "resnet20": 0.25}  # share of --examples per epoch


def images(examples: int) -> tuple[torch.Tensor, torch.Tensor]:
    data_dir = Path(os.environ.get("INCOP_SHARED_DATA", ROOT.parent / "shared" / "datasets"))
    folder = data_dir / "FashionMNIST"
    if folder.exists():
        data = load_dataset("fashion-mnist", str(folder))
        return data.train_x[:examples], data.train_y[:examples]
    print(f"({folder} not found: random images of Fashion-MNIST's shape)")
    g = torch.Generator().manual_seed(0)
    return torch.randn(examples, 1, 28, 28, generator=g), torch.randint(0, 10, (examples,))


SGD = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}


def plain_epoch(model, batches, optimizer) -> None:
    model.train()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def matmul_rate(size: int = 2048, reps: int = 3) -> float:
    """Float32 FLOP/s of a square matmul, the best of ``reps``."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(reps))
    return 2 * size**3 / best


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def masked_epoch(model: torch.nn.Module, batches: Batches, *, compile: bool = False):
    """incop's epoch on ``model`` (trained as incop trains it) with masks at 10% of the
    weights (global magnitude); returns the epoch to run and the module that trains."""
    trained = training_module(model, channels_last=None, compile=compile, world=World())
    params = prunable_parameters(model)
    masks = full_masks(params)
    weights = {n: p.detach() for n, p in params.items()}
    masks.update(MagnitudePruner(target=0.1)(weights, masks, torch.Generator()))
    enforcer = MaskEnforcer(params, masks)
    optimizer = make_optimizer(model.parameters(), "sgd", **SGD)
    enforcer.after_step(optimizer)
    return lambda: train_epoch(trained, batches, optimizer, enforcer=enforcer), trained


def compare_loops(name: str, x, y, reps: int, compiled: bool) -> dict:
    torch.manual_seed(0)
    built = build_model(name, 1, 28, 10)
    plain = copy.deepcopy(built)
    batches = Batches(x, y, BATCH, shuffle=True, seed=0)
    optimizer = torch.optim.SGD(plain.parameters(), **SGD)  # as a user writes it
    runs = {"plain": lambda: plain_epoch(plain, batches, optimizer)}
    if compiled:
        runs["compiled"], _ = masked_epoch(copy.deepcopy(built), batches, compile=True)
    runs["incop"], incop = masked_epoch(built, batches)
    for run in runs.values():  # first-call allocations, kernel choices, compilation
        run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    rates = []  # measured beside every repetition, so that the bound sees the same machine load
    for rep in range(reps):
        for key in runs if rep % 2 == 0 else reversed(runs):
            batches.set_epoch(rep)
            times[key].append(_seconds(runs[key]))
        rates.append(matmul_rate())
    ratios = [a / b for a, b in zip(times["incop"], times["plain"], strict=True)]
    flops = step_flops(incop, x[:BATCH], y[:BATCH]) * len(batches)
    above = [t * r / flops for t, r in zip(times["incop"], rates, strict=True)]
    return {
        "incop_s": statistics.median(times["incop"]),
        "plain_s": statistics.median(times["plain"]),
        "ratio": statistics.median(ratios),
        "ratio_range": (min(ratios), max(ratios)),
        "bound_s": flops / statistics.median(rates),
        "above_bound": statistics.median(above),
        "above_range": (min(above), max(above)),
        "examples": len(x),
        "compiled": statistics.median(
            [c / i for c, i in zip(times["compiled"], times["incop"], strict=True)]
        )
        if compiled
        else None,
    }


def ddp_seconds(reps: int) -> dict[str, list[float]]:
    data_dir = Path(os.environ.get("INCOP_SHARED_DATA", ROOT.parent / "shared" / "datasets"))
    base = ["run", "--method", "lth", "--levels", "1", "--warmup-epochs", "2", "--max-epochs",
            "1", "--threads", "1"]  # fmt: skip
    if (data_dir / "FashionMNIST").exists():
        base += ["--model", "lenet5", "--dataset", "fashion-mnist", "--train-fraction", "0.2",
                 "--data-dir", str(data_dir / "FashionMNIST")]  # fmt: skip
    variants = {
        "1 process, 1 thread": [],
        "1 process, 2 threads": ["--threads", "2"],
        "2 ranks (gloo), 1 thread each": ["--nproc", "2"],
    }
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            for key, extra in variants.items():
                out = Path(tmp) / f"{rep}-{len(seconds[key])}-{key[:1]}{len(extra)}"
                command = [sys.executable, "-m", "incop", *base, *extra, "--out", str(out)]
                subprocess.run(command, check=True, capture_output=True)
                summary = json.loads((out / "summary.json").read_text())
                seconds[key].append(sum(lv["train_seconds"] for lv in summary["levels"]))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--skip-ddp", action="store_true")
    parser.add_argument(
        "--compile", action="store_true", help="also time incop's epoch under torch.compile"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = images(args.examples)
    print(f"threads {args.threads}")
    print(f"\n{'model':<9} {'examples':>8} {'incop s':>8} {'plain s':>8} {'incop/plain':>11}"
          f" {'range':>13} {'FLOP bound s':>12} {'incop/bound':>11} {'range':>9}")  # fmt: skip
    for name, share in MODELS.items():
        n = int(args.examples * share)
        r = compare_loops(name, x[:n], y[:n], args.reps, args.compile)
        low, high = r["ratio_range"]
        above_low, above_high = r["above_range"]
        print(
            f"{name:<9} {r['examples']:>8} {r['incop_s']:>8.3f} {r['plain_s']:>8.3f}"
            f" {r['ratio']:>11.3f} {f'{low:.3f}-{high:.3f}':>13} {r['bound_s']:>12.3f}"
            f" {r['above_bound']:>11.2f} {f'{above_low:.1f}-{above_high:.1f}':>9}"
            + (f"   compiled/incop {r['compiled']:.2f}" if args.compile else "")
        )
    if args.skip_ddp:
        return
    seconds = ddp_seconds(max(2, args.reps // 2))
    one = statistics.median(seconds["1 process, 1 thread"])
    print("\nincop run, lenet5, lth, 1 level (2 + 1 epochs): training seconds, median")
    for key, values in seconds.items():
        median = statistics.median(values)
        print(f"  {key:<31} {median:>7.2f} s  {median / one:.2f}x")


if __name__ == "__main__":
    main()
