"""What a ticket costs on disk and in inference, per export format (issue 11).

Tickets, trained on Fashion-MNIST (../shared/datasets) with LTH and a short schedule (2
dense epochs, 1 retraining epoch a level, a quarter of the training part: the point is
the files and the speed, not the best accuracy): mlp and lenet5 at about 10% and 2% of
the weights (unstructured), and lenet5 with scope ``channel`` at about 30% of its hidden
units. For each: every format's file size over the dense ``state_dict`` file, and CPU
inference latency at batch 1 and 256 of the dense model, the ticket (same shapes, zeros)
and its ``compact`` model, measured in interleaved repetitions in one process (medians),
with the test accuracy of the ticket and of its compact model.

    python benchmarks/ticket_export.py [--threads N] [--repeats R]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from incop.config import resolve
from incop.engine.experiment import run_experiment
from incop.tools.ticket import FORMATS, export_ticket, load_ticket
from incop.tools.ticket.compact import compact
from incop.workload.data import Batches, load_dataset

ROOT = Path(__file__).resolve().parents[1]
COMMON = {
    "dataset": "fashion-mnist",
    "method": "lth",
    "warmup_epochs": 2,
    "max_epochs": 1,
    "train_fraction": 0.25,
}
#: name -> (model, levels, rate, scope): rate = 1 - target^(1/levels).
TICKETS = {
    "mlp 10%": ("mlp", 3, 1 - 0.10 ** (1 / 3), "global"),
    "mlp 2%": ("mlp", 4, 1 - 0.02 ** (1 / 4), "global"),
    "lenet5 10%": ("lenet5", 3, 1 - 0.10 ** (1 / 3), "global"),
    "lenet5 2%": ("lenet5", 4, 1 - 0.02 ** (1 / 4), "global"),
    "lenet5 channel 30%": ("lenet5", 3, 1 - 0.30 ** (1 / 3), "channel"),
}


def latency(model: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start


def accuracy(model: torch.nn.Module, batches: Batches) -> float:
    with torch.no_grad():
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return right / batches.num_examples


def hidden_units(model: torch.nn.Module) -> int:
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    return sum(m.weight.shape[0] for m in layers[:-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = Path(os.environ.get("INCOP_SHARED_DATA", ROOT.parent / "shared" / "datasets"))
    data = load_dataset("fashion-mnist", data_dir / "FashionMNIST")
    test = Batches(data.test_x, data.test_y, 1000)
    work = Path(tempfile.mkdtemp(prefix="incop-ticket-export-"))
    sizes, speeds = [], []
    for label, (model_name, levels, rate, scope) in TICKETS.items():
        run = work / label.replace(" ", "-").replace("%", "")
        settings = {**COMMON, "model": model_name, "levels": levels, "rate": rate, "scope": scope}
        settings["data_dir"], settings["out"] = str(data_dir / "FashionMNIST"), str(run)
        result = run_experiment(resolve(settings))
        files = {f: export_ticket(run, f, work / f"{run.name}.{f}") for f in FORMATS.names()}
        dense = files["state_dict"].stat().st_size
        sizes.append(
            f"{label:<19} {result.levels[-1].remaining_fraction:>8.2%} "
            + " ".join(f"{files[f].stat().st_size / dense:>11.3f}" for f in FORMATS.names())
            + f" {dense / 1024:>9.0f}"
        )
        ticket, _ = load_ticket(run)
        ticket.eval()
        dense_model = load_ticket(run, level=0)[0].eval()
        small = compact(ticket, torch.zeros(1, 1, 28, 28)).model
        for batch in (1, 256):
            x = torch.randn(batch, 1, 28, 28)
            models = {"dense": dense_model, "ticket": ticket, "compact": small}
            for model in models.values():
                latency(model, x)  # first call allocates
            times = {name: [] for name in models}
            for _ in range(args.repeats):  # interleaved, so load on the machine hits all alike
                for name, model in models.items():
                    times[name].append(latency(model, x))
            ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
            speeds.append(
                f"{label:<19} {batch:>5} {ms['dense']:>9.3f} {ms['ticket']:>9.3f}"
                f" {ms['compact']:>9.3f} {ms['dense'] / ms['compact']:>13.2f}"
                f" {accuracy(ticket, test):>9.2%} {accuracy(small, test):>10.2%}"
                f" {hidden_units(small)}/{hidden_units(ticket)}"
            )
    print(f"file size / dense state_dict file (threads {args.threads}; files in {work})")
    print(f"{'ticket':<19} {'weights':>8} " + " ".join(f"{f:>11}" for f in FORMATS.names())
          + f" {'dense KiB':>9}")  # fmt: skip
    print("\n".join(sizes))
    print(f"\nCPU inference latency, median of {args.repeats} interleaved repeats (ms)")
    print(
        f"{'ticket':<19} {'batch':>5} {'dense':>9} {'ticket':>9} {'compact':>9}"
        f" {'dense/compact':>13} {'test acc':>9} {'compact acc':>10} hidden units left"
    )
    print("\n".join(speeds))


if __name__ == "__main__":
    main()
