"""Training throughput (issues 12 and 28): incop's masked epoch against the plain PyTorch loop a
user would write, against the FLOP lower bound, and data parallel on 2 CPU ranks against one
process.

1. **Masked epoch vs plain loops.** For ``mlp``, ``lenet5`` and ``resnet20`` on Fashion-MNIST
   (``../shared/datasets``, held as incop holds it: uint8 pixels normalised per batch; random
   images of the same shape without the files): one epoch of
   ``incop.core.training.train_epoch`` with masks at 10% of the weights (global magnitude),
   the model as incop trains it, against plain loops on copies of the same model with the
   same masks and the same batches (64): zero_grad, forward, cross-entropy, backward, the
   gradients masked in one foreach multiply, step; SGD with momentum 0.9 and weight decay
   5e-4. The **fair** loop is what a user would write for speed in about 20 lines: the same
   memory layout as incop (``channels_last`` for conv models) and the same fused SGD. The
   handicapped loops, printed beside it and labelled, each leave one of those out (``nchw``:
   NCHW; ``unfused``: torch's default per-parameter SGD; both), to show where speed comes
   from. All run interleaved (the order reversed every other repetition), ``--reps`` times
   each, in this process, timed in CPU seconds (``time.process_time``: another process's load
   on the shared machine does not count); printed: the median of the per-repetition ratios
   incop / loop and their range.
2. **FLOP bound.** FLOPs of one training step (``torch.utils.flop_counter``, forward and
   backward) times the steps of the epoch, over this machine's matmul rate at the run's
   precision (2048 x 2048, best of 3): the time the epoch would take if every operation ran
   at matmul speed. The float32 and bfloat16 rates and the copy bandwidth are measured again
   after every repetition, and each repetition's epoch is divided by the bound at its own
   rate, so that a load on the shared machine slows both sides alike. The layers that are
   memory-bound (their bytes at copy speed take longer than their FLOPs at matmul speed: the
   elementwise ones the FLOP bound counts as free) are named, with the share of the epoch
   their bytes alone take.
3. **Data parallel.** ``incop run`` (lenet5, lth, 1 level) on 2 gloo ranks of 1 thread
   (``--nproc 2``) against one process of 1 thread and one of 2 threads: the training
   seconds ``summary.json`` records, interleaved.

An "epoch" is ``--examples`` images (default 8,192; resnet20: a quarter of it), so that the
repetitions fit in minutes on 2 cores. Threads: ``--threads`` (default 1, the README's advice
for a shared machine). ``--precision bf16``: both sides under bfloat16 autocast, the bound at
the bfloat16 rate.

``--compile`` also times incop's epoch with ``compile: true`` (after one epoch of compilation).

    python benchmarks/throughput.py [--reps 5] [--threads 1] [--examples 8192] [--skip-ddp]
                                    [--precision fp32|bf16] [--models mlp,lenet5,resnet20]
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
from incop.core.optimizers import make_optimizer
from incop.core.precision import Precision
from incop.core.training import train_epoch
from incop.core.world import World
from incop.engine.fastpath import channels_last_applies, training_module
from incop.methods.pruners import MagnitudePruner
from incop.workload.data import Batches, Normalize, load_dataset
from incop.workload.models import build_model

ROOT = Path(__file__).resolve().parents[1]
BATCH = 64
MODELS = {"mlp": 1.0, "lenet5": 1.0, "resnet20": 0.25}  # share of --examples per epoch


def images(examples: int) -> tuple[torch.Tensor, torch.Tensor, Normalize | None]:
    """Fashion-MNIST's uint8 pixels and labels with their normalisation, as a run holds them
    (random float images of the same shape without the files)."""
    data_dir = Path(os.environ.get("INCOP_SHARED_DATA", ROOT.parent / "shared" / "datasets"))
    folder = data_dir / "FashionMNIST"
    if folder.exists():
        data = load_dataset("fashion-mnist", str(folder))
        return data.train_pixels[:examples], data.train_y[:examples], data.normalize
    print(f"({folder} not found: random images of Fashion-MNIST's shape)")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(examples, 1, 28, 28, generator=g)
    return x, torch.randint(0, 10, (examples,)), None


SGD = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
#: The plain loops: (memory layout, optimiser). ``fair`` is what a user would write for speed;
#: the others each leave out one of the two things incop does for it.
PLAIN = {
    "fair": ("as incop", "fused"),
    "nchw": ("NCHW", "fused"),
    "unfused": ("as incop", "default"),
    "nchw+unfused": ("NCHW", "default"),
}


def plain_epoch(model, batches, optimizer, masked, autocast) -> None:
    """The loop a user writes to retrain a pruned network: forward, cross-entropy, backward,
    the gradients masked in one foreach multiply (pruned weights stay zero), step."""
    grads_masks = [m for _, m in masked]
    model.train()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        torch._foreach_mul_([p.grad for p, _ in masked], grads_masks)
        optimizer.step()


def matmul_rate(dtype: torch.dtype, size: int = 2048, reps: int = 3) -> float:
    """FLOP/s of a square matmul in ``dtype``, the best of ``reps``."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(reps))
    return 2 * size**3 / best


