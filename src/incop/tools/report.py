"""The report of a comparison folder (METHOD.md sections 7, 10.2): figures in ``plots/``,
``frontier.json`` / ``frontier.png`` where a method has several points, ``report.md`` and a
self-contained ``report.html``, made from what the comparison wrote, without training.

Every number in the text is formatted from ``comparison.json`` (its statistics are
recomputed, by :func:`incop.tools.study.analyse`, only when ``--baseline`` or
``--tolerance`` ask for others); the runs' ``config.yaml`` give each method's settings and
their ``metrics.jsonl`` the per-epoch flow distances. Markdown and HTML are rendered from one
list of blocks, so they cannot disagree.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from incop.config import MAX_SEED, METHODS
from incop.engine.folders import OwnedFolder
from incop.errors import UserError
from incop.methods.stopping import STOPPING_RULES
from incop.tools.compare import (
    DEFAULT_METHODS,
    PLAN_FILE,
    Variant,
    check_analysis,
    mean_std,
    open_comparison,
    plan_variants,
    run_folder,
    take_up,
)
from incop.tools.study import analyse

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D


#: Settings left out of the config block and of the per-method settings: the method names each
#: row already, seed and out differ from run to run.
PER_RUN = ("method", "seed", "out")
#: Summary columns: header, key in a point's "totals", scale, decimals.
SUMMARY_COLUMNS = (
    ("epochs (fine-tune incl.)", "epochs", 1, 1),
    ("cost (dense epochs)", "cost_dense_epochs", 1, 1),
    ("remaining (%)", "final_remaining_fraction", 100, 2),
    ("val acc (%)", "final_accuracy", 100, 2),
    ("test acc (%)", "final_test_accuracy", 100, 2),
    ("wall (s)", "wall_seconds", 1, 1),
)
#: Time columns: header, key in a point's "totals", scale, decimals.
TIME_COLUMNS = (
    ("retraining epochs", "retrain_epochs", 1, 1),
    ("fine-tune epochs", "finetune_epochs", 1, 1),
    ("train (s)", "train_seconds", 1, 2),
    ("eval (s)", "eval_seconds", 1, 2),
    ("flow (s)", "flow_seconds", 1, 2),
    ("wall (s)", "wall_seconds", 1, 2),
)
#: Ratio columns, shown for the first of these baselines the comparison ran: header, key.
RATIO_KEYS = (("epochs", "epochs"), ("cost", "cost"), ("wall", "wall"))
#: Per-level columns: header, key in a method's "levels" entries, scale, decimals.
LEVEL_COLUMNS = (
    ("remaining (%)", "remaining_fraction", 100, 2),
    ("epochs", "epochs", 1, 1),
    ("val accuracy (%)", "val_accuracy", 100, 2),
    ("test accuracy (%)", "test_accuracy", 100, 2),
)
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "incop",  # fixed SVG element ids, so reports are reproducible
}
DPI = 150
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
CSS = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.55rem; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
pre { background: #f6f6f6; padding: 0.8rem; overflow-x: auto; font-size: 0.85rem; }
img { max-width: 100%; }
"""

Block = tuple  # ("h", level, text) | ("p", text) | ("code", text) | ("table", header, rows)
#              | ("img", alt, path in the folder) | ("open", summary) ... ("close",): collapsed


def write_report(
    folder: str | Path, *, baseline: str | None = None, tolerance: float | None = None
) -> Path:
    """Write ``plots/``, ``report.md`` and ``report.html`` into the comparison ``folder``
    (and ``frontier.json`` / ``frontier.png`` where a method has several points); return the
    path of ``report.md``. Every file it reads is first checked against the comparison's
    manifest, and the points and seeds in ``comparison.json`` against its plan, so a changed
    or swapped file is refused, naming it. ``baseline`` / ``tolerance``: pair and tolerate
    otherwise than the comparison did (its statistics in ``comparison.json`` are rewritten)."""
    folder = Path(folder)
    path = folder / "comparison.json"
    if not path.is_file():
        raise UserError(f"{folder} is not a comparison folder: expected {path}")
    owned = open_comparison(folder, "update")
    owned.open()
    try:
        take_up(owned)
        return _write_report(owned, baseline, tolerance)
    finally:
        owned.close()


