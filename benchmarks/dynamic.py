"""The cheap routes to a sparse network (issue 26): dynamic sparse training (RigL, SET) and
one-shot pruning with a fine-tune, beside IMP, at 10, 5 and 2% of the weights.

Fashion-MNIST (from ../shared/datasets), lenet5, every decision on the validation split,
test accuracy only reported; cost: what finding and training the ticket took, in dense
training epochs (FLOPs counted from the alive weights, METHOD.md section 10). Comparisons,
each a folder under --out:

- ``dst-10``, ``dst-5``, ``dst-2``: rigl and set at that target, one phase of 12 epochs
  (as long as the at-init methods of benchmarks/frontier.py train: E + E), the defaults of
  the RigL paper otherwise (update every 100 steps until 75% of training, drop 0.3).
- ``oneshot-10``, ``oneshot-5``, ``oneshot-2``: the 10-epoch dense warm-up, one global
  magnitude prune to the target, 12 epochs of fine-tuning.
- ``imp``: SAP (1, 2), eta_r 0.2, as benchmarks/frontier.py (its levels 3-5 leave about 7,
  3.7 and 1.9% of the weights), 5 levels of 6 epochs and a fine-tune of 6: its seeds are
  ``--imp-seeds`` (one by default: it is the long one).

    python benchmarks/dynamic.py [--out DIR] [--seeds 0,1,2] [--imp-seeds 0] [--resume]

Time: about 50 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from incop.tools.compare import run_comparison

ROOT = Path(__file__).resolve().parents[1]
COMMON = {"dataset": "fashion-mnist", "model": "lenet5"}
TARGETS = (0.1, 0.05, 0.02)
IMP = {"p": 1.0, "q": 2.0, "eta_r": 0.2, "warmup_epochs": 10, "levels": 5, "max_epochs": 6,
       "finetune_epochs": 6}  # fmt: skip


def plan(common: dict, seeds: list[int], imp_seeds: list[int]) -> dict:
    """Comparison name -> (its settings, its methods, its seeds)."""
    comparisons = {}
    for target in TARGETS:
        percent = round(target * 100)
        comparisons[f"dst-{percent}"] = (
            {**common, "target_remaining": target, "max_epochs": 12},
            ["rigl", "set"],
            seeds,
        )
        comparisons[f"oneshot-{percent}"] = (
            {**common, "target_remaining": target, "warmup_epochs": 10, "finetune_epochs": 12},
            ["oneshot"],
            seeds,
        )
    comparisons["imp"] = ({**common, **IMP}, ["sap"], imp_seeds)
    return comparisons


def rows(name: str, comparison: dict) -> list[str]:
    out = []
    for method, entry in comparison["methods"].items():
        t = entry["totals"]
        cost = t["cost_dense_epochs"]
        if name == "imp":  # every level of IMP is a ticket (before the final fine-tune)
            for level in entry["levels"][1:]:
                test = level["test_accuracy"]
                out.append(
                    f"{name + '/' + method + ' L' + str(level['level']):<20}"
                    f" {level['remaining_fraction']['mean']:>9.2%}"
                    f" {test['mean']:>8.2%} ± {test['std']:<6.2%}"
                    f" {level['val_accuracy']['mean']:>8.2%}"
                )
        out.append(
            f"{name + '/' + method:<20} {t['final_remaining_fraction']['mean']:>9.2%}"
            f" {t['final_test_accuracy']['mean']:>8.2%} ± {t['final_test_accuracy']['std']:<6.2%}"
            f" {t['final_accuracy']['mean']:>8.2%} {cost['mean']:>7.1f} ± {cost['std']:<4.1f}"
            f" {t['wall_seconds']['mean']:>8.0f}"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "dynamic"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--imp-seeds", default="0")
    parser.add_argument("--resume", action="store_true", help="go on from an interrupted run")
    args = parser.parse_args()
    data = os.environ.get("INCOP_SHARED_DATA", str(ROOT.parent / "shared" / "datasets"))
    common = {**COMMON, "data_dir": f"{data}/FashionMNIST"}
    seeds = [int(s) for s in args.seeds.split(",")]
    imp_seeds = [int(s) for s in args.imp_seeds.split(",")]
    started = time.perf_counter()
    lines = [f"{'comparison/method':<20} {'remaining':>9} {'test acc':>17} {'val acc':>8}"
             f" {'cost (dense ep.)':>16} {'wall s':>8}"]  # fmt: skip
    for name, (settings, methods, its_seeds) in plan(common, seeds, imp_seeds).items():
        out = Path(args.out) / name
        mode = "resume" if args.resume and (out / "compare.yaml").exists() else "new"
        comparison = run_comparison(settings, methods, its_seeds, out=out, progress=True,
                                    mode=mode)  # fmt: skip
        lines += rows(name, comparison)
        print("\n".join(lines), flush=True)
    print(f"\n{common['dataset']}, {common['model']}, seeds {seeds} (imp: {imp_seeds});"
          " mean ± std over seeds")  # fmt: skip
    print("\n".join(lines))
    print(f"took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
