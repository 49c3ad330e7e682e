"""What a run returns: a :class:`LevelResult` per level and the :class:`Result` of the whole
run (the content of ``summary.json`` and the level table printed at its end)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from incop.config import Config
from incop.core.masks import Masks, SparsityReport
from incop.methods.stopping import STOP_REASONS


@dataclass
class FinalResult:
    """The fine-tuned final ticket. ``epochs``: fine-tune epochs trained; ``best_epoch``: the
    one kept (0: none beat the last level's weights); accuracies fractions (None when not
    classification or without test data); seconds wall-clock."""

    epochs: int
    best_epoch: int
    val_accuracy: float | None
    val_loss: float
    val_metric: float
    test_accuracy: float | None
    test_loss: float | None
    train_seconds: float
    eval_seconds: float

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LevelResult:
    """One level (0 = the dense network). Seconds are wall-clock; accuracy a fraction in [0, 1]
    (None when the task is not classification); ``val_metric``: the run's metric, the number
    its decisions read. ``test_accuracy`` / ``test_loss``: the level's ticket on the test
    data, evaluated once the level is decided and read by nothing (None without test data).

    Fields are readable as attributes or keys (``level.val_accuracy`` or ``level["val_accuracy"]``).
    """

    level: int
    remaining_fraction: float
    epochs: int
    val_accuracy: float | None
    val_loss: float
    train_seconds: float
    eval_seconds: float
    flow_seconds: float
    stop_reason: str
    macs_fraction: float
    distance: float | None = None
    val_metric: float | None = None
    test_accuracy: float | None = None
    test_loss: float | None = None
    layer_remaining: dict[str, float] | None = None
    train_flops: float | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Result:
    """What :func:`prune` returns. ``masks``: the final ticket's masks, parameter name -> bool
    tensor; ``level_masks[k]``: level k's masks; ``sparsity``: the final ticket's per-layer
    sparsity, compression and MACs; ``dense_metric``: the metric of theta* (a*)."""

    levels: list[LevelResult]
    masks: Masks
    dense_accuracy: float | None
    config: Config
    level_masks: list[Masks] = field(default_factory=list)
    sparsity: SparsityReport | None = None
    dense_metric: float | None = None
    final: FinalResult | None = None
    #: The pruning limit predicted on theta* (``target_remaining: limit``), as
    #: :meth:`incop.methods.limit.Limit.to_dict` gives it, else None.
    limit: dict[str, Any] | None = None
    #: FLOPs per category and ``search`` (:mod:`incop.core.flops`); one dense training
    #: epoch's FLOPs; the examples of one training epoch.
    cost: dict[str, float] | None = None
    dense_epoch: float | None = None
    train_examples: int | None = None
    #: What the run used where its config may say ``auto``: ``eval_batch_size``,
    #: ``precision``, and ``probe_size`` where a flow is measured.
    chosen: dict[str, Any] | None = None
    #: ``eps_mode: noise``: the flow's noise floor sigma at theta*, ``{rule name: sigma}``, and
    #: the threshold it made, eps x sigma, in the distance's units.
    noise_floor: dict[str, float] | None = None
    eps_used: float | None = None
    #: The shapes and dtypes of one example's inputs (:func:`incop.core.inputs.describe`):
    #: what exports trace the model with.
    example_input: Any = None
    #: The pruner's own state at the end (``state_dict()``, for pruners that have one: the
    #: mask updates of dynamic sparse training), else None.
    pruner: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """The content of ``summary.json``."""
        extra = {"limit": self.limit} if self.limit is not None else {}
        if self.noise_floor is not None:
            extra |= {"noise_floor": self.noise_floor, "eps_used": self.eps_used}
        if self.pruner is not None:
            extra["pruner"] = self.pruner
        return {
            "levels": [level.to_dict() for level in self.levels],
            "dense_accuracy": self.dense_accuracy,
            "dense_metric": self.dense_metric,
            "config": self.config.to_dict(),
            "final": self.final.to_dict() if self.final is not None else None,
            # Results are bitwise reproducible only at the same thread count (README, "Trust").
            "threads": torch.get_num_threads(),
            "cost": self.cost,
            "dense_epoch": self.dense_epoch,
            "train_examples": self.train_examples,
            **(self.chosen or {}),
            "example_input": self.example_input,
            **extra,
        }

    def table(self) -> str:
        """The level table printed at the end of a run."""
        metric = self.config.metric
        # The metric that decided gets a column of its own unless it is the accuracy.
        extra = "" if metric == "accuracy" else f" {('val ' + metric)[:12]:>12}"
        tested = any(r.test_accuracy is not None for r in self.levels)
        head = (
            f"{'level':>5} {'remaining':>9} {'MACs':>7} {'epochs':>6} {'val acc':>8}{extra}"
            + (f" {'test acc':>8}" if tested else "")
            + f" {'train s':>8} {'eval s':>7} {'flow s':>7}  stop"
        )
        rows = [head, "-" * len(head)]
        for r in self.levels:
            value = "" if metric == "accuracy" else f" {r.val_metric:>12.6g}"
            test = f" {_percent(r.test_accuracy)}" if tested else ""
            rows.append(
                f"{r.level:>5} {r.remaining_fraction:>9.2%} {r.macs_fraction:>7.1%} {r.epochs:>6}"
                f" {_percent(r.val_accuracy)}{value}{test} {r.train_seconds:>8.1f}"
                f" {r.eval_seconds:>7.1f} {r.flow_seconds:>7.1f}  {r.stop_reason}"
            )
        reasons = dict.fromkeys(r.stop_reason for r in self.levels)
        rows += ["", "stop:"] + [f"  {why:<9} {STOP_REASONS.get(why, '')}" for why in reasons]
        return "\n".join(rows)


def _percent(value: float | None) -> str:
    return f"{value:>8.2%}" if value is not None else f"{'-':>8}"
