"""How well does the pruning limit predict how far one-shot magnitude pruning can go?

For ``mlp`` and ``lenet5`` on Fashion-MNIST (``../shared/datasets``), 3 seeds: LOMP (dense
training with the l1 term 5e-5, weight decay 0, SGD 0.01, momentum 0.9, batch 128, 30 epochs;
theta* the best validation epoch), then the pruning limit of theta* on 8192 training examples
(128 Lanczos steps, 1 probe) in both density modes, and the actual one-shot threshold on the
VALIDATION split (the largest removed fraction whose validation accuracy is at least the
dense one's, on a grid of ``--grid`` fractions; test accuracy reported apart). Then one IMP run
on the mlp, seed 0 (``sap``, 40 levels of 1 epoch: SAP prunes a shrinking share each level;
``lth``, 15 levels of 1 epoch at 20% a level) aiming at ``--target-remaining limit`` beside the
same run at a fixed target (0.1), to see what aiming at the limit gives.

    python benchmarks/pruning_limit.py [--models mlp,lenet5] [--seeds 0,1,2] [--epochs 30]
                                       [--grid 200] [--out runs/pruning-limit] [--resume]

Each part is saved as it finishes (``--resume`` skips those done), so parts can run in the
background, one model per process with 1 thread each. Prints the table and writes
``results.json`` in ``--out``.
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
from incop.engine.experiment import run_experiment
from incop.methods.limit import crossing, official_width
from incop.tools.limit import LimitOptions, measure_limit

ROOT = Path(__file__).resolve().parents[1]


def lomp_part(model: str, seed: int, epochs: int, grid: int, out: Path, data: str) -> dict:
    run = out / f"lomp-{model}-seed-{seed}"
    done = out / f"lomp-{model}-seed-{seed}.json"
    if done.exists():
        return json.loads(done.read_text())
    config = resolve({"method": "lomp", "model": model, "dataset": "fashion-mnist",
                      "data_dir": data, "warmup_epochs": epochs, "batch_size": 128, "lr": 0.01,
                      "seed": seed, "threads": 1, "out": str(run)})  # fmt: skip
    started = time.perf_counter()
    result = run_experiment(config, mode="overwrite" if run.exists() else "new")
    train_seconds = time.perf_counter() - started
    summary = measure_limit(run, LimitOptions(seed=seed, actual=True, grid=grid),
                            out=out / f"limit-{model}-seed-{seed}")  # fmt: skip
    # The official mode from the same Ritz nodes (only G differs), at the same grid of pi.
    theta = torch.tensor(summary["ritz_values"], dtype=torch.float64)
    tau = torch.tensor(summary["ritz_weights"], dtype=torch.float64)
    csv = (out / f"limit-{model}-seed-{seed}" / "limit.csv").read_text().splitlines()[1:]
    fractions = torch.tensor([float(r.split(",")[0]) for r in csv], dtype=torch.float64)
    radii = torch.tensor([float(r.split(",")[1]) for r in csv], dtype=torch.float64)
    official = official_width(radii, summary["eps"], theta, tau)
    last = result.levels[-1]
    part = {
        "model": model,
        "seed": seed,
        "dense_val": result.levels[0].val_accuracy,
        "dense_test": result.levels[0].test_accuracy,
        "predicted": summary["predicted_removed_fraction"],
        "predicted_official": float(fractions[crossing(fractions, official)]),
        "actual": summary["actual"]["removed_fraction"],
        "actual_val": summary["actual"]["val_accuracy"],
        "actual_test": summary["actual"]["test_accuracy"],
        "at_limit_val": last.val_accuracy,
        "at_limit_test": last.test_accuracy,
        "eps": summary["eps"],
        "limit_seconds": summary["seconds"],
        "train_seconds": train_seconds,
    }
    done.write_text(json.dumps(part, indent=1))
    return part


def imp_part(method: str, target: str, out: Path, data: str) -> dict:
    done = out / f"{method}-{target}.json"
    if done.exists():
        return json.loads(done.read_text())
    run = out / f"{method}-{target}"
    levels = 40 if method == "sap" else 15
    config = resolve({"method": method, "model": "mlp", "dataset": "fashion-mnist",
                      "data_dir": data, "warmup_epochs": 10, "levels": levels, "max_epochs": 1,
                      "target_remaining": target, "seed": 0, "threads": 1,
                      "out": str(run)})  # fmt: skip
    result = run_experiment(config, mode="overwrite" if run.exists() else "new")
    last = result.levels[-1]
    part = {
        "method": method,
        "target": target,
        "levels": len(result.levels) - 1,
        "epochs": sum(lv.epochs for lv in result.levels[1:]),
        "remaining": last.remaining_fraction,
        "val": last.val_accuracy,
        "test": last.test_accuracy,
        "dense_val": result.levels[0].val_accuracy,
        "limit": (result.limit or {}).get("predicted_remaining_fraction"),
    }
    done.write_text(json.dumps(part, indent=1))
    return part


def mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {std:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,lenet5")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=30, help="LOMP training epochs")
    parser.add_argument("--grid", type=int, default=200, help="pi grid of the actual threshold")
    parser.add_argument("--imp", default="sap:0.1,sap:limit,lth:0.1,lth:limit",
                        help="IMP runs on the mlp, method:target ('' to skip)")  # fmt: skip
    parser.add_argument("--out", default="runs/pruning-limit")
    parser.add_argument("--resume", action="store_true", help="keep the parts already done")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    if out.exists() and not args.resume and any(out.glob("*.json")):
        raise SystemExit(f"{out} holds results; pass --resume to keep them or choose --out")
    out.mkdir(parents=True, exist_ok=True)
    data = os.environ.get("INCOP_SHARED_DATA", str(ROOT.parent / "shared" / "datasets"))
    data = f"{data}/FashionMNIST"
    parts = [lomp_part(m, int(s), args.epochs, args.grid, out, data)
             for m in args.models.split(",") for s in args.seeds.split(",")]  # fmt: skip
    imp = [imp_part(*run.split(":"), out, data) for run in args.imp.split(",") if run]
    print("removed fraction of the prunable weights: predicted (quadrature, official grid) and")
    print("actual one-shot threshold on validation; mean ± std over seeds")
    head = (f"{'model':<7} {'predicted':>15} {'official':>15} {'actual (val)':>15}"
            f" {'pred - actual':>15} {'val at limit':>15} {'dense val':>15}"
            f" {'limit s':>9}")  # fmt: skip
    print(head)
    for model in args.models.split(","):
        rows = [p for p in parts if p["model"] == model]
        diff = [p["predicted"] - p["actual"] for p in rows if p["actual"] is not None]
        print(f"{model:<7} {mean_std([p['predicted'] for p in rows]):>15}"
              f" {mean_std([p['predicted_official'] for p in rows]):>15}"
              f" {mean_std([p['actual'] for p in rows]):>15} {mean_std(diff):>15}"
              f" {mean_std([p['at_limit_val'] for p in rows]):>15}"
              f" {mean_std([p['dense_val'] for p in rows]):>15}"
              f" {statistics.fmean(p['limit_seconds'] for p in rows):>9.0f}")  # fmt: skip
    for part in imp:
        print(f"{part.get('method', 'sap')} mlp, target {part['target']}: {part['levels']}"
              f" levels, {part['epochs']}"
              f" epochs, remaining {part['remaining']:.3f}, val {part['val']:.4f} (dense"
              f" {part['dense_val']:.4f}), test {part['test']:.4f}")  # fmt: skip
    (out / "results.json").write_text(json.dumps({"lomp": parts, "imp": imp}, indent=1))


if __name__ == "__main__":
    main()
