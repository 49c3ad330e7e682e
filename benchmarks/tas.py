"""TAS against channel-scope LTH and SAP tickets of similar MACs (issue 27).

Per model and seed: ``tas`` at flop_ratio 0.5 and 0.3 (the student trained ``STUDENT``
epochs with distillation from theta*, its last epoch kept, as TAS), and the ``lth`` and
``sap`` (p 1, q 2, eta_r 0.2) channel-scope tickets whose level's MACs fraction is nearest
each ratio, fine-tuned for the same ``STUDENT`` epochs (best validation epoch). Which level
matches a ratio is read from a probe run of the same seed (levels of ``E`` epochs, no
fine-tune) by MACs alone; a run with fewer levels repeats the probe's first levels exactly.
Every decision reads the validation split; test accuracy is reported beside. Cost: the
ticket run's ``cost.search`` (warm-up, search, retraining, fine-tune, teacher passes) in
dense training epochs of that run; the probe is not counted. Resumable; one thread per run.

    python benchmarks/tas.py --model lenet5 --seeds 0 &     # a part
    python benchmarks/tas.py --model lenet5 --seeds 1 &
    python benchmarks/tas.py --model lenet5 --seeds 0,1 --report-only
    python benchmarks/tas.py --quick                        # digits, mlp, 2 seeds (smoke)
    python benchmarks/tas.py --arch-lr                      # the search alone, per arch_lr

``--arch-lr``: how the architecture's learning rate decides whether the argmax network settles
in the cost band over incop's budgets (lenet5 on 1,400 digits, batch 64, flop_ratio 0.5, 15
search epochs = 165 architecture steps, seeds 0-3): the share of the last 20% of steps whose
argmax MACs lie in [0.45, 0.50], and the final MACs fraction. It chose ``tas_arch_lr``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from incop.config import resolve
from incop.engine.experiment import run_experiment
from incop.methods.tas import tas_search
from incop.workload.data import load_dataset
from incop.workload.models import build_model, model_init

ROOT = Path(__file__).resolve().parents[1]
RATIOS = (0.5, 0.3)
SHARED = {"dataset": "fashion-mnist", "warmup_epochs": 5, "threads": 1}
#: resnet20 trains on 5% of the training split (2,700 images), as the cost-frontier study.
MODELS = {"lenet5": {}, "resnet20": {"train_fraction": 0.05, "val_fraction": 0.05,
                                      "warmup_epochs": 8}}  # fmt: skip
QUICK = {"dataset": "digits", "model": "mlp", "warmup_epochs": 3}
#: Search epochs, student / fine-tune epochs, epochs per IMP level, the probe's levels: the
#: reduced budgets of TAS.md A9 (15 + 15), IMP levels short enough for the machine.
BUDGETS = {"lenet5": {"tas_epochs": 15, "student": 15, "E": 3, "levels": 6},
           "resnet20": {"tas_epochs": 15, "student": 15, "E": 2, "levels": 6}}  # fmt: skip
QUICK_BUDGET = {"tas_epochs": 4, "student": 3, "E": 1, "levels": 4}
CHANNEL = {"lth": {"method": "lth"}, "sap": {"method": "sap", "p": 1.0, "q": 2.0, "eta_r": 0.2}}


def run(folder: Path, settings: dict) -> dict:
    """The finished run in ``folder`` (trained, or resumed, here if need be): its summary."""
    if not (folder / "summary.json").is_file():
        mode = "resume" if (folder / "config.yaml").is_file() else "new"
        run_experiment(resolve({**settings, "out": str(folder)}), mode=mode)
    return json.loads((folder / "summary.json").read_text())


def row(summary: dict, method: str, ratio: float) -> dict:
    """What the table shows of one run: the ticket's MACs fraction, accuracies, cost."""
    levels = summary["levels"]
    final = summary["final"] or levels[-1]
    epochs = sum(lv["epochs"] for lv in levels) + (summary["final"] or {}).get("epochs", 0)
    search = summary.get("pruner", {}).get("history", [])
    return {
        "method": method,
        "ratio": ratio,
        "macs_fraction": levels[-1]["macs_fraction"],
        "val_accuracy": final["val_accuracy"],
        "test_accuracy": final["test_accuracy"],
        "dense_val": levels[0]["val_accuracy"],
        "dense_test": levels[0]["test_accuracy"],
        "epochs": epochs + len(search),
        "cost_dense_epochs": summary["cost"]["search"] / summary["dense_epoch"],
    }


def seed_rows(
    out: Path, settings: dict, budget: dict, seed: int, methods: tuple[str, ...]
) -> list[dict]:
    base = {**settings, "seed": seed}
    rows = []
    for ratio in RATIOS if "tas" in methods else ():
        tas = {**base, "method": "tas", "flop_ratio": ratio, "tas_epochs": budget["tas_epochs"],
               "max_epochs": budget["student"]}  # fmt: skip
        summary = run(out / "tas" / f"r{ratio}" / f"seed-{seed}", tas)
        rows.append(row(summary, "tas", ratio))
    for name, own in CHANNEL.items():
        if name not in methods:
            continue
        ticket = {**base, **own, "scope": "channel", "max_epochs": budget["E"]}
        probe = run(out / name / "probe" / f"seed-{seed}",
                    {**ticket, "levels": budget["levels"], "finetune_epochs": 0})  # fmt: skip
        macs = [lv["macs_fraction"] for lv in probe["levels"]]
        for ratio in RATIOS:
            level = min(range(1, len(macs)), key=lambda i: abs(macs[i] - ratio))
            chosen = {**ticket, "levels": level, "finetune_epochs": budget["student"]}
            summary = run(out / name / f"r{ratio}" / f"seed-{seed}", chosen)
            rows.append(row(summary, name, ratio))
    return rows


