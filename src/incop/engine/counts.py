"""Frozen prune counts (``prune_counts: frozen``): the per-level, per-tensor alive counts of a
finished reference run, so that every method of a study reaches the same sparsity at every
level and only its rule differs (METHOD.md section 10.1)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from incop.config import Config, load_yaml
from incop.engine.folders import Manifest
from incop.errors import UserError


def reference_levels(config: Config) -> list[dict[str, float]]:
    """The reference run's per-tensor remaining fractions of levels 1..K (index 0: level 1),
    read from ``<counts_from>/summary.json`` (JSON: nothing there runs), each file checked
    against the run's manifest. Refused, before any work, when the folder holds no finished
    run, one of another model, or fewer levels than ``config.levels``."""
    run = Path(config.counts_from)
    summary_path, config_path = run / "summary.json", run / "config.yaml"
    if not summary_path.is_file() or not config_path.is_file():
        raise UserError(
            f"counts_from: {str(run)!r} holds no finished run (no summary.json and config.yaml)"
        )
    manifest = Manifest.read(run)
    for path in (summary_path, config_path):
        if manifest is not None and not manifest.holds(path.name):
            raise UserError(f"counts_from: {path} is not the file incop wrote there")
    saved = load_yaml(config_path)
    if saved.get("model") != config.model:
        raise UserError(
            f"counts_from: {str(run)!r} is a run of the model {saved.get('model')!r}; this run's"
            f" is {config.model!r}"
        )
    try:
        levels = json.loads(summary_path.read_text())["levels"][1:]
        fractions = [dict(level["layer_remaining"]) for level in levels]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"counts_from: {summary_path} holds no per-level layer counts") from None
    if len(fractions) < config.levels:
        raise UserError(
            f"counts_from: {str(run)!r} pruned {len(fractions)} level(s); this run needs"
            f" {config.levels} (levels)"
        )
    return fractions[: config.levels]


def frozen_counts(
    levels: list[dict[str, float]], params: dict[str, torch.nn.Parameter]
) -> list[dict[str, int]]:
    """Alive weights per tensor after each level's prune (index 0: level 1), for the prunable
    ``params``; refused when the reference pruned other tensors."""
    names = sorted(params)
    for fractions in levels:
        if sorted(fractions) != names:
            raise UserError(
                "counts_from: the reference run pruned other weights"
                f" ({', '.join(sorted(fractions))}) than this one ({', '.join(names)})"
            )
    # The fractions were alive / total, written as float64: the count comes back exactly.
    return [{n: round(f[n] * params[n].numel()) for n in names} for f in levels]