def copy_bandwidth(megabytes: int = 64, reps: int = 3) -> float:
    """Bytes/s read plus written by a large float32 copy, the best of ``reps``."""
    src = torch.randn(megabytes * 2**18)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_seconds(lambda: dst.copy_(src)) for _ in range(reps))
    return 2 * src.numel() * 4 / best


def step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def memory_bound_layers(model, x, y, rate: float, bandwidth: float) -> tuple[str, float]:
    """The layers of a training step that are memory-bound on this machine, by type with
    their count, and the seconds their bytes take at ``bandwidth`` (bytes/s). A layer is
    memory-bound where moving its bytes (its input, output and weights, each and its gradient
    read or written once) takes longer than its FLOPs at ``rate`` (FLOP/s): the elementwise
    layers (ReLU, pooling, BatchNorm), which the FLOP bound counts as free. Modules only:
    a functional call inside a block (resnet's ``F.relu``) is not seen."""
    moved: dict[str, tuple[str, int]] = {}
    hooks = []
    for name, module in model.named_modules():
        if next(module.children(), None) is None and name:

            def record(m, inputs, output, name=name):
                if (
                    torch.is_tensor(output)
                    and inputs
                    and torch.is_tensor(inputs[0])
                    and (
                        output.untyped_storage().data_ptr()
                        == inputs[0].untyped_storage().data_ptr()
                    )
                ):
                    return  # a view (Flatten): nothing moves
                size = sum(t.numel() * t.element_size() for t in (*inputs, output)
                           if torch.is_tensor(t))  # fmt: skip
                size += sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
                moved[name] = (type(m).__name__, 2 * size)

            hooks.append(module.register_forward_hook(record))
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), y).backward()
    for hook in hooks:
        hook.remove()
    model.zero_grad(set_to_none=True)
    flops = counter.get_flop_counts()
    prefix = model.__class__.__name__
    bound: dict[str, int] = {}
    seconds = 0.0
    for name, (kind, size) in moved.items():
        work = sum(flops.get(f"{prefix}.{name}", {}).values())
        if size / bandwidth > work / rate:
            bound[kind] = bound.get(kind, 0) + 1
            seconds += size / bandwidth
    return ", ".join(f"{kind} x{count}" for kind, count in bound.items()) or "none", seconds


def _seconds(work) -> float:
    """CPU seconds of ``work`` (this process's): on a shared machine, time another process
    takes from this one does not count, as wall time would have it."""
    start = time.process_time()
    work()
    return time.process_time() - start


def masked_epoch(model: torch.nn.Module, batches: Batches, precision: Precision, *,
                 compile: bool = False):  # fmt: skip
    """incop's epoch on ``model`` (trained as incop trains it) with masks at 10% of the
    weights (global magnitude); returns the epoch to run, the module that trains, and the
    masks."""
    trained = training_module(model, channels_last=None, compile=compile, world=World())
    params = prunable_parameters(model)
    masks = full_masks(params)
    weights = {n: p.detach() for n, p in params.items()}
    masks.update(MagnitudePruner(target=0.1)(weights, masks, torch.Generator()))
    enforcer = MaskEnforcer(params, masks)
    optimizer = make_optimizer(model.parameters(), "sgd", **SGD)
    enforcer.after_step(optimizer)

    def epoch():
        return train_epoch(trained, batches, optimizer, enforcer=enforcer, precision=precision)

    return epoch, trained, masks


def plain_run(built, masks, layout: str, optimiser: str, batches, autocast):
    """A plain loop's epoch on a copy of ``built``, the same masks applied."""
    model = copy.deepcopy(built)
    if layout == "as incop" and channels_last_applies(model, None):
        model.to(memory_format=torch.channels_last)
    fused = {"fused": True} if optimiser == "fused" else {}
    optimizer = torch.optim.SGD(model.parameters(), **SGD, **fused)
    masked = [(model.get_parameter(n), m.to(torch.float32)) for n, m in masks.items()]
    with torch.no_grad():
        for p, m in masked:
            p.mul_(m)
    return lambda: plain_epoch(model, batches, optimizer, masked, autocast)


