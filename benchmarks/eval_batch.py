"""Evaluation batch size (issue 28): how fast each built-in model evaluates at each batch size
on this CPU, the measurement ``eval_batch_size: auto`` was chosen from.

For each model, ``incop.core.training.evaluate`` over ``--examples`` random inputs of its
dataset's shape (Fashion-MNIST's 1x28x28; ``--cifar``: 3x32x32), the model as incop trains it
(``channels_last`` for conv nets), at every batch size of ``--sizes``. The sizes run
interleaved, ``--reps`` times, in this process, timed in CPU seconds; printed: the median
examples per second of each size, and each size's median time relative to the fastest size's
(1.00 = the fastest).

    python benchmarks/eval_batch.py [--reps 5] [--threads 1] [--examples 4096]
                                    [--models mlp,lenet5,resnet20,vgg11] [--cifar]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from incop.core.training import evaluate
from incop.core.world import World
from incop.engine.fastpath import training_module
from incop.workload.data import Batches
from incop.workload.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--models", default="mlp,lenet5,resnet20,vgg11")
    parser.add_argument("--sizes", default="64,128,256,512,1000")
    parser.add_argument("--cifar", action="store_true", help="3x32x32 inputs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    channels, size = (3, 32) if args.cifar else (1, 28)
    sizes = [int(s) for s in args.sizes.split(",")]
    x = torch.randn(args.examples, channels, size, size, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (args.examples,))
    print(f"threads {args.threads}, {args.examples} examples of {channels}x{size}x{size},"
          f" {args.reps} interleaved repetitions, CPU seconds")  # fmt: skip
    print("| model | " + " | ".join(f"batch {s}" for s in sizes) + " |")
    print("| --- |" + " --- |" * len(sizes))
    for name in args.models.split(","):
        model = build_model(name, channels, size, 10)
        net = training_module(model, channels_last=None, compile=False, world=World())
        batches = {s: Batches(x, y, s) for s in sizes}
        evaluate(net, batches[sizes[0]])  # warm-up: first-call costs do not count
        times: dict[int, list[float]] = {s: [] for s in sizes}
        for _ in range(args.reps):
            for s in sizes:
                start = time.process_time()  # CPU time: another process's load does not count
                evaluate(net, batches[s])
                times[s].append(time.process_time() - start)
        medians = {s: statistics.median(t) for s, t in times.items()}
        best = min(medians.values())
        cells = [f"{args.examples / medians[s]:,.0f}/s ({medians[s] / best:.2f})" for s in sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
