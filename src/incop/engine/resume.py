"""Resume state: what a run saves in ``state.pt`` after every epoch, and how it takes it up.

Only what changes per epoch is saved here (model, optimiser, scheduler, RNGs, counters, masks
as bits); snapshots and level checkpoints are written once where they are produced
(``snapshots/``, ``levels/``) and the state refers to them by path. Taking the state up again
gives the uninterrupted run's epochs exactly, at the same thread count.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from incop.config import WHERE_FIELDS, Config, default_value, field_names
from incop.core.masks import pack_mask, unpack_mask
from incop.core.training import make_scheduler
from incop.engine.result import LevelResult
from incop.errors import UserError

if TYPE_CHECKING:
    from incop.engine.imp import IMP


def capture_state(
    loop: IMP,
    phase: str,
    level: int,
    epoch: int,
    seconds: dict[str, float],
    phase_state: Any = None,
) -> dict[str, Any]:
    """Everything needed to go on after ``epoch`` of ``level``; ``seconds``: the level's clock
    so far; ``phase``: ``warmup``, ``retrain``, ``done`` or ``finetune``; ``phase_state``:
    whatever that phase needs besides."""
    return {
        "phase": phase,
        "phase_state": phase_state,
        "level": level,
        "epoch": epoch,
        "config": loop.config.to_dict(),
        "model": loop.model.state_dict(),
        "optimizer": loop.optimizer.state_dict() if loop.optimizer else None,
        "scheduler": loop.scheduler.state_dict() if loop.scheduler else None,
        "scaler": loop.precision.state_dict(),
        # Bits: masks as bool tensors would add 1 byte per weight to each save.
        "masks": {n: (tuple(m.shape), pack_mask(m)) for n, m in loop.masks.items()},
        # Written once each (snapshots/, levels/): the state only refers to them.
        "snapshots": dict(loop.snapshot_files),
        "best": loop.best,
        "levels": [lv.to_dict() for lv in loop.levels],
        "clock": dict(seconds),
        "record": loop.record,
        "rule": loop.rule.state_dict() if loop.levels else None,
        "epoch_counter": loop.epoch_counter,
        "target": loop.target,
        "limit": loop.limit,
        "threads": torch.get_num_threads(),
        "generator": loop.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def check_settings(saved: dict[str, Any], config: Config) -> None:
    """Refuse to go on with other settings than the saved run's. Where the folder and the data
    are does not count (they may have moved since); a setting the saved run did not have yet
    (added in a later incop) ran as its default."""
    defaults = {name: default_value(name) for name in field_names()}
    before = {k: v for k, v in (defaults | saved).items() if k not in WHERE_FIELDS}
    now = {k: v for k, v in config.to_dict().items() if k not in WHERE_FIELDS}
    if before != now:
        changed = ", ".join(
            f"{k}: {before.get(k)!r} saved, {now.get(k)!r} now"
            for k in sorted(set(before) | set(now))
            if before.get(k) != now.get(k)
        )
        raise UserError(f"resume: the saved state belongs to a run with other settings ({changed})")


def restore_state(loop: IMP, state: dict[str, Any]) -> None:
    """Put ``loop`` (set up, not yet run) back where ``state`` was saved."""
    c = loop.config
    check_settings(state["config"], c)
    if state["threads"] != torch.get_num_threads():
        warnings.warn(
            f"resuming with {torch.get_num_threads()} CPU threads; the run was saved with"
            f" {state['threads']}, so results may differ from an uninterrupted run in the"
            " last digits",
            RuntimeWarning,
            stacklevel=3,
        )
    loop.model.load_state_dict(state["model"])
    loop.precision.load_state_dict(state.get("scaler"))
    loop.masks.update(
        {n: unpack_mask(bits, shape).to(loop.device) for n, (shape, bits) in state["masks"].items()}
    )
    loop.snapshot_files = dict(state["snapshots"])
    loop.snapshots = {
        name: loop.writer.read(relative, loop.device)
        for name, relative in loop.snapshot_files.items()
    }
    loop.best = state["best"]
    loop.record = state["record"]
    loop.levels = [LevelResult(**lv) for lv in state["levels"]]
    loop.level_masks = [
        loop.writer.read(f"levels/{lv.level}/checkpoint.pt", loop.device)["masks"]
        for lv in loop.levels
    ]
    loop.epoch_counter = state["epoch_counter"]
    # Saved before targets existed: none then (and the limit is taken again if asked).
    loop.target = state.get("target", loop.target)
    loop.limit = state.get("limit")
    loop.generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    if state["optimizer"] is not None:
        loop.fresh_optimizer()
        epochs = c.warmup_epochs if state["phase"] == "warmup" else c.max_epochs
        loop.scheduler = make_scheduler(loop.optimizer, c.schedule, epochs)
        # After the scheduler, which starts from the base rate: the saved rate wins.
        loop.optimizer.load_state_dict(state["optimizer"])
        if loop.scheduler is not None:
            loop.scheduler.load_state_dict(state["scheduler"])
    if loop.levels:
        loop.dense_accuracy = loop.levels[0].val_accuracy
        loop.dense_metric = loop.levels[0].val_metric
        reference = loop.reference(loop.metric.score(loop.dense_metric))
        loop.rule.load_state_dict(state["rule"], reference)