def _write_report(owned: OwnedFolder, baseline: str | None, tolerance: float | None) -> Path:
    from incop.engine.outputs import to_json

    folder = owned.root
    comparison = json.loads(owned.verify("comparison.json").read_text())
    variants = _check_names(owned, comparison)
    if baseline is not None or tolerance is not None or "analysis" not in comparison:
        if "runs" in comparison:
            held = comparison.get("analysis", {})
            baseline = baseline or held.get("baseline", "sap")
            tolerance = tolerance if tolerance is not None else held.get("tolerance_points", 0.5)
            check_analysis([v.method for v in variants], baseline, tolerance)
            comparison["analysis"] = analyse(comparison, baseline, tolerance)
            owned.write_bytes("comparison.json", to_json(comparison, indent=2).encode())
    runs = _read_runs(owned, comparison, variants)
    styles = _styles(variants)
    figures = {
        "accuracy": _accuracy_figure(comparison, styles),
        "sparsity": sparsity_figure(comparison, styles),
        "epochs": _epochs_figure(comparison, styles),
        "time": _time_figure(comparison, styles),
        "distance": _distance_figure(runs, styles),
    }
    images = {}
    for stem, figure in figures.items():
        if figure is not None:
            save_figure(figure, owned, stem)
            images[stem] = f"plots/{stem}.png"
    analysis = comparison.get("analysis")
    families = [v.method for v in variants]
    if analysis and any(families.count(m) > 1 for m in families):
        owned.write_bytes("frontier.json", to_json(_frontier_file(analysis), indent=2).encode())
        owned.write_bytes("frontier.png", figure_bytes(cost_figure(analysis, styles), "png"))
        images = {"frontier": "frontier.png", **images}
    blocks = _blocks(comparison, runs, images)
    owned.write_bytes("report.md", _markdown(blocks).encode())
    owned.write_bytes("report.html", _html(blocks, folder).encode())
    return folder / "report.md"


def _frontier_file(analysis: dict[str, Any]) -> dict[str, Any]:
    """``frontier.json``: the points (with ``pareto`` marking the front), the dense network,
    and each method's cheapest point within the tolerance."""
    keys = ("baseline", "tolerance_points", "dense", "points", "cheapest_within_tolerance")
    return {"cost_unit": "dense training epochs (cost.search)", **{k: analysis[k] for k in keys}}


def _check_names(owned: OwnedFolder, comparison: Any) -> list[Variant]:
    """The points and seeds ``comparison.json`` names must be the ones the plan makes (they
    become paths that are read); returns the plan's points."""
    plan = yaml.safe_load(owned.verify(PLAN_FILE).read_text())
    where = owned.root / "comparison.json"
    methods, seeds = comparison.get("methods"), comparison.get("seeds")
    if not isinstance(methods, dict) or not isinstance(seeds, list):
        raise UserError(f"{where} lacks its methods or seeds; it is not a comparison's")
    planned = [m for m in plan.get("methods", []) if m in METHODS]
    variants = plan_variants(planned, plan.get("sweep") or {}, plan.get("settings") or {})
    names = {v.name: v for v in variants}
    for name in methods:
        if name not in names:
            raise UserError(f"{where} names the method {name!r}, which this comparison did not run")
    for seed in seeds:
        if not (isinstance(seed, int) and 0 <= seed <= MAX_SEED) or seed not in plan["seeds"]:
            raise UserError(f"{where} names the seed {seed!r}, which this comparison did not run")
    return [names[name] for name in methods]


# --- reading ------------------------------------------------------------------------------------


def _read_runs(
    owned: OwnedFolder, comparison: dict[str, Any], variants: Sequence[Variant]
) -> dict[str, list[dict[str, Any]]]:
    """Point name -> per seed ``{"config": ..., "metrics": [...]}``, each file checked first."""
    from incop.engine.outputs import read_metrics

    runs: dict[str, list[dict[str, Any]]] = {}
    for variant in variants:
        runs[variant.name] = []
        for seed in comparison["seeds"]:
            run = run_folder(owned.root, variant, seed).relative_to(owned.root).as_posix()
            config, metrics = (
                owned.verify(f"{run}/{name}", needed_by="the report")
                for name in ("config.yaml", "metrics.jsonl")
            )
            runs[variant.name].append(
                {"config": yaml.safe_load(config.read_text()), "metrics": read_metrics(metrics)}
            )
    return runs