def table(rows: list[dict]) -> list[str]:
    """Mean (and std over seeds) per method and ratio."""

    def cell(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
        m = statistics.mean(values) * scale
        if len(values) < 2:
            return f"{m:.{digits}f}"
        return f"{m:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"

    lines = [
        "| method | target | seeds | MACs % | val acc % | test acc % | epochs | cost (dense ep.) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    dense = [r for r in rows if r["method"] == "tas" and r["ratio"] == RATIOS[0]]
    if dense:
        val, test = (cell([r[k] for r in dense], 100) for k in ("dense_val", "dense_test"))
        lines.append(f"| dense | - | {len(dense)} | 100 | {val} | {test} | - | - |")
    for ratio in RATIOS:
        for method in ("tas", *CHANNEL):
            group = [r for r in rows if r["method"] == method and r["ratio"] == ratio]
            if not group:
                continue
            lines.append(
                f"| {method} | {ratio:g} | {len(group)}"
                f" | {cell([r['macs_fraction'] for r in group], 100, 1)}"
                f" | {cell([r['val_accuracy'] for r in group], 100)}"
                f" | {cell([r['test_accuracy'] for r in group], 100)}"
                f" | {cell([r['epochs'] for r in group], 1, 0)}"
                f" | {cell([r['cost_dense_epochs'] for r in group], 1, 1)} |"
            )
    return lines


def arch_lr_study(rates: tuple[float, ...] = (1e-3, 1e-2, 5e-2), seeds: int = 4) -> list[str]:
    """Per architecture learning rate and seed: the share of the last 20% of architecture
    steps in the cost band, and the final argmax MACs fraction (the search only)."""
    data = load_dataset("digits")
    x, y = data.train_x[:1400], data.train_y[:1400]
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, len(y), 64)]
    lines = ["| arch_lr | seed | last 20% of steps in the band | final MACs % |",
             "| --- | --- | --- | --- |"]  # fmt: skip
    for rate in rates:
        for seed in range(seeds):
            torch.manual_seed(seed)
            model = build_model("lenet5", 1, 8, 10)
            result = tas_search(model, batches, flop_ratio=0.5, epochs=15, arch_lr=rate,
                                seed=seed, init_fn=model_init("lenet5"))  # fmt: skip
            last = result.step_macs_fraction[int(0.8 * len(result.step_macs_fraction)) :]
            share = sum(0.45 <= f <= 0.50 for f in last) / len(last)
            lines.append(f"| {rate:g} | {seed} | {100 * share:.0f}% |"
                         f" {100 * result.macs_fraction:.1f} ({result.derived}) |")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5", choices=list(MODELS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", help="default runs/tas/<model>")
    parser.add_argument("--quick", action="store_true", help="digits and the mlp (a smoke run)")
    parser.add_argument("--report-only", action="store_true", help="tabulate what has finished")
    parser.add_argument("--arch-lr", action="store_true", help="the arch_lr study (search only)")
    parser.add_argument("--methods", default="tas,lth,sap", help="run only these (a part)")
    args = parser.parse_args()
    if args.arch_lr:
        print("\n".join(arch_lr_study()))
        return
    data = os.environ.get("INCOP_SHARED_DATA", str(ROOT.parent / "shared" / "datasets"))
    if args.quick:
        settings, budget, name = {**SHARED, **QUICK}, QUICK_BUDGET, "quick"
    else:
        settings = {**SHARED, **MODELS[args.model], "model": args.model,
                    "data_dir": f"{data}/FashionMNIST"}  # fmt: skip
        budget, name = BUDGETS[args.model], args.model
    out = Path(args.out or ROOT / "runs" / "tas" / name)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for seed in seeds:
        if args.report_only:
            try:
                rows += seed_rows_finished(out, seed)
            except FileNotFoundError:
                continue
        else:
            rows += seed_rows(out, settings, budget, seed, tuple(args.methods.split(",")))
    print(f"\n{name}: TAS vs channel-scope tickets of similar MACs; budgets {budget}")
    print("\n".join(table(rows)))


def seed_rows_finished(out: Path, seed: int) -> list[dict]:
    """The rows of the finished runs of ``seed`` (a part of a study running elsewhere)."""
    rows = []
    for method in ("tas", *CHANNEL):
        for ratio in RATIOS:
            path = out / method / f"r{ratio}" / f"seed-{seed}" / "summary.json"
            if path.is_file():
                rows.append(row(json.loads(path.read_text()), method, ratio))
    return rows


if __name__ == "__main__":
    main()
