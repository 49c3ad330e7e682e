"""The headline study (issue 24): which stopping rule is cheapest at equal sparsity?

Every family of rules is swept over its threshold, with only the rule differing: every level
keeps the counts of one SAP reference run (``prune_counts: frozen``), and the final mask is
fine-tuned from theta* (``finetune_from: dense``) for the same epochs. Each family is its
own comparison (its own folder, resumable, one thread), so families run in parts, side by
side in the background; the study then pools their runs (decisions on validation only) and
prints the frontier: per family its cheapest point within the tolerance of the dense
validation accuracy, its cost in dense training epochs against SAP's, and the paired
per-seed differences of those points against SAP's with 95% bootstrap intervals. The plot
goes to ``docs/cost_frontier.png`` (``--plot``).

    python benchmarks/cost_frontier.py --model lenet5 --seeds 0,1,2,3,4     # everything
    python benchmarks/cost_frontier.py --model lenet5 --families sap,sap-acc &   # a part
    python benchmarks/cost_frontier.py --model lenet5 --report-only        # pool and print
    python benchmarks/cost_frontier.py --quick          # digits, 2 seeds: a smoke run (33 s)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from incop.config import METHODS, resolve, unused_by
from incop.engine.experiment import run_experiment
from incop.tools import study
from incop.tools.compare import REACH, Variant, check_sweep, parse_sweep, run_comparison
from incop.tools.report import _styles, cost_figure, figure_bytes, interval_cell

ROOT = Path(__file__).resolve().parents[1]
#: The protocol every family shares (SAP (1, 2), eta_r 0.2, as the stopping study).
SHARED = {"dataset": "fashion-mnist", "p": 1.0, "q": 2.0, "eta_r": 0.2, "levels": 4,
          "warmup_epochs": 5, "max_epochs": 8, "finetune_epochs": 6, "finetune_from": "dense",
          "rewind": "dense", "threads": 1}  # fmt: skip
MODELS = {"lenet5": {}, "resnet20": {"train_fraction": 0.05, "val_fraction": 0.05,
                                      "warmup_epochs": 15}}  # fmt: skip
NOISE = ["0.5", "1", "1.5", "2", "3"]
#: Family -> (method, its own settings, its sweep). The issue's grid.
FAMILIES = {
    "sap": ("sap", {"min_epochs": 0}, ["max_epochs=0,1,2,4,8"]),
    "sap-acc": ("sap-acc", {}, ["delta=-0.005,0,0.005,0.01,0.02"]),
    "incop-gf": ("incop-gf", {"eps_mode": "noise"}, [f"eps={','.join(NOISE)}"]),
    "incop-if": ("incop-if", {"eps_mode": "noise"}, [f"eps={','.join(NOISE)}"]),
    "incop-gf-flow": ("incop-gf-flow", {"eps_mode": "noise"}, [f"eps={','.join(NOISE)}"]),
    "incop-if-flow": ("incop-if-flow", {"eps_mode": "noise"}, [f"eps={','.join(NOISE)}"]),
    "gf-plateau": ("sap", {"stop": "gf-plateau"}, ["plateau_tol=0.05,0.2"]),
    "if-plateau": ("sap", {"stop": "if-plateau"}, ["plateau_tol=0.05,0.2"]),
    "loss-plateau": ("sap", {"stop": "loss-plateau"}, ["patience=1,2"]),
    "sap-mask": ("sap-mask", {}, ["eps=0.03,0.06,0.12,0.2"]),
    "mask-gf": ("sap", {"stop": "mask-gf", "eps_mode": "noise"}, ["eps=1,2"]),
    "mask-if": ("sap", {"stop": "mask-if", "eps_mode": "noise"}, ["eps=1,2"]),
}
#: resnet20's smaller run (a run costs 2.5-8 min on one core, a family's warm-up 3 more):
#: SAP's grid without E=8; sap-acc at lenet5's chosen delta and its former default 0; of
#: incop-gf and if-plateau, the best flow rules, the point lenet5 chose; and oneshot. It
#: asks whether lenet5's verdict carries over, not where each family's optimum lies.
SMALLER = {"sap": ["max_epochs=0,1,2,4"], "sap-acc": ["delta=0,0.02"], "incop-gf": ["eps=3"],
           "if-plateau": ["plateau_tol=0.2"]}  # fmt: skip
GRIDS = {"lenet5": {}, "resnet20": SMALLER}
#: Methods that prune once, straight to the reference's final sparsity.
ONCE = ("oneshot", "rigl", "set")
QUICK = {"dataset": "digits", "model": "mlp", "levels": 2, "warmup_epochs": 3, "max_epochs": 2,
         "finetune_epochs": 1, "threads": 1}  # fmt: skip


def reference(out: Path, settings: dict) -> Path:
    """The SAP run whose per-level counts every family keeps (seed 0; its own folder)."""
    run = out / "reference"
    if not (run / "summary.json").is_file():
        mode = "resume" if (run / "config.yaml").is_file() else "new"
        run_experiment(resolve({**settings, "method": "sap", "out": str(run)}), mode=mode)
    return run


def run_family(
    name: str, out: Path, settings: dict, seeds: list[int], ref: Path, grid: dict | None = None
) -> None:
    """One family's comparison in ``out/<family>``, resumed where it stopped; ``grid``: family
    -> its sweep, where it differs from :data:`FAMILIES`'."""
    folder = out / name
    mode = "resume" if (folder / "compare.yaml").is_file() else "new"
    if name in ONCE:
        final = json.loads((ref / "summary.json").read_text())["levels"][-1]
        # Only what the method uses: SAP's (p, q) are not its, nor levels, nor theta*.
        unused = unused_by(name, settings) | {"levels", "finetune_from"}
        unused |= {k for k, (_, reaches) in REACH.items() if not reaches(METHODS.get(name))}
        plan = {k: v for k, v in settings.items() if k not in unused}
        plan = {**plan, "target_remaining": final["remaining_fraction"]}
        run_comparison(plan, [name], seeds, out=folder, mode=mode, progress=True)
        return
    method, own, sweeps = FAMILIES[name]
    sweeps = (grid or {}).get(name, sweeps)
    plan = {**settings, **own, "prune_counts": "frozen", "counts_from": str(ref)}
    sweep = parse_sweep(sweeps)
    plan = {k: v for k, v in plan.items() if k not in {key.split(":")[-1] for key in sweep}}
    check_sweep(sweep, [method], seeds[0], plan)
    run_comparison(plan, [method], seeds, out=folder, sweep=sweep, mode=mode, progress=True)