def _varying(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Config keys whose value differs between methods."""
    configs = [seeds[0]["config"] for seeds in runs.values()]
    keys = [k for k in configs[0] if k not in PER_RUN]
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def _measures_flow(stop: str | None) -> bool:
    """Whether runs stopped by ``stop`` logged a flow distance worth a figure."""
    return stop in STOPPING_RULES and STOPPING_RULES.get(stop).needs_probe


def _distance_segments(metrics: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per retraining level, the distance per epoch, mean and std over the seeds that reached
    that epoch. ``x`` counts retraining epochs from level 1 on; a level starts where the
    longest seed's previous level ended, so seeds stay aligned on level boundaries."""
    by_level: dict[int, dict[int, list[float]]] = {}
    for records in metrics:
        for r in records:
            if r["level"] > 0 and r.get("distance") is not None:
                by_level.setdefault(r["level"], {}).setdefault(r["epoch"], []).append(r["distance"])
    segments, offset = [], 0
    for level in sorted(by_level):
        epochs = sorted(by_level[level])
        stats = [mean_std(by_level[level][e]) for e in epochs]
        segments.append(
            {
                "level": level,
                "start": offset,
                "x": [offset + e for e in epochs],
                "mean": [s["mean"] for s in stats],
                "std": [s["std"] for s in stats],
            }
        )
        offset += epochs[-1]
    return segments


# --- figures ------------------------------------------------------------------------------------


def _styles(variants: Sequence[Variant | str]) -> dict[str, dict[str, Any]]:
    """Colour and marker per point. A method keeps its colour in every report (its swept
    points share it, told apart by marker); the marker also tells apart methods whose
    curves coincide (SAP-based methods often prune alike)."""
    from matplotlib import colormaps

    variants = [Variant(v) if isinstance(v, str) else v for v in variants]
    families = [v.method for v in variants]
    order = list(DEFAULT_METHODS) + [m for m in dict.fromkeys(families) if m not in DEFAULT_METHODS]
    # Past ten families, twenty colours: none repeats (a method's colour then varies).
    palette = colormaps["tab10" if len(order) <= 10 else "tab20"].colors
    styles = {}
    for variant in variants:
        i = order.index(variant.method)
        siblings = [v for v in variants if v.method == variant.method]
        j = i if len(siblings) == 1 else siblings.index(variant)
        styles[variant.name] = {"color": palette[i % len(palette)],
                                "marker": MARKERS[j % len(MARKERS)]}  # fmt: skip
    return styles


def _band(ax, x, mean, std, style: dict[str, Any], **line) -> Line2D:
    """A mean line with a band of one standard deviation either side."""
    (handle,) = ax.plot(x, mean, **style, **line)
    low = [m - s for m, s in zip(mean, std, strict=True)]
    high = [m + s for m, s in zip(mean, std, strict=True)]
    ax.fill_between(x, low, high, color=style["color"], alpha=0.15, linewidth=0)
    return handle


def _figure(width: float = 7.5, height: float = 4.5) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def figure_bytes(figure: Figure, fmt: str) -> bytes:
    """``figure`` as a ``png`` or ``svg`` file's bytes, in the report's style."""
    from matplotlib import rc_context

    buffer = io.BytesIO()
    with rc_context(STYLE):
        # No date in the metadata: the same folder gives the same files.
        metadata = {"Date": None} if fmt == "svg" else None
        figure.savefig(buffer, format=fmt, dpi=DPI, metadata=metadata)
    return buffer.getvalue()


def save_figure(figure: Figure, owned: OwnedFolder, stem: str) -> None:
    """``figure`` as ``plots/<stem>.png`` and ``.svg`` in the folder ``owned``, each written
    through a temporary name."""
    for fmt in ("png", "svg"):
        owned.write_bytes(f"plots/{stem}.{fmt}", figure_bytes(figure, fmt))


def _remaining_axis(ax) -> None:
    """Remaining weights in %, log scale (the field's standard), dense at the left."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.invert_xaxis()
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("remaining weights (%, log scale; dense at the left)")


def _stat(entry: dict[str, Any], key: str, scale: float = 1) -> tuple[float, float]:
    return entry[key]["mean"] * scale, entry[key]["std"] * scale


def _accuracy_figure(comparison: dict[str, Any], styles: dict[str, Any]) -> Figure:
    """Accuracy against remaining weights (log x, the field's standard): test split solid,
    validation split dashed, one point per level; the dense network's test accuracy a black
    line, a fine-tuned final ticket a filled marker."""
    from matplotlib import rc_context
    from matplotlib.lines import Line2D

    with rc_context(STYLE):
        fig = _figure()
        ax = fig.add_subplot()
        handles = []
        for method, entry in comparison["methods"].items():
            levels = entry["levels"]
            x = [lv["remaining_fraction"]["mean"] * 100 for lv in levels]
            for key, dashes in (("test_accuracy", "-"), ("val_accuracy", "--")):
                if any(lv.get(key, {}).get("mean") is None for lv in levels):
                    continue
                mean, std = zip(*[_stat(lv, key, 100) for lv in levels], strict=True)
                _band(ax, x, mean, std, {**styles[method], "linestyle": dashes}, markersize=5,
                      fillstyle="none")  # fmt: skip
            handles.append(Line2D([], [], **styles[method], label=method))
            totals = entry["totals"]
            if totals["finetune_epochs"]["mean"] and totals["final_test_accuracy"]["mean"]:
                fx = totals["final_remaining_fraction"]["mean"] * 100
                fy = totals["final_test_accuracy"]["mean"] * 100
                ax.plot([fx], [fy], color=styles[method]["color"], markersize=8,
                        marker=styles[method]["marker"], linestyle="none")  # fmt: skip
        dense = next(iter(comparison["methods"].values()))["levels"][0]
        if dense["test_accuracy"]["mean"] is not None:
            ax.axhline(dense["test_accuracy"]["mean"] * 100, color="black", linewidth=0.8)
        _remaining_axis(ax)
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Accuracy against remaining weights (mean ± std over seeds)")
        splits = [
            Line2D([], [], color="grey", label="test split"),
            Line2D([], [], color="grey", linestyle="--", label="validation split"),
            Line2D([], [], color="black", linewidth=0.8, label="dense network (test)"),
            Line2D([], [], color="grey", marker="o", markersize=8, linestyle="none",
                   label="fine-tuned ticket (test)"),
        ]  # fmt: skip
        fig.legend(handles=handles + splits, loc="outside lower center", ncols=4)
    return fig


def sparsity_figure(
    comparison: dict[str, Any], styles: dict[str, Any] | None = None
) -> Figure | None:
    """Accuracy against sparsity: every trained ticket's test accuracy against its
    remaining weights (log x), so IMP levels, one-shot tickets (pruned at init) and random
    share one picture (Blalock et al. 2020). A method's levels are joined by a line; its
    fine-tuned final ticket, where there is one, is a filled marker; untrained networks
    (level 0 of a method without warm-up) are left out. None without test data.
    ``comparison``: as in ``comparison.json`` (or several merged, methods renamed apart)."""
    from matplotlib import rc_context

    styles = styles or _styles(list(comparison["methods"]))
    points = []
    for method, entry in comparison["methods"].items():
        trained = [
            lv for lv in entry["levels"]
            if (lv["level"] > 0 or lv["epochs"]["mean"] > 0)
            and lv["test_accuracy"]["mean"] is not None
        ]  # fmt: skip
        if trained:
            points.append((method, entry, trained))
    if not points:
        return None
    with rc_context(STYLE):
        fig = _figure()
        ax = fig.add_subplot()
        for method, entry, trained in points:
            x = [lv["remaining_fraction"]["mean"] * 100 for lv in trained]
            y, err = zip(*[_stat(lv, "test_accuracy", 100) for lv in trained], strict=True)
            ax.errorbar(x, y, yerr=err, **styles[method], label=method, markersize=5,
                        fillstyle="none", capsize=2)  # fmt: skip
            totals = entry["totals"]
            if totals["finetune_epochs"]["mean"] and totals["final_test_accuracy"]["mean"]:
                fx = totals["final_remaining_fraction"]["mean"] * 100
                fy, ferr = _stat(totals, "final_test_accuracy", 100)
                ax.errorbar([fx], [fy], yerr=[ferr], color=styles[method]["color"],
                            marker=styles[method]["marker"], markersize=7, capsize=2)  # fmt: skip
        _remaining_axis(ax)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Test accuracy of every trained ticket (filled: fine-tuned)")
        fig.legend(loc="outside lower center", ncols=4)
    return fig


def cost_figure(
    analysis: dict[str, Any], styles: dict[str, Any], band: float | None = None
) -> Figure:
    """The cost frontier: each point's final test accuracy (filled; validation hollow, beside)
    against what finding and training its ticket cost (``cost.search``, dense training
    epochs), mean over seeds with one std as error bars; each method's points joined in
    order of cost; the Pareto front (chosen on validation) ringed in black; the dense
    network's test accuracy a black line, and the bar the cheapest points had to clear (its
    validation accuracy minus the tolerance) a dashed one. One panel per final sparsity
    (remaining weights to two significant digits: 77 %, 9.8 %) where the points end at
    different sparsities. ``band`` (points): show only that far below the bar, so that a
    collapsed method does not squash the others into a line; what falls below is named at
    the bottom with its accuracy."""
    from matplotlib import rc_context

    panels: dict[float, list[dict[str, Any]]] = {}
    for point in analysis["points"]:
        if point["cost_dense_epochs"]["mean"] is None:
            continue
        remaining = float(f"{point['remaining_fraction']['mean'] * 100:.2g}")
        panels.setdefault(remaining, []).append(point)
    dense = analysis["dense"]["test_accuracy"]
    with rc_context(STYLE):
        fig = _figure(7.5, 1.2 + 3.6 * max(1, len(panels)))
        axes = fig.subplots(max(1, len(panels)), 1, squeeze=False)[:, 0]
        for ax, (remaining, shown) in zip(axes, sorted(panels.items(), reverse=True), strict=False):
            families: dict[str, list[dict[str, Any]]] = {}
            for point in shown:
                families.setdefault(point["method"], []).append(point)
            for method, family in families.items():
                family.sort(key=lambda p: p["cost_dense_epochs"]["mean"])
                x = [p["cost_dense_epochs"]["mean"] for p in family]
                for key, fill in (("test_accuracy", "full"), ("val_accuracy", "none")):
                    if any(p[key]["mean"] is None for p in family):
                        continue
                    y = [p[key]["mean"] * 100 for p in family]
                    err = [p[key]["std"] * 100 for p in family]
                    colour = styles[_name(family[0])]["color"]
                    ax.errorbar(x, y, yerr=err, color=colour, linestyle="-" if fill == "full"
                                else ":", marker="o", fillstyle=fill, markersize=5, capsize=2,
                                label=method if fill == "full" else None)  # fmt: skip
            front = [p for p in shown if p.get("pareto") and p["test_accuracy"]["mean"] is not None]
            if front:
                ax.plot([p["cost_dense_epochs"]["mean"] for p in front],
                        [p["test_accuracy"]["mean"] * 100 for p in front], linestyle="none",
                        marker="o", markersize=11, fillstyle="none", color="black",
                        label="Pareto front (on validation)")  # fmt: skip
            if dense is not None:
                ax.axhline(dense * 100, color="black", linewidth=0.8, label="dense network (test)")
            bar = analysis["dense"]["val_accuracy"]
            if bar is not None:
                bar = 100 * bar - analysis["tolerance_points"]
                ax.axhline(bar, color="black", linewidth=0.8, linestyle="--",
                           label="dense validation − tolerance")  # fmt: skip
            if band is not None and bar is not None:
                keys = ("test_accuracy", "val_accuracy")
                seen = [(p, 100 * p[k]["mean"], 100 * (p[k]["std"] or 0))
                        for p in shown for k in keys if p[k]["mean"] is not None]  # fmt: skip
                low = bar - band
                ax.set_ylim(low, max(bar, *(mean + std for _, mean, std in seen)) + 0.2)
                below = {_name(p): p for p, mean, _ in seen if mean < low}
                if below:
                    note = ", ".join(f"{name} {100 * p['test_accuracy']['mean']:.1f} % test"
                                     for name, p in below.items())  # fmt: skip
                    ax.text(0.01, 0.02, f"below the scale: {note}", transform=ax.transAxes,
                            fontsize=8)  # fmt: skip
            ax.set_xlabel("cost of finding and training the ticket (dense training epochs)")
            ax.set_ylabel("final accuracy (%)")
            ax.set_title(f"Final ticket at about {remaining:g} % remaining: test filled,"
                         " validation hollow")  # fmt: skip
        # One legend for every panel, below them: it must not hide points.
        labels: dict[str, Any] = {}
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                labels.setdefault(label, handle)
        fig.legend(list(labels.values()), list(labels), loc="outside lower center", ncols=4,
                   fontsize=8)  # fmt: skip
    return fig


def _name(point: dict[str, Any]) -> str:
    return Variant(point["method"], tuple(point["params"].items())).name


def _epochs_figure(comparison: dict[str, Any], styles: dict[str, Any]) -> Figure:
    """Grouped bars: methods with equal epochs (LTH and SAP run every level to the cap)
    would hide each other as lines."""
    from matplotlib import rc_context
    from matplotlib.ticker import MaxNLocator

    methods = comparison["methods"]
    with rc_context(STYLE):
        fig = _figure()
        ax = fig.add_subplot()
        width = 0.8 / len(methods)
        for i, (method, entry) in enumerate(methods.items()):
            levels = entry["levels"][1:]  # level 0 is the shared warm-up
            x = [lv["level"] - 0.4 + width * (i + 0.5) for lv in levels]
            mean, std = zip(*[_stat(lv, "epochs") for lv in levels], strict=True)
            ax.bar(x, mean, width, yerr=std, color=styles[method]["color"], label=method, capsize=2)
        ax.set_xlabel("pruning level")
        ax.set_ylabel("retraining epochs")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(axis="x", visible=False)
        ax.set_title("Retraining epochs per level (mean ± std over seeds)")
        fig.legend(loc="outside lower center", ncols=min(len(methods), 5))
    return fig


def _time_figure(comparison: dict[str, Any], styles: dict[str, Any]) -> Figure:
    from matplotlib import rc_context
    from matplotlib.patches import Patch

    methods = comparison["methods"]
    parts = (  # total-time part, legend label, bar style
        ("train_seconds", "training", {"alpha": 1.0}),
        ("eval_seconds", "evaluation", {"alpha": 0.5}),
        ("flow_seconds", "flow", {"alpha": 0.25, "hatch": "///", "edgecolor": "black"}),
    )
    with rc_context(STYLE):
        fig = _figure()
        ax = fig.add_subplot()
        for i, (method, entry) in enumerate(methods.items()):
            colour, bottom = styles[method]["color"], 0.0
            for key, _, style in parts:
                value = entry["totals"][key]["mean"]
                ax.bar(i, value, 0.6, bottom=bottom, color=colour, linewidth=0, **style)
                bottom += value
            wall, std = _stat(entry["totals"], "wall_seconds")
            # Times are positive: the bar's lower whisker stops at zero.
            ax.errorbar(i, wall, yerr=[[min(std, wall)], [std]], color="black", capsize=4)
            ax.annotate(
                f"{wall:.3g} s",
                (i, wall + std),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=8,
            )
        ax.set_xticks(range(len(methods)), list(methods), rotation=30 if len(methods) > 5 else 0,
                      ha="right" if len(methods) > 5 else "center")  # fmt: skip
        ax.set_ylabel("time (s)")
        # Room above the tallest whisker for its label (margins alone clip it).
        top = max(sum(_stat(e["totals"], "wall_seconds")) for e in methods.values())
        ax.set_ylim(0, top * 1.18 or 1)
        ax.grid(axis="x", visible=False)
        ax.set_title("Retraining time per method (shared warm-up excluded; mean ± std)")
        legend = [Patch(facecolor="grey", label=label, **style) for _, label, style in parts]
        fig.legend(handles=legend, loc="outside lower center", ncols=3)
    return fig


def _distance_figure(
    runs: dict[str, list[dict[str, Any]]], styles: dict[str, Any]
) -> Figure | None:
    from matplotlib import rc_context
    from matplotlib.ticker import MaxNLocator

    flows = {}
    for method, seeds in runs.items():
        if _measures_flow(seeds[0]["config"].get("stop")):
            segments = _distance_segments([s["metrics"] for s in seeds])
            if segments:
                flows[method] = (seeds[0]["config"], segments)
    if not flows:
        return None
    with rc_context(STYLE):
        fig = _figure(7.5, 1.0 + 3.0 * len(flows))
        for ax, (method, (config, segments)) in zip(
            fig.subplots(len(flows), 1, squeeze=False)[:, 0], flows.items(), strict=True
        ):
            for seg in segments:
                _band(ax, seg["x"], seg["mean"], seg["std"], styles[method], markersize=3)
                ax.axvline(seg["start"], color="grey", linestyle=":", linewidth=0.8)
            ax.axhline(config["eps"], color="black", linestyle="--", linewidth=1)
            ax.annotate(
                f"ε = {config['eps']:g}",
                (1, config["eps"]),
                xycoords=("axes fraction", "data"),
                xytext=(-4, -3),
                textcoords="offset points",
                ha="right",
                va="top",
                fontsize=8,
            )
            values = [v for seg in segments for v in seg["mean"]] + [config["eps"]]
            if min(values) > 0:  # distances can sit orders of magnitude below eps
                ax.set_yscale("log")
            ax.set_ylabel(f"{config['stop'].upper()} distance ({config['distance']})")
            ax.set_xlabel("retraining epochs, cumulative over levels")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            top = ax.secondary_xaxis("top")
            top.set_xticks(
                [(s["x"][0] + s["x"][-1]) / 2 for s in segments],
                [str(s["level"]) for s in segments],
            )
            top.tick_params(length=0, labelsize=8)
            top.set_xlabel("level", fontsize=9)
            ax.set_title(f"{method}: flow distance per epoch (mean ± std over seeds)")
    return fig


# --- text ---------------------------------------------------------------------------------------


def _cell(entry: dict[str, Any], key: str, scale: float, decimals: int, spread: bool = True) -> str:
    """``mean ± std``; the mean alone where ``spread`` is False (a single seed)."""
    if entry.get(key, {}).get("mean") is None:
        return "–"
    mean, std = _stat(entry, key, scale)
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}" if spread else f"{mean:.{decimals}f}"


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items()) or "–"


def _ratio(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}"


def interval_cell(stat: dict[str, Any] | None, decimals: int = 2) -> str:
    """A paired difference as ``mean [low, high]``, ', not resolved' where it holds 0."""
    if stat is None:
        return "–"
    low, high = stat["interval"]
    verdict = "" if stat["resolved"] else ", not resolved"
    return f"{stat['mean']:+.{decimals}f} [{low:+.{decimals}f}, {high:+.{decimals}f}]{verdict}"


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items()) or "–"


def _protocol(config: dict[str, Any]) -> str:
    """The protocol controls, as a sentence."""
    counts = config.get("prune_counts", "adaptive")
    counts = (f"frozen to those of {config.get('counts_from')}" if counts == "frozen"
              else "adaptive (each pruner decides)")  # fmt: skip
    finetune = config.get("finetune_epochs", 0)
    start = config.get("finetune_from", "last")
    tuned = (f"{finetune} fine-tune epochs from the {'last level' if start == 'last' else 'dense'}"
             " weights" if finetune else "no fine-tune")  # fmt: skip
    return f"Prune counts: {counts}; {tuned}."


def _statistics(comparison: dict[str, Any]) -> list[Block]:
    """The cheapest point within the tolerance, paired differences, and what a split
    resolves (every number from ``comparison.json``'s analysis and runs)."""
    analysis = comparison.get("analysis")
    if not analysis:
        return []
    base, tolerance = analysis["baseline"], analysis["tolerance_points"]
    dense = analysis["dense"]["val_accuracy"]
    blocks: list[Block] = [("h", 2, "Statistics")]
    runs = comparison.get("runs", [])
    sizes = comparison.get("split_sizes") or {}
    ses = [(r["val_se"], r["test_se"]) for r in runs if r["val_se"] is not None]
    if ses and sizes:
        val_se = max(v for v, _ in ses) * 100
        test_se = max(t for _, t in ses if t is not None) * 100 if ses[0][1] is not None else None
        tested = (
            f" and {sizes['test']} test examples (up to {test_se:.2f} points)" if test_se else ""
        )
        blocks.append(("p", f"One run's accuracy is measured on {sizes['val']} validation examples"
                       f" (binomial standard error up to {val_se:.2f} points){tested}: a"
                       " difference of less than about twice that between two runs is within"
                       " the noise of the split."))  # fmt: skip
    if dense is not None:
        rows = []
        for method, held in analysis["cheapest_within_tolerance"].items():
            point = held["point"]
            if point is None:
                rows.append([method, "none within the tolerance", "–", "–", "–", "–"])
                continue
            rows.append([method, _params(point["params"]),
                         f"{point['cost_dense_epochs']['mean']:.2f}",
                         f"{point['val_accuracy']['mean'] * 100:.2f}",
                         "–" if point["test_accuracy"]["mean"] is None
                         else f"{point['test_accuracy']['mean'] * 100:.2f}",
                         _ratio(held.get(f"cost_vs_{base}"))])  # fmt: skip
        blocks += [
            ("p", f"Each method's cheapest point whose mean final validation accuracy is within"
             f" {tolerance:g} points of the dense network's ({dense * 100:.2f} %), chosen on"
             " validation; test accuracy beside it."),
            ("table", ["method", "point", "cost (dense epochs)", "val acc (%)", "test acc (%)",
                       f"cost / {base}"], rows),
        ]  # fmt: skip
    if analysis["paired"]:
        blocks += [
            ("p", f"Paired per-seed differences against {base} (the point of {base} with the"
             " same swept values): mean and 95% bootstrap interval (10,000 resamples, seeded);"
             " 'not resolved' where the interval holds 0. With few seeds the interval is as"
             " wide as the seeds' spread: it says what these seeds can tell apart."),
            ("table", ["method", "point", f"{base} point", "seeds", "Δ test acc (points)",
                       "Δ cost (dense epochs)"],
             [[p["method"], _params(p["params"]), _params(p["baseline_params"]),
               str(len(p["seeds"])), interval_cell(p["test_accuracy_points"], 2),
               interval_cell(p["cost_dense_epochs"], 2)] for p in analysis["paired"]]),
        ]  # fmt: skip
    else:
        families = {r["method"] for r in comparison.get("runs", [])}
        why = ("it was not run" if base not in families else
               f"no other point has one point of {base} with its swept values")  # fmt: skip
        blocks.append(("p", f"No paired statistics against {base}: {why}."))
    return blocks


def _blocks(
    comparison: dict[str, Any], runs: dict[str, list[dict[str, Any]]], images: dict[str, str]
) -> list[Block]:
    methods = comparison["methods"]
    config = comparison["config"]
    varying = _varying(runs)
    shared = {k: v for k, v in config.items() if k not in (*PER_RUN, *varying)}
    warmup = comparison["warmup_seconds"]
    spread = len(comparison["seeds"]) > 1
    # The dense network of the methods that train one (RigL, SET and pruning at init do not).
    trained, untrained = [], []
    for entry in methods.values():
        has_dense = entry["totals"]["dense_accuracy"]["mean"] is not None
        (trained if has_dense else untrained).append(entry)
    sparse = list(dict.fromkeys(e["method"] for e in untrained))
    if not trained:
        warmup_text = "no method trains a dense network"
    else:
        dense = _cell(trained[0]["totals"], "dense_accuracy", 100, 2, spread)
        who = "every method" if not sparse else "every method that trains a dense network"
        warmup_text = (
            f"{who} of a seed is pruned from the same dense warm-up (validation accuracy {dense} %)"
        )
        if sparse:
            warmup_text += f"; {', '.join(sparse)} train sparse from initialisation"
    families = list(dict.fromkeys(e.get("method", name) for name, e in methods.items()))
    base = next((b for b in ("sap", "lth") if b in families), None)
    ratio_columns = [(f"{label} / {base}", f"{key}_vs_{base}") for label, key in RATIO_KEYS]
    ratio_columns = ratio_columns if base else []
    blocks: list[Block] = [
        ("h", 1, f"IMP comparison: {config['model']} on {config['dataset']}"),
        (
            "p",
            f"{len(families)} methods ({', '.join(families)}) in {len(methods)} points, seeds "
            f"{', '.join(map(str, comparison['seeds']))}; {warmup_text}. {_protocol(config)}",
        ),
        ("h", 2, "Summary"),
        (
            "p",
            ("Mean ± standard deviation over seeds. " if spread else "One seed. ")
            + "Validation accuracy is on the validation split held out of the training data,"
            " which made every decision; test accuracy is on the test split, which decided"
            " nothing. Final numbers are the fine-tuned ticket's when there is a fine-tune."
            " Epochs: retraining (levels 1 and up) plus the fine-tune; cost: what finding and"
            " training the ticket cost, warm-up included, in dense training epochs of FLOPs;"
            " wall: retraining, evaluation and flows, the shared warm-up left out."
            + (f" Ratios are of the means, against {base}." if base else "")
            + " 'Stopped by' counts why retraining levels ended, over every seed.",
        ),
        (
            "table",
            [
                "method",
                "trials",
                *(c[0] for c in SUMMARY_COLUMNS),
                *(c[0] for c in ratio_columns),
                "stopped by",
            ],
            [
                [
                    method,
                    str(entry["trials"]),
                    *(_cell(entry["totals"], *c[1:], spread) for c in SUMMARY_COLUMNS),
                    *(_ratio(comparison["ratios"][method].get(key)) for _, key in ratio_columns),
                    _reasons(entry.get("stopped_by", {})),
                ]
                for method, entry in methods.items()
            ],
        ),  # fmt: skip
        *_statistics(comparison),
        ("h", 2, "Figures"),
    ]
    captions = {
        "frontier": "The cost frontier: each point's final accuracy (test filled, validation"
        " hollow) against what finding and training its ticket cost, in dense training epochs;"
        " ringed: the Pareto front, chosen on validation; the black line is the dense"
        " network's test accuracy.",
        "accuracy": "Accuracy against remaining weights, one point per level: test split "
        "solid, validation split dashed; the black line is the dense network, filled markers "
        "the fine-tuned tickets.",
        "sparsity": "Test accuracy (test split) of every trained ticket against its remaining"
        " weights, error bars one std over seeds; filled markers are fine-tuned final tickets."
        " Tickets pruned at initialisation are single points.",
        "epochs": "Retraining epochs per level.",
        "time": "Retraining time per method, split into training, evaluation and flow "
        "computation; the error bar is the std of the total.",
        "distance": "Flow distance to the dense network per retraining epoch; dotted lines mark "
        "level boundaries, the dashed line the stopping threshold ε.",
    }
    for stem, path in images.items():
        blocks += [("img", f"{stem} figure", path), ("p", captions[stem])]
    blocks += [
        ("h", 2, "Time"),
        ("table", ["method", *(c[0] for c in TIME_COLUMNS)],
         [[m, *(_cell(e["totals"], *c[1:], spread) for c in TIME_COLUMNS)]
          for m, e in methods.items()]),
        ("h", 2, "Per level"),
    ]  # fmt: skip
    for method, entry in methods.items():
        blocks += [
            ("h", 3, method),
            (
                "table",
                ["level", *(c[0] for c in LEVEL_COLUMNS), "stop"],
                [
                    [
                        "0 (dense)" if lv["level"] == 0 else str(lv["level"]),
                        *(_cell(lv, *c[1:], spread) for c in LEVEL_COLUMNS),
                        _reasons(lv.get("stop_reasons", {})),
                    ]
                    for lv in entry["levels"]
                ],
            ),
        ]
    blocks += [("open", "Setup: the config, the hardware, the time"),
               ("p", "Config shared by every method (seed and output folder are per run):"),
               ("code", yaml.safe_dump(shared, sort_keys=False).rstrip())]  # fmt: skip
    if varying:
        blocks += [
            ("p", f"Settings that vary per point: {', '.join(varying)}."),
            (
                "table",
                ["method", *varying],
                [
                    [m, *(str(seeds[0]["config"].get(k)) for k in varying)]
                    for m, seeds in runs.items()
                ],
            ),
        ]
    blocks += [
        ("p", "Hardware and software:"),
        (
            "table",
            ["", "value"],
            [[k, str(v)] for k, v in comparison["hardware"].items()]
            + [[f"incop {k}", str(v)] for k, v in comparison.get("incop", {}).items()],
        ),
        (
            "p",
            f"Total time of the comparison: {comparison['total_seconds']:.1f} s, including the "
            f"shared dense warm-up of {warmup['mean']:.2f} ± {warmup['std']:.2f} s per seed.",
        ),
        ("close",),
    ]
    return blocks


def _markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        match block:
            case ("h", level, text):
                out.append(f"{'#' * level} {text}")
            case ("p", text):
                out.append(text)
            case ("code", text):
                out.append(f"```yaml\n{text}\n```")
            case ("table", header, rows):
                lines = [header, ["---"] * len(header), *rows]
                out.append(
                    "\n".join(
                        "| " + " | ".join(c.replace("|", r"\|") for c in line) + " |"
                        for line in lines
                    )
                )
            case ("img", alt, path):
                out.append(f"![{alt}]({path})")
            case ("open", summary):
                out.append(f"<details><summary>{html.escape(summary)}</summary>")
            case ("close",):
                out.append("</details>")
    return "\n\n".join(out) + "\n"


def _html(blocks: list[Block], folder: Path) -> str:
    esc = html.escape
    out = []
    for block in blocks:
        match block:
            case ("h", level, text):
                out.append(f"<h{level}>{esc(text)}</h{level}>")
            case ("p", text):
                out.append(f"<p>{esc(text)}</p>")
            case ("code", text):
                out.append(f"<pre><code>{esc(text)}</code></pre>")
            case ("table", header, rows):
                head = "".join(f"<th>{esc(c)}</th>" for c in header)
                body = "".join(
                    "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>\n" for row in rows
                )
                out.append(f"<table>\n<tr>{head}</tr>\n{body}</table>")
            case ("img", alt, path):
                data = base64.b64encode((folder / path).read_bytes()).decode("ascii")
                out.append(f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">')
            case ("open", summary):
                out.append(f"<details><summary>{esc(summary)}</summary>")
            case ("close",):
                out.append("</details>")
    title = blocks[0][2]
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(out)
        + "\n</body>\n</html>\n"
    )
