"""Methods side by side (METHOD.md section 7): one shared dense warm-up per seed, every method
pruned from it, and the mean / standard deviation over trials in ``comparison.json``.

Layout of a comparison folder::

    compare.yaml                    what was asked: settings, methods, seeds (for --resume)
    comparison.json                 aggregate (see :func:`aggregate`)
    warmup/seed-<s>.pt              the shared dense warm-up of each seed
    <method>/seed-<s>/              each run folder exactly as ``incop run`` writes it
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from incop.config import resolve
from incop.data import Batches, load_dataset
from incop.errors import UserError
from incop.experiment import build_batches
from incop.imp import IMP, WarmUp, resolve_device
from incop.models import build_model
from incop.outputs import RunWriter, atomic_torch_save, atomic_write_text

DEFAULT_METHODS = ("lth", "sap", "sap-acc", "incop-if", "incop-gf")
#: Methods every other one is compared against, when they are in the comparison.
BASELINES = ("sap", "lth")
#: Per-level fields averaged over trials.
LEVEL_FIELDS = (
    "remaining_fraction",
    "epochs",
    "val_accuracy",
    "train_seconds",
    "eval_seconds",
    "flow_seconds",
    "macs_fraction",
)


def run_folder(out: Path, method: str, seed: int) -> Path:
    return out / method / f"seed-{seed}"


def run_comparison(
    overrides: dict[str, Any],
    methods: Sequence[str] = DEFAULT_METHODS,
    seeds: Sequence[int] = (0,),
    *,
    out: str | Path,
    progress: bool = False,
    mode: str = "new",
) -> dict[str, Any]:
    """Run every method for every seed on the config ``overrides`` describe; write ``out``.

    ``overrides`` are config settings as a user gives them (file and flags, not
    yet resolved), so each method's preset applies under them. ``mode``: ``new``
    (refuses a folder holding a comparison), ``overwrite``, or ``resume`` (finished
    runs are kept, interrupted ones go on from their last epoch). Returns the
    content of ``comparison.json``.
    """
    out = Path(out)
    # Resolve every method's config first: a bad value fails before any training.
    configs = {m: resolve({**overrides, "method": m}) for m in methods}
    first = configs[methods[0]]
    asked = out / "compare.yaml"
    if mode == "new" and asked.exists():
        raise UserError(
            f"out: {str(out)!r} already holds a comparison; pass --resume {out} to continue it,"
            " --overwrite to replace it, or choose another --out"
        )
    if mode != "resume":
        if mode == "overwrite":
            shutil.rmtree(out, ignore_errors=True)
        plan = {"settings": overrides, "methods": list(methods), "seeds": list(seeds)}
        atomic_write_text(asked, yaml.safe_dump(plan, sort_keys=False))
    dataset = load_dataset(first.dataset, first.data_dir, first.download)
    info = dataset.info
    started = time.perf_counter()
    summaries: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    warmup_seconds = []
    bar = tqdm(total=len(seeds) * len(methods), desc="compare", unit="run", disable=not progress)
    for seed in seeds:
        train, val = build_batches(resolve({**overrides, "seed": seed}), dataset)

        def fresh_model(seed: int = seed) -> torch.nn.Module:
            torch.manual_seed(seed)
            return build_model(first.model, info.channels, info.image_size, info.num_classes)

        warmup = shared_warmup(out, seed, overrides, methods[0], fresh_model, train, val)
        warmup_seconds.append(sum(warmup.seconds.values()))
        for method in methods:
            folder = run_folder(out, method, seed)
            bar.set_postfix(seed=seed, method=method)
            if (folder / "summary.json").exists() and mode == "resume":
                summaries[method].append(json.loads((folder / "summary.json").read_text()))
            else:
                config = resolve({**overrides, "method": method, "seed": seed, "out": str(folder)})
                going_on = mode == "resume" and (folder / "config.yaml").exists()
                writer = RunWriter(folder, mode="resume" if going_on else "new")
                imp = IMP(config, fresh_model(), train, val, writer=writer, progress=progress)
                summaries[method].append(imp.run(warmup, resume=going_on).summary())
            bar.update(1)
    bar.close()
    comparison = aggregate(summaries)
    comparison.update(
        seeds=list(seeds),
        config=first.to_dict(),
        warmup_seconds=mean_std(warmup_seconds),
        total_seconds=time.perf_counter() - started,
        hardware=hardware(resolve_device(first.device)),
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.json", json.dumps(comparison, indent=2))
    return comparison


def shared_warmup(
    out: Path,
    seed: int,
    overrides: dict[str, Any],
    method: str,
    fresh_model: Callable[[], torch.nn.Module],
    train: Batches,
    val: Batches,
) -> WarmUp:
    """The dense warm-up of ``seed``: trained once, kept in ``warmup/seed-<s>.pt``."""
    path = out / "warmup" / f"seed-{seed}.pt"
    if path.exists():
        return WarmUp(**torch.load(path, weights_only=False))
    config = resolve({**overrides, "method": method, "seed": seed})
    warmup = IMP(config, fresh_model(), train, val).warm_up()
    atomic_torch_save(path, dataclasses.asdict(warmup))
    return warmup


def format_table(comparison: dict[str, Any]) -> str:
    """The comparison table printed at the end of ``incop compare``: mean ± std over trials."""
    head = (
        f"{'method':<10} {'epochs':>13} {'final acc':>15} {'remaining':>9}"
        f" {'wall s':>13} {'epochs/sap':>10} {'wall/sap':>8}"
    )
    rows = [head, "-" * len(head)]
    for method, entry in comparison["methods"].items():
        t = entry["totals"]
        ratio = comparison["ratios"][method]
        rows.append(
            f"{method:<10} {t['retrain_epochs']['mean']:>6.1f} ± {t['retrain_epochs']['std']:<4.1f}"
            f" {t['final_accuracy']['mean']:>7.2%} ± {t['final_accuracy']['std']:<5.2%}"
            f" {t['final_remaining_fraction']['mean']:>9.2%}"
            f" {t['wall_seconds']['mean']:>6.1f} ± {t['wall_seconds']['std']:<4.1f}"
            f" {ratio.get('epochs_vs_sap', float('nan')):>10.2f}"
            f" {ratio.get('wall_vs_sap', float('nan')):>8.2f}"
        )
    return "\n".join(rows)


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single trial)."""
    values = [float(v) for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std}


