"""What the runs of a comparison say (METHOD.md section 10.2): the cost frontier and its Pareto
front, the cheapest point of each method within a tolerance of the dense network, paired
per-seed differences against a baseline with bootstrap intervals, and the binomial standard
error of an accuracy, so that a reader sees what a split can resolve.

Every choice here reads validation accuracy (which points are on the front, which is the
cheapest within the tolerance); test accuracy is only reported beside it. Costs are
``cost.search`` in dense training epochs; accuracies fractions; tolerances in points (%).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

#: Bootstrap resamples and seed of every interval: the same runs give the same report.
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
#: Default tolerance of the cheapest point: within half a point of the dense validation accuracy.
TOLERANCE = 0.5


def binomial_se(accuracy: float | None, examples: int | None) -> float | None:
    """Standard error of an accuracy measured on ``examples`` independent examples:
    sqrt(p (1 - p) / n); None where either is unknown."""
    if accuracy is None or not examples:
        return None
    return math.sqrt(accuracy * (1 - accuracy) / examples)


def bootstrap_interval(
    differences: Sequence[float], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of paired ``differences`` (one per seed),
    from ``resamples`` resamples with replacement drawn by a generator seeded with ``seed``."""
    import numpy as np

    values = np.asarray(differences, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def trained_dense(run: dict[str, Any]) -> bool:
    """Whether ``run`` (a ``summary.json`` or a comparison's run record, both with ``cost``)
    trained a dense network: a method that prunes at initialisation or trains sparse from the
    start (RigL, SET) spends nothing on a warm-up, and its "dense accuracy" is the untrained
    network's, no reference to hold a ticket to. A run of an incop that did not count costs
    is taken to have trained one, as every method then did."""
    cost = run.get("cost")
    return not cost or cost.get("warmup", 0) > 0


def _mean(values: Sequence[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else statistics.fmean(values)


def _std(values: Sequence[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return statistics.stdev(values) if len(values) > 1 else 0.0


def points(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per method and swept values: the means (and sample standard deviations)
    over its seeds of cost, final remaining fraction and final accuracies."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault(_key(run), []).append(run)
    out = []
    for group in grouped.values():
        point = {"method": group[0]["method"], "params": group[0]["params"],
                 "seeds": [r["seed"] for r in group]}  # fmt: skip
        for field in ("cost_dense_epochs", "remaining_fraction", "val_accuracy",
                      "test_accuracy"):  # fmt: skip
            values = [r[field] for r in group]
            point[field] = {"mean": _mean(values), "std": _std(values)}
        out.append(point)
    return out


def _key(run: dict[str, Any]) -> str:
    return run["method"] + repr(sorted(run["params"].items()))


def pareto_front(frontier: Sequence[dict[str, Any]]) -> list[int]:
    """Indices of the points no other point beats: none costs less or as much with a higher
    validation accuracy, or less with an equal one (means; points without a cost are out)."""
    known = [
        (i, p["cost_dense_epochs"]["mean"], p["val_accuracy"]["mean"])
        for i, p in enumerate(frontier)
        if p["cost_dense_epochs"]["mean"] is not None and p["val_accuracy"]["mean"] is not None
    ]
    front = []
    for i, cost, acc in known:
        beaten = any(
            (c <= cost and a > acc) or (c < cost and a >= acc) for j, c, a in known if j != i
        )
        if not beaten:
            front.append(i)
    return sorted(front, key=lambda i: frontier[i]["cost_dense_epochs"]["mean"])


def cheapest_within(
    frontier: Sequence[dict[str, Any]], dense_val: float, tolerance: float
) -> dict[str, dict[str, Any] | None]:
    """Method -> its cheapest point whose mean final validation accuracy is at least the
    dense network's minus ``tolerance`` points (None where no point of it is)."""
    best: dict[str, dict[str, Any] | None] = {}
    for point in frontier:
        best.setdefault(point["method"], None)
        acc, cost = point["val_accuracy"]["mean"], point["cost_dense_epochs"]["mean"]
        if acc is None or cost is None or acc < dense_val - tolerance / 100:
            continue
        held = best[point["method"]]
        if held is None or cost < held["cost_dense_epochs"]["mean"]:
            best[point["method"]] = point
    return best


def paired(
    runs: Sequence[dict[str, Any]], baseline: Sequence[dict[str, Any]]
) -> dict[str, Any] | None:
    """Per-seed differences (run minus baseline) in test accuracy (points) and in cost (dense
    epochs) over the seeds both ran, their means and 95% bootstrap intervals; ``resolved``
    is False where an interval holds 0. None without a shared seed."""
    by_seed = {r["seed"]: r for r in baseline}
    pairs = [(r, by_seed[r["seed"]]) for r in runs if r["seed"] in by_seed]
    if not pairs:
        return None
    out: dict[str, Any] = {"seeds": [r["seed"] for r, _ in pairs]}
    for field, name, scale in (("test_accuracy", "test_accuracy_points", 100),
                               ("cost_dense_epochs", "cost_dense_epochs", 1)):  # fmt: skip
        if any(r[field] is None or b[field] is None for r, b in pairs):
            out[name] = None
            continue
        differences = [(r[field] - b[field]) * scale for r, b in pairs]
        low, high = bootstrap_interval(differences)
        out[name] = {
            "differences": differences,
            "mean": statistics.fmean(differences),
            "interval": [low, high],
            "resolved": not low <= 0 <= high,
        }
    return out


def matching(params: dict[str, Any], candidates: Sequence[dict[str, Any]]) -> int | None:
    """Which of a baseline's points (their swept values ``candidates``) a point of swept
    values ``params`` is paired with: the only one, or the one whose every swept value is
    the point's own (sap max_epochs=2 for sap-acc delta=0.01 max_epochs=2); None if none or
    several are."""
    if len(candidates) == 1:
        return 0
    found = [i for i, c in enumerate(candidates)
             if all(k in params and params[k] == v for k, v in c.items())]  # fmt: skip
    return found[0] if len(found) == 1 else None


def analyse(
    comparison: dict[str, Any], baseline: str = "sap", tolerance: float = TOLERANCE
) -> dict[str, Any]:
    """The frontier (``frontier.json``) and the paired statistics of ``comparison`` (the
    content of ``comparison.json``, with its ``runs``). ``baseline``: the method every other
    is paired with, point by point as :func:`matching` pairs them;
    ``tolerance``: in points of validation accuracy below the dense network's."""
    runs = comparison["runs"]
    frontier = points(runs)
    for i in pareto_front(frontier):
        frontier[i]["pareto"] = True
    # The tolerance is to the dense network, so only the runs that trained one say what it is.
    dense = [r for r in runs if trained_dense(r)]
    dense_val = _mean([r["dense_val_accuracy"] for r in dense])
    dense_test = _mean([r["dense_test_accuracy"] for r in dense])
    cheapest = cheapest_within(frontier, dense_val, tolerance) if dense_val is not None else {}
    base_cheapest = cheapest.get(baseline)
    summary = {}
    for method, point in cheapest.items():
        relative = None
        if point is not None and base_cheapest is not None:
            base_cost = base_cheapest["cost_dense_epochs"]["mean"]
            relative = point["cost_dense_epochs"]["mean"] / base_cost if base_cost else None
        summary[method] = {"point": point, f"cost_vs_{baseline}": relative}
    bases = [p for p in frontier if p["method"] == baseline]
    pairs = []
    for point in frontier:
        found = matching(point["params"], [b["params"] for b in bases])
        if point["method"] == baseline or found is None:
            continue
        own = [r for r in runs if _key(r) == _key(point)]
        result = paired(own, [r for r in runs if _key(r) == _key(bases[found])])
        if result is not None:
            pairs.append({"method": point["method"], "params": point["params"],
                          "baseline_params": bases[found]["params"], **result})  # fmt: skip
    return {
        "baseline": baseline,
        "tolerance_points": tolerance,
        "dense": {"val_accuracy": dense_val, "test_accuracy": dense_test},
        "points": frontier,
        "cheapest_within_tolerance": summary,
        "paired": pairs,
    }
