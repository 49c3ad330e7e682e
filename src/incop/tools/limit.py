"""``incop limit``: the pruning limit of a run's dense network (or any checkpoint), and, with
``actual``, the one-shot threshold actually measured on the validation split beside it.

The math is :mod:`incop.methods.limit`; this module reads the run, draws the training subset,
measures, and writes ``limit.json`` and ``limit.csv`` (the curve: pi, R, G, and with ``actual``
the validation and test accuracy of the one-shot ticket at each pi).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from tqdm.auto import tqdm

from incop.config import Config, resolve
from incop.core.lazy import no_grad
from incop.engine.folders import OwnedFolder, atomic_path
from incop.errors import UserError
from incop.methods.limit import (
    DENSITIES,
    Limit,
    actual_threshold,
    default_parameters,
    pruning_limit,
)
from incop.workload.data import load_dataset
from incop.workload.models import build_model

if TYPE_CHECKING:
    import torch


FILES = ("limit.json", "limit.csv")


@dataclass(frozen=True)
class LimitOptions:
    """What ``incop limit`` measures with (see :func:`incop.methods.limit.pruning_limit`).
    ``samples``: training examples (None: 8192, or the whole split if smaller); ``actual``:
    also measure the one-shot threshold on validation, accuracy at least the dense one's minus
    ``tolerance`` (``strict``: strictly above it, the official rule)."""

    level: int = 0
    samples: int | None = None
    batch_size: int = 128
    eps: float | None = None
    lanczos_iters: int = 128
    probes: int = 1
    zero_rows: int | None = None
    density: str = "quadrature"
    grid: int = 1000
    seed: int = 0
    actual: bool = False
    tolerance: float = 0.0
    strict: bool = False

    def check(self) -> None:
        problems = []
        if self.samples is not None and self.samples < 1:
            problems.append(f"samples: {self.samples} is not allowed; must be >= 1")
        if self.batch_size < 1:
            problems.append(f"batch_size: {self.batch_size} is not allowed; must be >= 1")
        if self.lanczos_iters < 2:
            problems.append(f"lanczos_iters: {self.lanczos_iters} is not allowed; must be >= 2")
        if self.probes < 1:
            problems.append(f"probes: {self.probes} is not allowed; must be >= 1")
        if self.eps is not None and not (math.isfinite(self.eps) and self.eps > 0):
            problems.append(f"eps: {self.eps} is not allowed; must be a finite number > 0")
        if self.zero_rows is not None and self.zero_rows < 1:
            problems.append(f"zero_rows: {self.zero_rows} is not allowed; must be >= 1 or off")
        if self.density not in DENSITIES:
            problems.append(f"density: unknown {self.density!r}; allowed: {', '.join(DENSITIES)}")
        if self.grid < 2:
            problems.append(f"grid: {self.grid} is not allowed; must be >= 2")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            problems.append(f"tolerance: {self.tolerance} is not allowed; must be >= 0")
        if self.level < 0:
            problems.append(f"level: {self.level} is not allowed; must be >= 0")
        if not self.actual and (self.tolerance != 0 or self.strict):
            flag = "--tolerance" if self.tolerance != 0 else "--strict"
            problems.append(f"{flag} would be ignored: it is a rule of --actual, not given")
        if problems:
            raise UserError("\n".join(problems))


def _run_source(run: Path, level: int) -> tuple[Config, dict[str, torch.Tensor], OwnedFolder]:
    """The config and level ``level``'s weights of the run folder ``run``, each checked."""
    from incop.engine.outputs import RUN_LAYOUT, load_tensors

    folder = OwnedFolder(run, RUN_LAYOUT, mode="update", kind="run", marker="config.yaml")
    folder.check()
    folder.open()
    try:
        legacy = folder.legacy
        config_path = run / "config.yaml" if legacy else folder.verify("config.yaml")
        relative = f"levels/{level}/checkpoint.pt"
        if not (run / relative).is_file():
            trained = (
                "no level 0: the run has not trained its dense network yet"
                if level == 0
                else (f"no level {level}")
            )
            raise UserError(f"limit: {run} holds {trained} ({relative} is missing)")
        path = run / relative if legacy else folder.verify(relative)
        config = resolve({**(yaml.safe_load(config_path.read_text()) or {}), "out": None})
        if level == 0 and config.warmup_epochs == 0:
            raise UserError(
                f"limit: {run} prunes at initialisation: its level 0 is untrained, and the limit"
                " is predicted on a trained network"
            )
        checkpoint = load_tensors(path)
    except BaseException:
        folder.close()
        raise
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        folder.close()
        raise UserError(f"{path} is not a checkpoint incop wrote")
    return config, checkpoint["state_dict"], folder


