"""How much a flow measurement costs next to a training epoch (METHOD.md section 4).

1. lenet5 on Fashion-MNIST: one SGD epoch vs IF and GF on the probe set vs the
   research code's IF (two passes over the whole training set, here run with our
   one-pass IF: a lower bound of its cost, since it also stored the activations).
2. resnet18 on random 1x28x28 input: per-example cost of a training step, IF and
   GF, extrapolated to the default probe size vs a 60k-example epoch.

Run from the repository root: ``PYTHONPATH=src python benchmarks/flow_overhead.py``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from incop.core.optimizers import make_optimizer
from incop.core.training import train_epoch
from incop.methods.flows import gradient_flow, information_flow
from incop.workload.data import Batches, load_dataset
from incop.workload.models import build_model

REPO = Path(__file__).resolve().parents[1]
EPOCH_EXAMPLES = 60_000


def seconds(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def sgd_epoch(model: torch.nn.Module, batches: Batches) -> None:
    train_epoch(model, batches, make_optimizer(model.parameters(), "sgd", lr=0.01, momentum=0.9))


def lenet5_fashion_mnist(args: argparse.Namespace) -> None:
    data = load_dataset("fashion-mnist", args.data_dir)
    torch.manual_seed(args.seed)
    model = build_model("lenet5", 1, 28, 10)
    train = Batches(data.train_x, data.train_y, 64, shuffle=True, seed=args.seed)
    probe = Batches(data.train_x, data.train_y, args.probe_batch_size).sample(
        args.probe_size, args.seed
    )
    whole = Batches(data.train_x, data.train_y, args.probe_batch_size)
    information_flow(model, probe)  # warm-up: first-call allocations
    times = {
        "IF, probe set": seconds(lambda: information_flow(model, probe)),
        "GF, probe set": seconds(lambda: gradient_flow(model, probe)),
        "train epoch": seconds(lambda: sgd_epoch(model, train)),
        "research IF, 2 x train set": seconds(
            lambda: [information_flow(model, whole) for _ in range(2)]
        ),
    }
    epoch = times["train epoch"]
    print(
        f"lenet5 / Fashion-MNIST: {len(data.train_x)} train images, probe {probe.num_examples}"
        f" (batches of {args.probe_batch_size}), {torch.get_num_threads()} threads"
    )
    print(f"{'':<28} {'seconds':>9} {'/ epoch':>9}")
    for what, t in times.items():
        print(f"{what:<28} {t:>9.3f} {t / epoch:>9.2%}")
    print(
        f"IF/epoch {times['IF, probe set'] / epoch:.2%}, GF/epoch"
        f" {times['GF, probe set'] / epoch:.2%} (target <= 5%);"
        f" research-IF/IF {times['research IF, 2 x train set'] / times['IF, probe set']:.0f}x"
        " (target >= 10x)"
    )


def resnet18_random(args: argparse.Namespace) -> None:
    gen = torch.Generator().manual_seed(args.seed)
    n = 64 * args.batches
    x, y = torch.randn(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    torch.manual_seed(args.seed)
    model = build_model("resnet18", 1, 28, 10)
    batches = Batches(x, y, 64)
    warm = Batches(x[:64], y[:64], 64)
    sgd_epoch(model, warm)  # warm-up
    per_example = {
        "train step": seconds(lambda: sgd_epoch(model, batches)) / n,
        "IF": seconds(lambda: information_flow(model, batches)) / n,
        "GF": seconds(lambda: gradient_flow(model, batches)) / n,
    }
    step = per_example["train step"]
    print(f"\nresnet18 / random 1x28x28, {args.batches} batches of 64 ({n} examples)")
    print(f"{'':<12} {'ms/example':>11} {'probe/epoch':>12}")
    for what, t in per_example.items():
        ratio = t * args.probe_size / (step * EPOCH_EXAMPLES)
        shown = "" if what == "train step" else f"{ratio:>12.2%}"
        print(f"{what:<12} {t * 1e3:>11.2f} {shown}")
    print(f"(probe/epoch: {args.probe_size} probe examples vs a {EPOCH_EXAMPLES}-example epoch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("INCOP_DATA_DIR", REPO.parent / "shared/datasets/FashionMNIST"),
        help="Fashion-MNIST folder (default: $INCOP_DATA_DIR or ../shared/datasets/FashionMNIST)",
    )
    parser.add_argument("--probe-size", type=int, default=2048)
    parser.add_argument("--probe-batch-size", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=4, help="resnet18 batches of 64")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lenet5_fashion_mnist(args)
    resnet18_random(args)


if __name__ == "__main__":
    main()
