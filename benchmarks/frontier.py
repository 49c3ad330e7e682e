"""The accuracy-sparsity frontier (issue 13): pruning at initialisation against IMP tickets,
flow-guided against magnitude ranking, and the EPI warm-up against the fixed one.

Fashion-MNIST (from ../shared/datasets), lenet5, 3 seeds, every run with the same fine-tune
of E epochs after its last prune, every decision on the validation split, test accuracy
only reported. Comparisons, each a folder under --out:

- ``imp``: sap, incop-gf, sap-mask; SAP (1, 2), eta_r = 0.2 leaves about 34, 14, 7, 3.7
  and 1.9% of the weights after levels 1-5 (benchmarks/eps_study.py measured the first
  four), so its levels sit near the at-init fractions.
- ``guided``: sap with ``score: flow-guided``, otherwise as ``imp`` (its twin: imp's sap).
- ``epi``: sap with ``warmup_stop: epi``, capped at the fixed warm-up of the others (10
  epochs, the published protocol's): epochs saved, and the accuracy it costs.
- ``init-10``, ``init-5``, ``init-2``: synflow, snip and random-init at 10, 5 and 2% of the
  weights, E + E epochs of training (the IMP methods' last level plus fine-tune).

Prints one table (method, remaining weights, test and validation accuracy, epochs) and
saves the joint frontier plot as ``frontier.png`` / ``.svg`` in --out.

    python benchmarks/frontier.py [--out DIR] [--resume] [--quick]

Time: about 2 h of compute on 2 cores beside another job (imp 55 min, guided 21, epi 20,
the at-init comparisons 45).

``--quick``: digits, mlp, one seed, short schedules: a smoke run of the whole pipeline in
about a minute, not a result.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from incop.tools.compare import run_comparison
from incop.tools.report import figure_bytes, sparsity_figure

ROOT = Path(__file__).resolve().parents[1]
COMMON = {
    "dataset": "fashion-mnist",
    "model": "lenet5",
    "p": 1.0,
    "q": 2.0,
    "eta_r": 0.2,
    "warmup_epochs": 10,
    "levels": 5,
    "max_epochs": 6,
    "finetune_epochs": 6,
}
QUICK = {"dataset": "digits", "model": "mlp", "warmup_epochs": 6, "levels": 3,
         "max_epochs": 2, "finetune_epochs": 2}  # fmt: skip
TARGETS = (0.1, 0.05, 0.02)
AT_INIT = ["synflow", "snip", "random-init"]


def plan(common: dict) -> dict[str, tuple[dict, list[str]]]:
    """Comparison name -> (its settings, its methods)."""
    # At init there is no warm-up and one prune: the IMP schedule does not apply. One phase
    # of max_epochs plus the fine-tune: as long as the IMP tickets train after their last prune.
    at_init = {k: v for k, v in common.items() if k not in ("levels", "warmup_epochs")}
    comparisons = {
        "imp": (common, ["sap", "incop-gf", "sap-mask"]),
        "guided": ({**common, "score": "flow-guided"}, ["sap"]),
        "epi": ({**common, "warmup_stop": "epi"}, ["sap"]),  # capped at the fixed warm-up
    }
    for target in TARGETS:
        comparisons[f"init-{round(target * 100)}"] = (
            {**at_init, "target_remaining": target},
            AT_INIT,
        )
    return comparisons


def rows(name: str, comparison: dict) -> list[str]:
    out = []
    for method, entry in comparison["methods"].items():
        t = entry["totals"]
        label = f"{name}/{method}"
        for level in entry["levels"][1:]:
            out.append(
                f"{label:<22} {level['level']:>5} {level['remaining_fraction']['mean']:>9.2%}"
                f" {level['test_accuracy']['mean']:>8.2%} ± {level['test_accuracy']['std']:<6.2%}"
                f" {level['val_accuracy']['mean']:>8.2%}"
            )
        out.append(
            f"{label + ' final':<22} {'':>5} {t['final_remaining_fraction']['mean']:>9.2%}"
            f" {t['final_test_accuracy']['mean']:>8.2%} ± {t['final_test_accuracy']['std']:<6.2%}"
            f" {t['final_accuracy']['mean']:>8.2%}   epochs {t['epochs']['mean']:.1f}"
            f" (warm-up {entry['levels'][0]['epochs']['mean']:.1f})"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "frontier"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--resume", action="store_true", help="go on from an interrupted run")
    parser.add_argument("--quick", action="store_true", help="a smoke run on digits")
    args = parser.parse_args()
    data = os.environ.get("INCOP_SHARED_DATA", str(ROOT.parent / "shared" / "datasets"))
    common = {**COMMON, "data_dir": f"{data}/FashionMNIST"}
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        common = {k: v for k, v in {**COMMON, **QUICK}.items() if k != "data_dir"}
        seeds = seeds[:1]
    started = time.perf_counter()
    merged: dict = {"methods": {}}
    lines = [f"{'comparison/method':<22} {'level':>5} {'remaining':>9} {'test acc':>17}"
             f" {'val acc':>8}"]  # fmt: skip
    for name, (settings, methods) in plan(common).items():
        out = Path(args.out) / name
        mode = "resume" if args.resume and (out / "compare.yaml").exists() else "new"
        settings = {k: v for k, v in settings.items() if v is not None}
        comparison = run_comparison(settings, methods, seeds, out=out, progress=True, mode=mode)
        lines += rows(name, comparison)
        for method, entry in comparison["methods"].items():
            merged["methods"][f"{name}/{method}"] = entry
    figure = sparsity_figure(merged)
    for fmt in ("png", "svg"):
        (Path(args.out) / f"frontier.{fmt}").write_bytes(figure_bytes(figure, fmt))
    print(f"\n{common['dataset']}, {common['model']}, seeds {seeds}; mean ± std over seeds")
    print("\n".join(lines))
    print(f"\nfrontier plot: {Path(args.out) / 'frontier.png'}")
    print(f"took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
