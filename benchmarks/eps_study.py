"""How the flow distances behave during retraining, to choose the stopping rules' eps.

Runs SAP with a fixed number of epochs per level (so nothing stops early) and,
at every epoch (epoch 0 = right after prune and rewind), measures every flow
variant on the probe set against the dense network: IF with the signed mean
and the mean of absolute values, GF plain, each with the l2, relative and
cosine distances. Prints the per-epoch table, the quartiles of the distances
in retraining epochs >= 2 (what a retrained network shows, SGD noise
included), and a replay of each rule with candidate eps on the logged run:
total retraining epochs and final accuracy, against fixed-E SAP and the plain
accuracy rule. The defaults of ``incop-if`` and ``incop-gf`` come from these
figures (docs/eps.md).

    python benchmarks/eps_study.py --p 0.5 --q 1 --levels 5 --max-epochs 10
    python benchmarks/eps_study.py --p 1 --q 2 --eta-r 0.2 --levels 5 --max-epochs 6 \
        --warmup-epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from incop.config import resolve
from incop.engine.experiment import build_batches
from incop.engine.imp import IMP
from incop.methods.flows import flow_distance, gradient_flow, information_flow
from incop.methods.stopping import Reference, StoppingRule
from incop.workload.data import load_dataset
from incop.workload.models import build_model

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("if-mean", "if-abs", "gf")
DISTANCES = ("l2", "relative", "cosine")
CANDIDATES = {
    ("gf", "l2"): (0.1, 0.15, 0.2, 0.3, 0.5),
    ("gf", "relative"): (0.2, 0.3, 0.45, 0.6),
    ("gf", "cosine"): (0.002, 0.005, 0.01),
    ("if-mean", "l2"): (0.01, 0.02, 0.05, 0.11),
    ("if-abs", "relative"): (0.05, 0.1, 0.2),
}


class LogEveryFlow(StoppingRule):
    """``fixed(E)`` that records every flow distance and the accuracy at every epoch."""

    needs_probe = True

    def flows(self, model, masks) -> dict[str, torch.Tensor]:
        params = {name: model.get_parameter(name) for name in masks}
        return {
            "if-mean": information_flow(model, self.probe, summary="mean").vector,
            "if-abs": information_flow(model, self.probe, summary="abs-mean").vector,
            "gf": gradient_flow(model, self.probe, masks=masks, params=params),
        }

    def prepare(self, reference: Reference) -> None:
        super().prepare(reference)
        self.probe = reference.probe
        self.reference = self.flows(reference.model, reference.masks)
        self.rows: list[dict] = []
        self.level = 0

    def measure(self, model, masks) -> None:
        flows = self.flows(model, masks)
        self.pending = {
            (v, d): flow_distance(flows[v], self.reference[v], d)
            for v in VARIANTS
            for d in DISTANCES
        }

    def decide(self, epoch: int, accuracy: float, distance: float | None) -> str | None:
        if epoch == 0:
            self.level += 1
        self.rows.append(
            {"level": self.level, "epoch": epoch, "accuracy": accuracy, **self.pending}
        )
        return super().decide(epoch, accuracy, distance)


def replay(rows, dense, key=None, eps=0.0, accuracy_clause=True, min_epochs=1):
    """Total epochs and final accuracy had the rule stopped on these logged epochs."""
    levels = defaultdict(list)
    for row in rows:
        levels[row["level"]].append(row)
    total, final = 0, None
    for rows_of_level in levels.values():
        cap = rows_of_level[-1]["epoch"]
        for row in rows_of_level:
            met = (key is not None and row[key] < eps) or (
                accuracy_clause and row["accuracy"] >= dense
            )
            if row["epoch"] >= cap or (row["epoch"] >= min_epochs and met):
                total += row["epoch"]
                final = row["accuracy"]
                break
    return total, final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("INCOP_DATA_DIR", str(ROOT.parent / "shared" / "datasets")),
    )
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--q", type=float, default=1.0)
    parser.add_argument("--eta-r", type=float, default=0.0)
    parser.add_argument("--levels", type=int, default=5)
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--warmup-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the logged rows here")
    args = parser.parse_args()
    config = resolve(
        {
            "method": "sap",
            "dataset": args.dataset,
            "data_dir": args.data_dir,
            "model": args.model,
            "p": args.p,
            "q": args.q,
            "eta_r": args.eta_r,
            "levels": args.levels,
            "max_epochs": args.max_epochs,
            "warmup_epochs": args.warmup_epochs,
            "seed": args.seed,
        }
    )
    dataset = load_dataset(config.dataset, config.data_dir)
    info = dataset.info
    torch.manual_seed(config.seed)
    model = build_model(config.model, info.channels, info.image_size, info.num_classes)
    splits = build_batches(config, dataset, model)
    rule = LogEveryFlow(max_epochs=config.max_epochs, min_epochs=0)
    study = IMP(config, model, splits.train, splits.val, stop=rule)
    result = study.run()
    rows, dense = study.rule.rows, result.dense_accuracy
    print(result.table())
    print(f"\ndense accuracy {dense:.4f}; distances per epoch (epoch 0 = after prune + rewind)")
    keys = [(v, d) for v in VARIANTS for d in DISTANCES]
    print(f"{'lv':>2} {'ep':>2} {'acc':>6} " + " ".join(f"{v + '/' + d[:3]:>12}" for v, d in keys))
    for row in rows:
        cells = " ".join(f"{row[k]:>12.4f}" for k in keys)
        print(f"{row['level']:>2} {row['epoch']:>2} {row['accuracy']:.4f} {cells}")
    print("\nquartiles of the distance in retraining epochs >= 2, and at epoch 0")
    for key in keys:
        late = [row[key] for row in rows if row["epoch"] >= 2]
        first = [row[key] for row in rows if row["epoch"] == 0]
        quartiles = ", ".join(f"{q:.3f}" for q in statistics.quantiles(late, n=4))
        print(
            f"  {key[0]:>8} {key[1]:>8}: {quartiles}   epoch 0: {min(first):.3f}..{max(first):.3f}"
        )
    print("\nreplay (min 1 epoch; flow rules also stop at dense accuracy)")
    replays = [("fixed E (sap)", replay(rows, dense, accuracy_clause=False))]
    replays.append(("accuracy(0) (sap-acc)", replay(rows, dense)))
    for key, candidates in CANDIDATES.items():
        replays += [
            (f"{key[0]} {key[1]} eps {eps}", replay(rows, dense, key, eps)) for eps in candidates
        ]
    for name, (epochs, final) in replays:
        print(f"  {name:<28} epochs {epochs:3d}  final accuracy {final:.4f}")
    if args.json:
        serial = [
            {(k if isinstance(k, str) else "/".join(k)): v for k, v in r.items()} for r in rows
        ]
        Path(args.json).write_text(json.dumps({"dense": dense, "rows": serial}, indent=1))


if __name__ == "__main__":
    main()
