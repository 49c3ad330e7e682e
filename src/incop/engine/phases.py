"""The phases of an IMP run (METHOD.md section 1), each a function of the loop.

The loop (:class:`incop.engine.imp.IMP`) sequences them: the dense warm-up, taking up its
result as level 0, predicting the pruning limit where asked, then per level prune, rewind and
retrain, and at the end the fine-tune. A phase reads and changes the loop's
:class:`~incop.engine.state.RunState` and uses the services of :class:`Loop`; it knows of
pruners, rewinding modes and stopping rules only their small interfaces.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from incop.config import LIMIT_TARGET, Config
from incop.core.batches import BatchSource, make_probe
from incop.core.flops import TRAIN_PASSES
from incop.core.inputs import OutputFn
from incop.core.masks import MaskEnforcer, Masks
from incop.core.optimizers import make_optimizer, make_scheduler
from incop.core.precision import Precision
from incop.core.training import (
    DivergenceError,
    LossFn,
    train_epoch,
)
from incop.core.world import World, shared_probe
from incop.engine.clock import Clock
from incop.engine.distributed import mask_fingerprint
from incop.engine.outputs import NullWriter
from incop.engine.result import FinalResult
from incop.engine.state import RunState
from incop.errors import UserError
from incop.methods.limit import pruning_limit
from incop.methods.pruning import Pruner, hold_counts, keep_count, prune_scores
from incop.methods.rewind import Rewind, snapshot
from incop.methods.stopping import Reference, StoppingRule
from incop.methods.warmup_stop import WarmupStop

#: Training examples the pruning limit is measured on (LIMIT.md B6's default), at most.
LIMIT_SAMPLES = 8192


class Loop(Protocol):
    """What the phases use of the IMP loop: its parts, its state and its services."""

    config: Config
    state: RunState
    model: nn.Module
    world: World
    device: torch.device
    writer: NullWriter
    params: dict[str, nn.Parameter]
    counts: list[dict[str, int]] | None
    enforcer: MaskEnforcer
    pruner: Pruner
    rule: StoppingRule
    warmup_stop: WarmupStop
    rewind: Rewind
    train_data: BatchSource
    loss_fn: LossFn
    output_fn: OutputFn
    precision: Precision
    probe: list | None
    distilling: bool

    def fresh_optimizer(self) -> None: ...
    def new_clock(self) -> Clock: ...
    def run_epoch(self, clock: Clock, *, train: bool, measure: bool = True) -> dict: ...
    def evaluate(self, clock: Clock) -> dict: ...
    def log(self, level: int, epoch: int, clock: Clock, record: dict) -> dict: ...
    def emit(self, hook: str, *args: Any) -> None: ...
    def save_state(
        self, phase: str, level: int, epoch: int, clock: Clock, phase_state: Any = None
    ) -> None: ...
    def recover(self, exc: DivergenceError, last_good: dict[str, torch.Tensor]) -> None: ...
    def keep_snapshot(self, name: str, epoch: int) -> None: ...
    def share_snapshot(self, name: str, same_as: str) -> None: ...
    def score(self, record: dict) -> float: ...
    def reference(self, score: float) -> Reference: ...
    def first_prune(self) -> Masks: ...
    def count_flows(self) -> None: ...
    def count(self, category: str, passes: int, examples: int) -> float: ...
    def finish_level(
        self, level: int, epochs: int, clock: Clock, last: dict, reason: str
    ) -> None: ...
    def test(self) -> dict[str, float | None]: ...


@dataclass
class WarmUp:
    """The outcome of dense training, shareable by every method of one seed.

    ``snapshots``: state dicts ``init`` (theta_0), ``dense`` (theta*) and, for
    ``epoch:K`` rewinding, ``epoch``; ``best``: the best epoch's record
    (``val_accuracy`` = a*); ``seconds``: train/eval time spent;
    ``records``: the epoch records to log; ``epoch_counter``: epochs seen, for data order;
    ``epochs``: dense epochs trained; ``diverged``: the loss became non-finite before
    ``warmup_epochs`` (theta* is then the best epoch before that); ``reason``: why it ended
    (``warmup``: all its epochs; ``epi``: the first prune's mask stopped changing);
    ``cost``: the FLOPs it spent per category (:mod:`incop.core.flops`).
    """

    snapshots: dict[str, dict[str, torch.Tensor]]
    best: dict[str, Any]
    seconds: dict[str, float]
    records: list[dict[str, Any]]
    epoch_counter: int
    epochs: int = 0
    diverged: bool = False
    reason: str = "warmup"
    cost: dict[str, float] = field(default_factory=dict)


def warm_up(loop: Loop, saved: dict[str, Any] | None = None) -> WarmUp:
    """Train densely for ``warmup_epochs`` (or until the warm-up stop ends it); keep the
    best-validation weights as theta*. ``saved``: a saved warm-up state to go on from
    (already restored)."""
    c, s = loop.config, loop.state
    clock = loop.new_clock()
    records: list[dict[str, Any]] = []
    if saved is not None:
        clock.seconds.update(saved["clock"])
        start = saved["epoch"] + 1
        loop.warmup_stop.load_state_dict(saved["phase_state"])
    else:
        loop.fresh_optimizer()
        s.scheduler = make_scheduler(s.optimizer, c.schedule, c.warmup_epochs)
        loop.keep_snapshot("init", 0)
        loop.share_snapshot("dense", "init")
        if loop.rewind.mode == "epoch" and loop.rewind.epoch == 0:
            loop.share_snapshot("epoch", "init")
        s.best = None
        if c.warmup_epochs == 0:
            try:
                s.best = loop.run_epoch(clock, train=False)
            except DivergenceError as exc:
                raise UserError(f"the initial dense network does not evaluate: {exc}") from None
            records.append(loop.log(0, 0, clock, s.best))
        loop.save_state("warmup", 0, 0, clock, loop.warmup_stop.state_dict())
        start = 1
    diverged, trained = False, start - 1
    ended = saved is not None and loop.warmup_stop.decide(saved["epoch"])
    for epoch in range(start, c.warmup_epochs + 1):
        if ended:
            break
        last_good = snapshot(loop.model)
        try:
            record = loop.run_epoch(clock, train=True)
        except DivergenceError as exc:
            if s.best is None:
                raise UserError(
                    f"the dense warm-up diverged in its first epoch ({exc}); try a lower"
                    f" learning rate than lr={c.lr} or a larger batch size than"
                    f" batch_size={c.batch_size}"
                ) from None
            loop.recover(exc, last_good)
            diverged = True
            break
        trained = epoch
        with clock("flow"):
            similarity = loop.warmup_stop.observe(epoch, loop.first_prune)
        if similarity is not None:
            record["epi_similarity"] = similarity
        records.append(loop.log(0, epoch, clock, record))
        ended = loop.warmup_stop.decide(epoch)
        # An early end makes theta* this epoch's weights, the ones the indicator judged.
        improved = ended or s.best is None or loop.score(record) > loop.score(s.best)
        if improved:
            s.best = record
            loop.keep_snapshot("dense", epoch)
        if loop.rewind.mode == "epoch" and epoch == loop.rewind.epoch:
            if improved:  # the same weights: one file serves both
                loop.share_snapshot("epoch", "dense")
            else:
                loop.keep_snapshot("epoch", epoch)
        loop.save_state("warmup", 0, epoch, clock, loop.warmup_stop.state_dict())
    return WarmUp(
        s.snapshots,
        s.best,
        dict(clock.seconds),
        records,
        s.epoch_counter,
        trained,
        diverged,
        loop.warmup_stop.name if ended else "warmup",
        dict(s.cost),
    )


def take_up(loop: Loop, warmup: WarmUp, *, shared: bool = False) -> None:
    """Take up a dense warm-up as level 0 and prepare the stopping rule; ``shared``: trained
    by another run, so its snapshots are written and its epoch records logged here too."""
    s = loop.state
    if shared:  # trained elsewhere: this run folder gets its own copies, for resume
        s.snapshots, s.snapshot_files = {}, {}
        for name, weights in warmup.snapshots.items():
            s.snapshots[name] = weights
            s.snapshot_files[name] = loop.writer.snapshot(f"{name}-0", weights)
    s.best = warmup.best
    s.epoch_counter = warmup.epoch_counter
    if shared and warmup.cost:  # what the warm-up cost belongs to this run's ticket too
        s.cost.update(warmup.cost)
        s.level_flops = warmup.cost["warmup"]
    loop.model.load_state_dict(s.snapshots["dense"])
    clock = loop.new_clock()
    clock.seconds.update(warmup.seconds)
    if shared:
        for record in warmup.records:
            loop.emit("on_epoch_end", record)
    with clock("flow"):
        loop.rule.prepare(loop.reference(loop.score(warmup.best)))
        loop.count_flows()
        noise_floor(loop)
    reason = "diverged" if warmup.diverged else warmup.reason
    loop.finish_level(0, warmup.epochs, clock, warmup.best, reason)


def noise_floor(loop: Loop) -> None:
    """``eps_mode: noise`` (METHOD.md section 6): the flow's noise floor sigma at theta* (the
    current weights), the largest distance of theta*'s own flow from its flow on the probe
    set: on ``noise_probes`` other probe sets of the same size (drawn with seeds seed+1,
    seed+2, ...), and after one more dense epoch from theta* (on a copy, with the run's
    optimiser settings and the next epoch's data order; its weights are discarded). What it
    costs counts as flows."""
    rule, c, s = loop.rule, loop.config, loop.state
    if getattr(rule, "eps_mode", "absolute") != "noise" or rule.noise is not None:
        return
    distances = []
    for i in range(rule.noise_probes):
        probe = shared_probe(loop.train_data, loop.sizes["probe_size"], c.seed + 1 + i,
                             loop.sizes["eval_batch_size"], World(), loop.device)  # fmt: skip
        distances.append(rule.measure(loop.model, s.masks, probe))
        loop.count_flows()
    twin = copy.deepcopy(loop.model)
    optimizer = make_optimizer(twin.parameters(), c.optimizer, lr=c.lr, momentum=c.momentum,
                               nesterov=c.nesterov, weight_decay=c.weight_decay)  # fmt: skip
    if hasattr(loop.train_data, "set_epoch"):
        loop.train_data.set_epoch(s.epoch_counter)  # the next epoch's order, which it takes again
    with torch.random.fork_rng(devices=[]):  # dropout must not move the run's generator
        stats = train_epoch(twin, loop.train_data, optimizer, loss_fn=loop.loss_fn,
                            device=loop.device, precision=loop.precision,
                            output_fn=loop.output_fn)  # fmt: skip
    loop.count("flows", TRAIN_PASSES, stats.examples)
    distances.append(rule.measure(twin, s.masks, loop.probe))
    loop.count_flows()
    # Every rank takes rank 0's: each trained its copy on its own part of the data.
    rule.calibrate(loop.world.from_main(max(distances)))


def predict_limit(loop: Loop) -> None:
    """``target_remaining: limit``: the pruning limit of theta* (the current weights) on a
    seeded subset of the training data (8192 examples at most, batches of 128), recorded
    and taken as the target."""
    c, s = loop.config, loop.state
    if c.target_remaining != LIMIT_TARGET or s.limit is not None:
        return
    batches = make_probe(loop.train_data, LIMIT_SAMPLES, c.seed, 128)
    batches = [(x.to(loop.device), y.to(loop.device)) for x, y in batches]
    limit = pruning_limit(loop.model, batches, loss_fn=loop.loss_fn, seed=c.seed,
                          output_fn=loop.output_fn)  # fmt: skip
    measured = {k: v for k, v in limit.to_dict().items() if not k.startswith("ritz_")}
    # Ranks may hold other data: every rank takes rank 0's limit, so the masks agree.
    s.limit = loop.world.from_main(measured)
    s.target = s.limit["predicted_remaining_fraction"]


def target_counts(loop: Loop, masks: Masks) -> tuple[int, int]:
    """``(alive, kept at the target)`` weights of ``masks``."""
    total = sum(m.numel() for m in masks.values())
    return sum(int(m.sum()) for m in masks.values()), keep_count(total, loop.state.target)


def prune(loop: Loop) -> None:
    """Prune the alive weights as the pruner says, held to the target: with one level,
    pruned straight to it by magnitude (unless the pruner did so itself); with more, never
    below it. The masks are checked to agree on every rank."""
    s = loop.state
    weights = {name: p.detach() for name, p in loop.params.items()}
    before = getattr(loop.pruner, "search_flops", 0.0)
    masks = loop.pruner(weights, s.masks, s.generator)
    # A pruner that trains to decide (TAS's search): what it spent is the level's training.
    searched = getattr(loop.pruner, "search_flops", 0.0) - before
    s.cost["retrain"] += searched
    s.level_flops += searched
    if s.target is not None and getattr(loop.pruner, "target", None) is None:
        alive, keep = target_counts(loop, masks)
        if loop.config.levels == 1 or alive < keep:
            masks = prune_scores({name: w.abs() for name, w in weights.items()}, s.masks, keep)
    if loop.counts is not None:
        masks = hold_counts(weights, s.masks, masks, loop.counts[len(s.levels) - 1])
    s.masks.update(masks)
    loop.world.check_same(mask_fingerprint(s.masks), "the masks after the prune")
    loop.emit("on_prune", s.masks)


def rewind(loop: Loop) -> None:
    """Put the surviving weights where the rewinding mode says, and start the level's
    optimiser (fresh, except with ``rewind: none``) and schedule."""
    c, s = loop.config, loop.state
    if loop.rewind.snapshot is not None:
        loop.model.load_state_dict(s.snapshots[loop.rewind.snapshot])
    if loop.rewind.restart_optimizer or s.optimizer is None:
        loop.fresh_optimizer()
    s.scheduler = make_scheduler(s.optimizer, c.schedule, c.max_epochs)
    loop.enforcer.after_step(s.optimizer)
    s.record = {}


def retrain(loop: Loop, level: int, saved: dict[str, Any] | None = None) -> None:
    """Retrain the pruned network until the stopping rule fires, then decide the level.
    Epoch 0 measures the network right after rewinding; with ``distill: all`` it trains
    distilling from theta*. ``saved``: a saved state from
    within this level to go on from (already restored)."""
    s = loop.state
    loop.distilling = loop.config.distill == "all"
    clock = loop.new_clock()
    epoch = 0
    if saved is not None:
        clock.seconds.update(saved["clock"])
        epoch = saved["epoch"] + 1
    while True:
        last_good = snapshot(loop.model)
        try:
            record = loop.run_epoch(clock, train=epoch > 0)
        except DivergenceError as exc:
            loop.recover(exc, last_good)
            reason, epoch = "diverged", max(epoch - 1, 0)
            if not s.record:  # diverged right after the prune: nothing better to report
                s.record = loop.evaluate(clock)
        else:
            s.record = record
            reason = loop.rule.decide(epoch, loop.score(record), record.get("distance"))
            loop.log(level, epoch, clock, record)
        if reason is not None:
            loop.finish_level(level, epoch, clock, s.record, reason)
            loop.save_state("done", level, epoch, clock)
            return
        loop.save_state("retrain", level, epoch, clock)
        epoch += 1


def finetune(loop: Loop, saved: dict[str, Any] | None = None) -> FinalResult | None:
    """After the last level, train the final ticket ``finetune_epochs`` more epochs with its
    masks enforced, a fresh optimiser and a schedule of its own, and keep the epoch of best
    validation score (None without a fine-tune); with ``finetune_from: dense`` it starts from
    theta* under the final mask instead of the last level's weights, and with ``distill``
    (finetune or all) it distils from theta*. ``saved``: a saved state
    from within the fine-tune to go on from (already restored).

    Early-stopping rules end the sparsest level wherever they stopped; a fine-tune of the
    same length for every method makes their final tickets comparable ("no need to retrain
    to the original performance in intermediate steps, while maintaining performance at the
    end")."""
    c, s = loop.config, loop.state
    if c.finetune_epochs == 0:
        return None
    level = len(s.levels) - 1
    loop.distilling = c.distill != "off"
    clock = loop.new_clock()
    if saved is None:
        start_record = dict(s.record)
        loop.fresh_optimizer()
        if c.finetune_from == "dense":
            # The final mask on theta*: what the fine-tune trains differs only by its mask.
            loop.model.load_state_dict(s.snapshots["dense"])
            loop.enforcer.after_step(s.optimizer)
            start_record = loop.evaluate(clock)
        s.scheduler = make_scheduler(s.optimizer, c.schedule, c.finetune_epochs)
        kept = {"record": start_record, "epoch": 0, "weights": snapshot(loop.model)}
        trained, start = 0, 1
    else:
        kept = saved["phase_state"]
        clock.seconds.update(saved["clock"])
        trained = saved["epoch"]
        start = trained + 1
    for epoch in range(start, c.finetune_epochs + 1):
        last_good = snapshot(loop.model)
        try:
            record = loop.run_epoch(clock, train=True, measure=False)
        except DivergenceError as exc:
            loop.recover(exc, last_good)
            break
        trained = epoch
        loop.log(level, epoch, clock, {**record, "phase": "finetune"})
        if loop.score(record) > loop.score(kept["record"]):
            kept = {"record": record, "epoch": epoch, "weights": snapshot(loop.model)}
        loop.save_state("finetune", level, epoch, clock, phase_state=kept)
    loop.model.load_state_dict(kept["weights"])
    loop.writer.final(loop.model.state_dict(), s.masks)
    best = kept["record"]
    return FinalResult(
        epochs=trained,
        best_epoch=kept["epoch"],
        val_accuracy=best["val_accuracy"],
        val_loss=best["val_loss"],
        val_metric=best["val_metric"],
        **loop.test(),
        train_seconds=clock.seconds["train"],
        eval_seconds=clock.seconds["eval"],
    )