def pooled(out: Path, families: list[str]) -> dict:
    """Every finished family's runs, each labelled with its family (several families use the
    same method under another rule)."""
    runs = []
    for name in families:
        path = out / name / "comparison.json"
        if path.is_file():
            runs += [{**r, "method": name} for r in json.loads(path.read_text())["runs"]]
    return {"runs": runs}


def headline(analysis: dict, runs: list[dict]) -> list[str]:
    """Per family: its cheapest point within the tolerance, its cost against SAP's, and the
    paired per-seed differences of those two points (test accuracy, cost)."""
    key = study._key
    cheapest = analysis["cheapest_within_tolerance"]
    base = cheapest.get("sap", {}).get("point")
    rows = [f"{'family':<14} {'point':<22} {'cost':>6} {'val %':>6} {'test %':>6} {'/sap':>5}"
            f"  Δ test (points) vs sap's        Δ cost (dense epochs)"]  # fmt: skip
    for family, held in cheapest.items():
        point = held["point"]
        if point is None:
            rows.append(f"{family:<14} none within the tolerance")
            continue
        pair = None
        if base is not None and family != "sap":
            pair = study.paired([r for r in runs if key(r) == key(point)],
                                [r for r in runs if key(r) == key(base)])  # fmt: skip
        cells = ["", ""]
        if pair:
            cells = [interval_cell(pair[k]) for k in ("test_accuracy_points", "cost_dense_epochs")]
        params = " ".join(f"{k}={v}" for k, v in point["params"].items()) or "-"
        ratio = held.get("cost_vs_sap")
        val, test = (100 * point[k]["mean"] for k in ("val_accuracy", "test_accuracy"))
        rows.append(
            f"{family:<14} {params:<22} {point['cost_dense_epochs']['mean']:>6.2f}"
            f" {val:>6.2f} {test:>6.2f} {'-' if ratio is None else f'{ratio:.2f}':>5}"
            f"  {cells[0]:<30} {cells[1]}"
        )
    return rows