def run_totals(summary: dict[str, Any]) -> dict[str, float]:
    """One run's totals. Retraining = levels 1..K (the dense warm-up is shared, so left out);
    flow seconds include level 0, where the dense reference flow is measured."""
    levels = summary["levels"]
    retrain = levels[1:]
    totals = {
        "retrain_epochs": sum(lv["epochs"] for lv in retrain),
        "final_remaining_fraction": levels[-1]["remaining_fraction"],
        "final_accuracy": levels[-1]["val_accuracy"],
        "dense_accuracy": summary["dense_accuracy"],
        "train_seconds": sum(lv["train_seconds"] for lv in retrain),
        "eval_seconds": sum(lv["eval_seconds"] for lv in retrain),
        "flow_seconds": sum(lv["flow_seconds"] for lv in levels),
    }
    totals["wall_seconds"] = (
        totals["train_seconds"] + totals["eval_seconds"] + totals["flow_seconds"]
    )
    return totals


def aggregate(summaries: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Mean and standard deviation over trials per method, per level, and ratios to baselines.

    ``summaries``: method -> one ``summary.json`` content per trial. Returns
    ``{"methods": {m: {"trials", "totals": {field: {mean, std}}, "levels": [{field:
    {mean, std}}]}}, "ratios": {m: {"epochs_vs_sap", "wall_vs_sap", ...}}}``.
    """
    methods: dict[str, Any] = {}
    for method, runs in summaries.items():
        totals = [run_totals(run) for run in runs]
        n_levels = min(len(run["levels"]) for run in runs)
        methods[method] = {
            "trials": len(runs),
            "totals": {key: mean_std([t[key] for t in totals]) for key in totals[0]},
            "levels": [
                {
                    "level": k,
                    **{f: mean_std([run["levels"][k][f] for run in runs]) for f in LEVEL_FIELDS},
                }
                for k in range(n_levels)
            ],
        }
    ratios: dict[str, dict[str, float]] = {}
    for method, entry in methods.items():
        ratios[method] = {}
        for base in BASELINES:
            if base not in methods:
                continue
            for key, name in (("retrain_epochs", "epochs"), ("wall_seconds", "wall")):
                denominator = methods[base]["totals"][key]["mean"]
                value = entry["totals"][key]["mean"] / denominator if denominator else float("nan")
                ratios[method][f"{name}_vs_{base}"] = value
    return {"methods": methods, "ratios": ratios}


def hardware(device: torch.device) -> dict[str, Any]:
    """What the comparison ran on, for the report."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_comparison(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "comparison.json").read_text())