def measure_limit(
    source: str | Path,
    options: LimitOptions,
    *,
    model: str | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    out: str | Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Measure the pruning limit of the run folder ``source`` (its level ``options.level``;
    by default theta*) or of a checkpoint file with ``model`` and ``dataset``, and write
    ``limit.json`` and ``limit.csv`` into the run folder or the folder ``out``. Returns the
    content of ``limit.json``."""
    options.check()
    source = Path(source)
    if not source.exists():
        raise UserError(f"limit: {source} does not exist")
    if out is not None:
        out = Path(out)
        taken = [out / name for name in FILES if (out / name).exists()]
        if taken or (out.exists() and not out.is_dir()):
            raise UserError(f"out: {taken[0] if taken else out} exists; choose another --out")
    folder = None
    if source.is_dir():
        if model or dataset:
            raise UserError("limit: --model and --dataset are for a checkpoint; a run folder"
                            " names its own")  # fmt: skip
        config, state, folder = _run_source(source, options.level)
        if data_dir is not None:
            config.data_dir = data_dir
    else:
        if not (model and dataset):
            raise UserError(f"limit: {source} is a file: name its --model and --dataset")
        if options.level != 0:
            raise UserError("limit: --level picks a level of a run folder; a checkpoint is one")
        config = resolve({"model": model, "dataset": dataset, "data_dir": data_dir})
        from incop.engine.outputs import load_tensors

        loaded = load_tensors(source)
        state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
        if not isinstance(state, dict):
            raise UserError(f"{source} holds no state dict")
    try:
        if folder is not None and folder.legacy and out is None:
            raise UserError(
                f"limit: {source} was written by an older incop (no manifest.json); pass --out"
                " to write the limit elsewhere"
            )
        result = _measure(config, state, options, progress)
        _write(result, folder, out)
    finally:
        if folder is not None:
            folder.close()
    return result["summary"]


def _measure(config: Config, state: dict, options: LimitOptions, progress: bool) -> dict[str, Any]:
    from incop.engine.experiment import build_batches
    from incop.engine.imp import resolve_device
    from incop.engine.phases import LIMIT_SAMPLES

    data = load_dataset(config.dataset, config.data_dir, config.download)
    info = data.info
    network = build_model(config.model, info.channels, info.image_size, info.num_classes)
    splits = build_batches(config, data, network)
    available = splits.train.num_examples
    if options.samples is not None and options.samples > available:
        raise UserError(
            f"samples: {options.samples} is more than the training split holds ({available})"
        )
    samples = options.samples or min(LIMIT_SAMPLES, available)
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"limit: the checkpoint does not fit the {config.model}: {exc}") from None
    device = resolve_device(config.device)
    network.to(device)
    if not any(p.dim() > 1 for p in default_parameters(network).values()):
        raise UserError(f"limit: the {config.model} has no prunable weights (no Conv/Linear)")
    batches = list(splits.train.sample(samples, options.seed, options.batch_size))
    bar = tqdm(total=None, desc="HVP", unit="hvp", disable=not progress)

    def tick(done: int, planned: int) -> None:
        bar.total = planned
        bar.update(done - bar.n)

    try:
        limit = pruning_limit(
            network, batches, eps=options.eps, lanczos_iters=options.lanczos_iters,
            probes=options.probes, zero_rows=options.zero_rows, density=options.density,
            grid=options.grid, seed=options.seed, device=device, on_hvp=tick,
        )  # fmt: skip
    finally:
        bar.close()
    summary = {**limit.to_dict(), "samples": samples, "level": options.level,
               "model": config.model, "dataset": config.dataset}  # fmt: skip
    curve = [{"removed": pi, "radius": r, "width": g} for pi, r, g in limit.curve]
    if options.actual:
        summary["actual"] = _actual(network, splits, limit, options, curve, progress)
    return {"summary": summary, "curve": curve, "limit": limit}


@no_grad
def _actual(network, splits, limit: Limit, options: LimitOptions, curve, progress) -> dict:
    """One-shot magnitude pruning of theta* at every pi of the grid (exactly n_i weights,
    ties by position), each ticket evaluated on validation (decides) and test (reported)."""
    import torch

    from incop.core.training import evaluate

    weights = [p for p in default_parameters(network).values() if p.dim() > 1]
    flat = torch.cat([w.detach().reshape(-1).abs() for w in weights])
    order = torch.sort(flat, stable=True).indices
    sizes = [w.numel() for w in weights]
    dense_val = evaluate(network, splits.val).accuracy
    alive = torch.ones(len(flat), dtype=torch.bool, device=flat.device)
    for row in tqdm(curve, desc="one-shot", disable=not progress):
        alive[order[: max(1, math.ceil(row["removed"] * len(flat)))]] = False
        for w, part in zip(weights, alive.split(sizes), strict=True):
            w.masked_fill_(~part.view_as(w), 0.0)
        row["val_accuracy"] = evaluate(network, splits.val).accuracy
        row["test_accuracy"] = evaluate(network, splits.test).accuracy
    fractions = [row["removed"] for row in curve]
    found = actual_threshold(fractions, [row["val_accuracy"] for row in curve], dense_val,
                             options.tolerance, strict=options.strict)  # fmt: skip
    at = next((row for row in curve if row["removed"] == found), None)
    return {
        "removed_fraction": found,
        "remaining_fraction": None if found is None else 1 - found,
        "dense_val_accuracy": dense_val,
        "val_accuracy": None if at is None else at["val_accuracy"],
        "test_accuracy": None if at is None else at["test_accuracy"],
        "tolerance": options.tolerance,
        "strict": options.strict,
        "difference": None if found is None else limit.predicted_removed_fraction - found,
    }


def _write(result: dict[str, Any], folder: OwnedFolder | None, out: Path | None) -> None:
    from incop.engine.outputs import to_json

    text = to_json(result["summary"], indent=2)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(result["curve"][0]))
    writer.writeheader()
    writer.writerows(result["curve"])
    contents = {"limit.json": text.encode(), "limit.csv": buffer.getvalue().encode()}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in contents.items():
            with atomic_path(out / name) as tmp:
                tmp.write_bytes(data)
        return
    for name, data in contents.items():
        folder.write_bytes(name, data)


def format_limit(summary: dict[str, Any]) -> str:
    """The lines ``incop limit`` prints."""
    top = sorted(summary["ritz_values"], reverse=True)[:5]
    lines = [
        f"predicted removable: {summary['predicted_removed_fraction']:.1%} of the"
        f" {summary['prunable']:,} prunable weights (remaining: at least"
        f" {summary['predicted_remaining_fraction']:.1%})",
        f"eps {summary['eps']:.4g}; D {summary['dim']:,} Hessian parameters; R at the crossing"
        f" {summary['radius']:.4g}, G {summary['width']:.4f}",
        "top Ritz values: " + ", ".join(f"{v:.4g}" for v in top),
        f"trace estimate {summary['trace']:.4g}; zero rows {summary['zero_row_fraction']:.2f};"
        f" density {summary['density']}",
        f"{summary['hvp_count']} Hessian-vector products on {summary['samples']:,} training"
        f" examples, {summary['seconds']:.1f} s",
    ]
    actual = summary.get("actual")
    if actual is not None:
        if actual["removed_fraction"] is None:
            lines.append("actual (validation): no pruned fraction keeps the dense accuracy")
        else:
            lines.append(
                f"actual (validation): {actual['removed_fraction']:.1%} removable (remaining"
                f" {actual['remaining_fraction']:.1%}), val {actual['val_accuracy']:.2%} against"
                f" dense {actual['dense_val_accuracy']:.2%}, test {actual['test_accuracy']:.2%};"
                f" predicted minus actual {actual['difference']:+.3f}"
            )
    return "\n".join(lines)