def compare_loops(name: str, data, reps: int, compiled: bool, precision: str) -> dict:
    x, y, normalize = data
    torch.manual_seed(0)
    built = build_model(name, 1, 28, 10)
    reference = copy.deepcopy(built)
    batches = Batches(x, y, BATCH, shuffle=True, seed=0, normalize=normalize)
    run_precision = Precision(precision, torch.device("cpu"))
    runs = {}
    runs["incop"], incop, masks = masked_epoch(built, batches, run_precision)
    for key, (layout, optimiser) in PLAIN.items():
        runs[key] = plain_run(reference, masks, layout, optimiser, batches,
                              run_precision.autocast)  # fmt: skip
    if compiled:
        runs["compiled"], _, _ = masked_epoch(copy.deepcopy(reference), batches, run_precision,
                                              compile=True)  # fmt: skip
    for run in runs.values():  # first-call allocations, kernel choices, compilation
        run()
    times: dict[str, list[float]] = {k: [] for k in runs}
    # Measured beside every repetition, so that the bound sees the same machine load.
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    bandwidths = []
    for rep in range(reps):
        for key in runs if rep % 2 == 0 else reversed(runs):
            batches.set_epoch(rep)
            times[key].append(_seconds(runs[key]))
        rates["fp32"].append(matmul_rate(torch.float32))
        rates["bf16"].append(matmul_rate(torch.bfloat16))
        bandwidths.append(copy_bandwidth())

    def ratio(key: str, base: str) -> tuple[float, float, float]:
        values = [a / b for a, b in zip(times[key], times[base], strict=True)]
        return statistics.median(values), min(values), max(values)

    first_x, first_y = next(iter(batches))
    flops = step_flops(incop, first_x, first_y) * len(batches)
    above = [t * r / flops for t, r in zip(times["incop"], rates[precision], strict=True)]
    bound_layers, memory_s = memory_bound_layers(incop, first_x, first_y,
                                                 statistics.median(rates[precision]),
                                                 statistics.median(bandwidths))  # fmt: skip
    return {
        "seconds": {key: statistics.median(values) for key, values in times.items()},
        "ratios": {key: ratio("incop", key) for key in PLAIN},
        "bound_s": flops / statistics.median(rates[precision]),
        "above_bound": statistics.median(above),
        "above_range": (min(above), max(above)),
        "rates": {k: statistics.median(v) for k, v in rates.items()},
        "bandwidth": statistics.median(bandwidths),
        "memory_bound": bound_layers,
        # Their bytes at copy speed, over the steps of the epoch, as a share of incop's epoch.
        "memory_share": memory_s * len(batches) / statistics.median(times["incop"]),
        "examples": len(x),
        "compiled": ratio("compiled", "incop")[0] if compiled else None,
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
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--skip-ddp", action="store_true")
    parser.add_argument(
        "--compile", action="store_true", help="also time incop's epoch under torch.compile"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = images(args.examples)
    print(f"threads {args.threads}, precision {args.precision}, {args.reps} interleaved"
          " repetitions; CPU seconds; medians, (range) of the per-repetition ratios")  # fmt: skip
    print("\n| model | examples | incop s | fair s | incop/fair | incop/nchw | incop/unfused"
          " | incop/nchw+unfused | FLOP bound s | incop/bound |")  # fmt: skip
    print("| --- |" + " --- |" * 9)
    notes = []
    for name in args.models.split(","):
        n = int(args.examples * MODELS[name])
        r = compare_loops(name, tuple(t[:n] if torch.is_tensor(t) else t for t in data),
                          args.reps, args.compile, args.precision)  # fmt: skip
        cells = [f"{m:.3f} ({lo:.3f}-{hi:.3f})" for m, lo, hi in r["ratios"].values()]
        low, high = r["above_range"]
        print(
            f"| {name} | {r['examples']} | {r['seconds']['incop']:.3f} | {r['seconds']['fair']:.3f}"
            f" | {' | '.join(cells)} | {r['bound_s']:.3f} | {r['above_bound']:.2f}"
            f" ({low:.1f}-{high:.1f}) |"
        )
        rates = ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in r["rates"].items())
        notes.append(
            f"{name}: matmul {rates}; copy {r['bandwidth'] / 1e9:.1f} GB/s; memory-bound"
            f" layers: {r['memory_bound']} (their bytes at copy speed:"
            f" {r['memory_share']:.1%} of incop's epoch)"
            + (f"; compiled/incop {r['compiled']:.2f}" if args.compile else "")
        )
    print("\n" + "\n".join(notes))
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
