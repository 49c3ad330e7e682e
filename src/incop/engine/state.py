"""The loop's state: everything an IMP run changes as it goes, in one object.

The parts of a run (model, data, pruner, stopping rule...) are built once from the config and
do not change; what does is here: counters, masks, snapshots, the optimiser and its schedule,
the random generators, the levels decided so far. ``state.pt`` is :meth:`RunState.state_dict`
plus what the phase in progress and the parts add (:mod:`incop.engine.resume`), so taking it
up gives the uninterrupted run's epochs exactly, at the same thread count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from incop.core.flops import CATEGORIES
from incop.core.masks import Masks, pack_mask, unpack_mask
from incop.engine.result import LevelResult

StateDict = dict[str, torch.Tensor]


@dataclass
class RunState:
    """What an IMP run changes as it goes.

    ``masks``: parameter name -> bool mask (the same dict the mask enforcer holds, updated in
    place); ``generator``: the run's seeded generator (random pruning); ``epoch_counter``:
    training epochs so far, for the data order; ``snapshots``: state dicts ``init`` (theta_0),
    ``dense`` (theta*) and, for ``epoch:K`` rewinding, ``epoch``, with ``snapshot_files``
    where each is saved; ``levels`` and ``level_masks``: the levels decided so far; ``best``:
    the dense warm-up's best epoch record; ``record``: the current level's last epoch record;
    ``target``: where pruning ends (a fraction of the prunable weights, or None); ``limit``:
    the pruning limit predicted on theta*, when asked for; ``cost``: FLOPs spent so far per
    category (:mod:`incop.core.flops`), ``level_flops`` the training FLOPs of the level in
    progress; ``train_examples``: the examples of one training epoch, once one has run.
    """

    masks: Masks
    generator: torch.Generator
    epoch_counter: int = 0
    snapshots: dict[str, StateDict] = field(default_factory=dict)
    snapshot_files: dict[str, str | None] = field(default_factory=dict)
    levels: list[LevelResult] = field(default_factory=list)
    level_masks: list[Masks] = field(default_factory=list)
    best: dict[str, Any] | None = None
    record: dict[str, Any] = field(default_factory=dict)
    optimizer: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    target: float | None = None
    limit: dict[str, Any] | None = None
    cost: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0.0))
    level_flops: float = 0.0
    train_examples: int | None = None

    @property
    def dense_metric(self) -> float | None:
        """The validation metric of theta* (a*), once level 0 is decided."""
        return self.levels[0].val_metric if self.levels else None

    @property
    def dense_accuracy(self) -> float | None:
        """The validation accuracy of theta*, once level 0 is decided."""
        return self.levels[0].val_accuracy if self.levels else None

    def state_dict(self) -> dict[str, Any]:
        """The state as ``state.pt`` holds it: masks as bits (as bool tensors they would add
        a byte per weight to each save); snapshots and level masks by the files they are
        written to once (``snapshots/``, ``levels/``); every random generator's state."""
        return {
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "masks": {n: (tuple(m.shape), pack_mask(m)) for n, m in self.masks.items()},
            "snapshots": dict(self.snapshot_files),
            "best": self.best,
            "levels": [lv.to_dict() for lv in self.levels],
            "record": self.record,
            "epoch_counter": self.epoch_counter,
            "target": self.target,
            "limit": self.limit,
            "cost": {
                **self.cost,
                "level": self.level_flops,
                "train_examples": self.train_examples,
            },
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_state_dict(
        self, state: dict[str, Any], read: Callable[[str], dict[str, Any]], device: torch.device
    ) -> None:
        """Take up :meth:`state_dict`'s output; ``read(path)`` loads a file of the run folder
        (snapshots, level checkpoints) onto ``device``. The optimiser and scheduler, when the
        state has them, must already be built fresh (their saved states are loaded into them)."""
        self.masks.update(
            {n: unpack_mask(bits, shape).to(device) for n, (shape, bits) in state["masks"].items()}
        )
        self.snapshot_files = dict(state["snapshots"])
        self.snapshots = {name: read(path) for name, path in self.snapshot_files.items()}
        self.best = state["best"]
        self.record = state["record"]
        self.levels = [LevelResult(**lv) for lv in state["levels"]]
        self.level_masks = [read(f"levels/{lv.level}/checkpoint.pt")["masks"] for lv in self.levels]
        self.epoch_counter = state["epoch_counter"]
        # Saved before targets existed: none then (and the limit is taken again if asked).
        self.target = state.get("target", self.target)
        self.limit = state.get("limit")
        # Saved before costs were counted: counted from here on.
        cost = dict(state.get("cost") or {})
        self.level_flops = cost.pop("level", 0.0)
        self.train_examples = cost.pop("train_examples", None)
        self.cost.update(cost)
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