def every_point(analysis: dict) -> list[str]:
    """Every point of every family (means over seeds, std of cost and test accuracy): the grid
    each default was chosen from (docs/defaults.md)."""
    rows = [f"{'family':<14} {'point':<22} {'seeds':>5} {'cost':>13} {'val %':>6}"
            f" {'test %':>13} {'left %':>6}"]  # fmt: skip
    for p in sorted(
        analysis["points"], key=lambda p: (p["method"], p["cost_dense_epochs"]["mean"])
    ):
        cost, test = p["cost_dense_epochs"], p["test_accuracy"]
        params = " ".join(f"{k}={v}" for k, v in p["params"].items()) or "-"
        rows.append(
            f"{p['method']:<14} {params:<22} {len(p['seeds']):>5}"
            f" {cost['mean']:>6.2f} ± {cost['std']:<4.2f} {100 * p['val_accuracy']['mean']:>6.2f}"
            f" {100 * test['mean']:>6.2f} ± {100 * test['std']:<4.2f}"
            f" {100 * p['remaining_fraction']['mean']:>6.2f}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5", choices=list(MODELS))
    parser.add_argument("--seeds", help="default 0,1,2,3,4 (lenet5), 0,1,2 (resnet20)")
    parser.add_argument("--families", help="default every family (lenet5), the smaller run's"
                        " (resnet20: those of SMALLER, and oneshot)")  # fmt: skip
    parser.add_argument("--out", help="default runs/cost-frontier/<model>")
    parser.add_argument("--tolerance", type=float, default=study.TOLERANCE)
    parser.add_argument("--report-only", action="store_true", help="pool what has finished")
    parser.add_argument("--plot", help="save the frontier figure here (docs/cost_frontier.png)")
    parser.add_argument("--every-point", action="store_true", help="also print every point")
    parser.add_argument("--quick", action="store_true", help="digits and the mlp, 2 seeds")
    args = parser.parse_args()
    grid = {} if args.quick else GRIDS[args.model]
    every = [*grid, "oneshot"] if grid else [*FAMILIES, *ONCE]
    families = args.families.split(",") if args.families else every
    unknown = [f for f in families if f not in FAMILIES and f not in ONCE]
    if unknown:
        parser.error(f"unknown families: {', '.join(unknown)}")
    data = os.environ.get("INCOP_SHARED_DATA", str(ROOT.parent / "shared" / "datasets"))
    if args.quick:
        settings, seeds, name = {**SHARED, **QUICK}, [0, 1], "quick"
    else:
        settings = {**SHARED, **MODELS[args.model], "model": args.model,
                    "data_dir": f"{data}/FashionMNIST"}  # fmt: skip
        seeds = args.seeds or ("0,1,2" if grid else "0,1,2,3,4")
        seeds, name = [int(s) for s in seeds.split(",")], args.model
    out = Path(args.out or ROOT / "runs" / "cost-frontier" / name)
    if not args.report_only:
        ref = reference(out, settings)
        for family in families:
            run_family(family, out, settings, seeds, ref, grid)
    comparison = pooled(out, families)
    if not comparison["runs"]:
        raise SystemExit(f"no finished family in {out}")
    analysis = study.analyse(comparison, "sap", args.tolerance)
    print(f"\n{name}: seeds {sorted({r['seed'] for r in comparison['runs']})}, frozen counts of"
          f" {out / 'reference'}; cost = cost.search in dense training epochs; every choice on"
          f" validation, test beside; tolerance {args.tolerance:g} points of the dense"
          f" validation accuracy ({100 * analysis['dense']['val_accuracy']:.2f} %)")  # fmt: skip
    print("\n".join(headline(analysis, comparison["runs"])))
    if args.every_point:
        print("\nevery point (mean over seeds; cost and test ± std):")
        print("\n".join(every_point(analysis)))
    if args.plot:
        styles = _styles([Variant(p["method"], tuple(p["params"].items()))
                          for p in analysis["points"]])  # fmt: skip
        Path(args.plot).write_bytes(figure_bytes(cost_figure(analysis, styles, band=2.0), "png"))
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
