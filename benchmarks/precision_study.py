"""bf16 against fp32 on CPU (issue 28): accuracy of the dense network and of an IMP ticket, and
the training step's time, for lenet5 and resnet20 on Fashion-MNIST.

Per model, precision (``fp32``, ``bf16``: autocast for the forward pass and loss, weights and
optimiser in fp32) and seed (0, 1, 2): one ``incop run`` with ``lth`` (fixed epochs, so both
precisions do the same work): a dense warm-up of ``WARMUP`` epochs (level 0, the best
validation epoch kept) and ``LEVELS`` levels of ``EPOCHS`` epochs, 20% of the weights pruned
per level. lenet5 trains on the full training split less its validation tenth; resnet20 on 10%
of it with a 5% validation split, to fit this 2-core machine. One thread per run. Printed per
model and precision: validation and test accuracy of the dense network and of the last level
(mean ± std over the seeds), and the step time: incop's training epoch of ``--step-examples``
images in each precision, interleaved ``--reps`` times in this process, CPU seconds, median,
and the median bf16/fp32 ratio of the repetitions. Nothing here chooses on the test split.
Resumable: a finished run is read, a started one resumed.

    python benchmarks/precision_study.py --models lenet5 &     # a part
    python benchmarks/precision_study.py --models resnet20 &
    python benchmarks/precision_study.py --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from incop.config import resolve
from incop.core.optimizers import make_optimizer
from incop.core.precision import Precision
from incop.core.training import train_epoch
from incop.core.world import World
from incop.engine.experiment import run_experiment
from incop.engine.fastpath import training_module
from incop.workload.data import Batches, load_dataset
from incop.workload.models import build_model

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")
SEEDS = (0, 1, 2)
WARMUP, LEVELS, EPOCHS = 8, 3, 3
SHARED = {"dataset": "fashion-mnist", "method": "lth", "threads": 1, "warmup_epochs": WARMUP,
          "levels": LEVELS, "max_epochs": EPOCHS}  # fmt: skip
MODELS = {"lenet5": {}, "resnet20": {"train_fraction": 0.1, "val_fraction": 0.05}}


def run(folder: Path, settings: dict) -> dict:
    """The finished run in ``folder`` (trained, or resumed, here if need be): its summary."""
    if not (folder / "summary.json").is_file():
        mode = "resume" if (folder / "config.yaml").is_file() else "new"
        run_experiment(resolve({**settings, "out": str(folder)}), mode=mode)
    return json.loads((folder / "summary.json").read_text())


def step_times(model_name: str, examples: int, reps: int) -> dict[str, list[float]]:
    """CPU seconds of one training epoch of ``examples`` Fashion-MNIST images per precision,
    the precisions interleaved (order reversed every other repetition)."""
    data = load_dataset("fashion-mnist", os.environ.get("INCOP_DATA_DIR"))
    batches = Batches(data.train_pixels[:examples], data.train_y[:examples], 64, shuffle=True,
                      normalize=data.normalize)  # fmt: skip
    epochs = {}
    for name in PRECISIONS:
        torch.manual_seed(0)
        model = build_model(model_name, 1, 28, 10)
        trained = training_module(model, channels_last=None, compile=False, world=World())
        optimizer = make_optimizer(model.parameters(), "sgd", lr=0.01, momentum=0.9)
        precision = Precision(name, torch.device("cpu"))

        def epoch(trained=trained, optimizer=optimizer, precision=precision):
            train_epoch(trained, batches, optimizer, precision=precision)

        epoch()  # first-call costs
        epochs[name] = epoch
    times: dict[str, list[float]] = {name: [] for name in PRECISIONS}
    for rep in range(reps):
        for name in PRECISIONS if rep % 2 == 0 else reversed(PRECISIONS):
            start = time.process_time()
            epochs[name]()
            times[name].append(time.process_time() - start)
    return times


def cell(values: list[float]) -> str:
    mean = statistics.mean(values) * 100
    spread = statistics.stdev(values) * 100 if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {spread:.2f}"


def report(out: Path, models: list[str], step_examples: int, reps: int) -> None:
    print(f"lth, {WARMUP}-epoch dense warm-up then {LEVELS} levels of {EPOCHS} epochs"
          f" (20% per level); mean ± std over seeds {', '.join(map(str, SEEDS))}")  # fmt: skip
    print("| model | precision | seeds | dense val % | dense test % | ticket remaining %"
          " | ticket val % | ticket test % | step ms | bf16/fp32 |")  # fmt: skip
    print("| --- |" + " --- |" * 9)
    for model in models:
        times = step_times(model, step_examples, reps)
        steps = -(-step_examples // 64)
        ratios = [b / f for b, f in zip(times["bf16"], times["fp32"], strict=True)]
        for precision in PRECISIONS:
            summaries = [
                json.loads(path.read_text())
                for seed in SEEDS
                if (path := out / model / precision / f"seed-{seed}" / "summary.json").is_file()
            ]
            if not summaries:
                continue
            dense = [s["levels"][0] for s in summaries]
            last = [s["levels"][-1] for s in summaries]
            ms = statistics.median(times[precision]) / steps * 1000
            ratio = f"{statistics.median(ratios):.2f}" if precision == "bf16" else "-"
            print(
                f"| {model} | {precision} | {len(summaries)}"
                f" | {cell([lv['val_accuracy'] for lv in dense])}"
                f" | {cell([lv['test_accuracy'] for lv in dense])}"
                f" | {statistics.mean(lv['remaining_fraction'] for lv in last) * 100:.1f}"
                f" | {cell([lv['val_accuracy'] for lv in last])}"
                f" | {cell([lv['test_accuracy'] for lv in last])}"
                f" | {ms:.1f} | {ratio} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default=str(ROOT / "runs" / "precision"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--step-examples", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("INCOP_DATA_DIR", str(ROOT.parent / "shared" / "datasets"))
    torch.set_num_threads(1)
    out, models = Path(args.out), args.models.split(",")
    if not args.report_only:
        for model in models:
            for seed in SEEDS:
                for precision in PRECISIONS:
                    settings = {**SHARED, **MODELS[model], "model": model, "seed": seed,
                                "precision": precision}  # fmt: skip
                    run(out / model / precision / f"seed-{seed}", settings)
    report(out, models, args.step_examples, args.reps)


if __name__ == "__main__":
    main()
