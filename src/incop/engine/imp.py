"""The IMP loop (METHOD.md section 1): dense warm-up, then prune / rewind / retrain per level.

The loop knows nothing of particular pruners, rewinding modes or stopping
rules beyond their small interfaces; the config builds them and the loop
drives them. It holds no global state besides seeding torch's RNG (dropout
draws from it), and writes only through the writer it is given.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from incop.config import LIMIT_TARGET, METHODS, Config, default_value, resolve, to_yaml
from incop.core.batches import BatchSource, make_probe
from incop.core.masks import (
    MaskEnforcer,
    Masks,
    full_masks,
    prunable_parameters,
    remaining_fraction,
    sparsity_report,
    unmatched_layer_patterns,
    unmatched_patterns,
)
from incop.core.metrics import Metric, MetricFn
from incop.core.precision import Precision
from incop.core.training import (
    DivergenceError,
    LossFn,
    evaluate,
    make_optimizer,
    make_scheduler,
    train_epoch,
)
from incop.core.world import World, shared_probe
from incop.engine.distributed import current_world, mask_fingerprint
from incop.engine.fastpath import training_module
from incop.engine.finetune import finetune
from incop.engine.outputs import NullWriter, run_writer
from incop.engine.progress import Progress
from incop.engine.result import LevelResult, Result
from incop.engine.resume import capture_state, restore_state
from incop.errors import UserError
from incop.methods.at_init import PruneContext
from incop.methods.limit import pruning_limit
from incop.methods.pruning import keep_count, preview, prune_scores
from incop.methods.rewind import snapshot
from incop.methods.stopping import Reference
from incop.workload.sources import MappedSource, check_sources

#: Training examples the pruning limit is measured on (LIMIT.md B6's default), at most.
LIMIT_SAMPLES = 8192


def with_l1(loss_fn: LossFn, model: nn.Module, l1: float) -> LossFn:
    """``loss_fn`` plus ``l1`` times the l1 norm of every parameter (LOMP's objective; the
    official code sums every weight and bias, BatchNorm's included)."""
    if l1 == 0:
        return loss_fn

    def regularised(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss_fn(outputs, targets) + l1 * sum(p.abs().sum() for p in model.parameters())

    return regularised


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class WarmUp:
    """The outcome of dense training, shareable by every method of one seed.

    ``snapshots``: state dicts ``init`` (theta_0), ``dense`` (theta*) and, for
    ``epoch:K`` rewinding, ``epoch``; ``best``: the best epoch's record
    (``val_accuracy`` = a*); ``seconds``: train/eval time spent;
    ``records``: the epoch records to log; ``epoch_counter``: epochs seen, for data order;
    ``epochs``: dense epochs trained; ``diverged``: the loss became non-finite before
    ``warmup_epochs`` (theta* is then the best epoch before that); ``reason``: why it ended
    (``warmup``: all its epochs; ``epi``: the first prune's mask stopped changing).
    """

    snapshots: dict[str, dict[str, torch.Tensor]]
    best: dict[str, Any]
    seconds: dict[str, float]
    records: list[dict[str, Any]]
    epoch_counter: int
    epochs: int = 0
    diverged: bool = False
    reason: str = "warmup"


class _Clock:
    """Wall-clock seconds per category; synchronises CUDA so GPU time is not misattributed."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = {"train": 0.0, "eval": 0.0, "flow": 0.0}

    @contextmanager
    def __call__(self, category: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.seconds[category] += time.perf_counter() - start


class IMP:
    """Iterative magnitude pruning of ``model`` in place, as ``config`` says.

    ``train_data`` and ``val_data`` are iterables of ``(inputs, targets)`` batches,
    re-iterable once per epoch; if ``train_data`` has ``set_epoch(int)`` it is
    called before every epoch (reshuffling, as with a DistributedSampler).
    ``world``: the ranks of a data-parallel run (default: torchrun's, else one process).
    """

    def __init__(
        self,
        config: Config,
        model: nn.Module,
        train_data: BatchSource,
        val_data: BatchSource,
        *,
        loss_fn: LossFn = F.cross_entropy,
        writer: NullWriter | None = None,
        progress: bool = False,
        metric: Metric | None = None,
        test_data: BatchSource | None = None,
        world: World | None = None,
    ) -> None:
        self.config = config
        self.world = world or current_world()
        self.model = model
        self.train_data = train_data
        self.val_data = val_data
        self.test_data = test_data
        self.loss_fn = loss_fn
        self.metric = metric or Metric.named(config.metric)
        self.writer = writer or NullWriter()
        self.progress = progress and self.world.is_main  # one bar: rank 0's
        self.device = self.world.device(resolve_device(config.device))
        self.epoch_counter = 0

    # --- pieces -------------------------------------------------------------------------------

    def fresh_optimizer(self) -> None:
        c = self.config
        self.optimizer = make_optimizer(
            self.model.parameters(),
            c.optimizer,
            lr=c.lr,
            momentum=c.momentum,
            nesterov=c.nesterov,
            weight_decay=c.weight_decay,
        )

    def _train_one_epoch(self, clock: _Clock) -> dict[str, float]:
        # The rate this epoch trains at: the scheduler steps at its end.
        lr = self.optimizer.param_groups[0]["lr"]
        if hasattr(self.train_data, "set_epoch"):
            self.train_data.set_epoch(self.epoch_counter)
        self.epoch_counter += 1
        with clock("train"):
            stats = train_epoch(
                self.trained,
                self.train_data,
                self.optimizer,
                enforcer=self.enforcer,
                loss_fn=self.train_loss_fn,
                device=self.device,
                scheduler=self.scheduler,
                precision=self.precision,
            )
        stats = self.world.combine(stats)
        return {"train_loss": stats.loss, "train_accuracy": stats.accuracy, "lr": lr}

    def _evaluate(self, clock: _Clock) -> dict[str, float]:
        with clock("eval"):
            stats = evaluate(
                self.model,
                self.val_data,
                loss_fn=self.loss_fn,
                device=self.device,
                metric_fn=self.metric.fn,
                precision=self.precision,
            )
        stats = self.world.combine(stats)
        value = self.metric.value(stats.loss, stats.accuracy, stats.custom)
        return {"val_loss": stats.loss, "val_accuracy": stats.accuracy, "val_metric": value}

    def log(self, level: int, epoch: int, clock: _Clock, record: dict[str, Any]) -> dict[str, Any]:
        """Write the full epoch record and return it."""
        full = {
            "level": level,
            "epoch": epoch,
            "remaining_fraction": remaining_fraction(self.masks),
            **record,
            # Epoch 0 trains nothing: the rate epoch 1 will use.
            "lr": record.get("lr", self.optimizer.param_groups[0]["lr"]),
            **{f"{k}_seconds": v for k, v in clock.seconds.items()},
        }
        self.writer.epoch(full)
        self.bar.show(level=level, **{self.metric.name[:8]: f"{full['val_metric']:.4g}"})
        return full

    def _finish_level(
        self, level: int, epochs: int, clock: _Clock, last: dict[str, Any], reason: str
    ) -> None:
        report = sparsity_report(self.model, self.masks, self.example_input)
        result = LevelResult(
            level=level,
            remaining_fraction=report.remaining_fraction,
            epochs=epochs,
            val_accuracy=last["val_accuracy"],
            val_metric=last["val_metric"],
            **self.test(),
            val_loss=last["val_loss"],
            train_seconds=clock.seconds["train"],
            eval_seconds=clock.seconds["eval"],
            flow_seconds=clock.seconds["flow"],
            stop_reason=reason,
            macs_fraction=report.macs_fraction,
            distance=last.get("distance"),
            # Per tensor: layer collapse is how one-shot pruning at init is known to fail.
            layer_remaining={layer.name: layer.alive / layer.total for layer in report.layers},
        )
        self.writer.level(level, self.model.state_dict(), self.masks)
        self.level_masks.append({k: v.clone() for k, v in self.masks.items()})
        self.levels.append(result)
        self.bar.settle(self._planned(level), epochs)

    def test(self) -> dict[str, float | None]:
        """The current weights on the test data, for the record only: nothing reads it to
        decide (a test shuffles the test labels and checks every decision is unchanged)."""
        if self.test_data is None:
            return {"test_accuracy": None, "test_loss": None}
        stats = evaluate(
            self.model,
            self.test_data,
            loss_fn=self.loss_fn,
            device=self.device,
            precision=self.precision,
        )
        stats = self.world.combine(stats)
        return {"test_accuracy": stats.accuracy, "test_loss": stats.loss}

    def score(self, record: dict[str, Any]) -> float:
        """The record's validation metric, higher is better: what every decision compares."""
        return self.metric.score(record["val_metric"])

    def _planned(self, level: int) -> int:
        """The most epochs ``level`` can take."""
        return self.config.warmup_epochs if level == 0 else self.config.max_epochs

    # --- resume state (incop.engine.resume) -------------------------------------------------------

    def save_state(
        self, phase: str, level: int, epoch: int, clock: _Clock, phase_state: Any = None
    ) -> None:
        """Save everything needed to go on after ``epoch`` of ``level`` (``phase``: ``warmup``,
        ``retrain`` within a level, ``done`` once the level is finished, ``finetune``;
        ``phase_state``: whatever that phase needs besides)."""
        if self.writer.saves_state:
            self.writer.state(capture_state(self, phase, level, epoch, clock.seconds, phase_state))

    # --- the loop -------------------------------------------------------------------------------

    def run_epoch(self, clock: _Clock, *, train: bool, measure: bool = True) -> dict[str, Any]:
        """Train one epoch (if ``train``), evaluate, and (``measure``) the stopping rule's
        distance.

        Raises :class:`DivergenceError` if the training loss, the validation loss or the
        distance is not finite."""
        record = self._train_one_epoch(clock) if train else {}
        record.update(self._evaluate(clock))
        if measure and self.levels:  # the rule has its dense reference from level 0 on
            with clock("flow"):
                distance = self.rule.measure(self.model, self.masks)
            if distance is not None:
                record["distance"] = distance
        for key in ("val_loss", "distance"):
            value = record.get(key)
            if value is not None and not math.isfinite(value):
                raise DivergenceError(f"{key.replace('_', ' ')} became {value}")
        return record

    def new_clock(self) -> _Clock:
        return _Clock(self.device)

    def recover(self, exc: DivergenceError, last_good: dict[str, torch.Tensor]) -> None:
        """Put back the weights of the last good epoch after a divergence, and say so."""
        self.model.load_state_dict(last_good)
        warnings.warn(
            f"{exc} at level {len(self.levels)}: restored the weights of the last good epoch"
            f" and ended this level's training (on_divergence={self.config.on_divergence})",
            RuntimeWarning,
            stacklevel=3,
        )

    def keep_snapshot(self, name: str, epoch: int) -> None:
        """Keep the current weights as snapshot ``name`` (in memory and, once, on disk)."""
        self.snapshots[name] = snapshot(self.model)
        self.snapshot_files[name] = self.writer.snapshot(f"{name}-{epoch}", self.snapshots[name])

    def share_snapshot(self, name: str, same_as: str) -> None:
        """Snapshot ``name`` is the same weights as ``same_as`` (and the same file)."""
        self.snapshots[name] = self.snapshots[same_as]
        self.snapshot_files[name] = self.snapshot_files[same_as]

    def train_dense(self, state: dict[str, Any] | None = None) -> WarmUp:
        """Train densely for ``warmup_epochs``; keep the best-validation weights as theta*.

        ``state``: a saved warm-up state to go on from (already restored)."""
        c = self.config
        clock = _Clock(self.device)
        records: list[dict[str, Any]] = []
        if state is not None:
            clock.seconds.update(state["clock"])
            start = state["epoch"] + 1
            self.warmup_stop.load_state_dict(state["phase_state"])
        else:
            self.fresh_optimizer()
            self.scheduler = make_scheduler(self.optimizer, c.schedule, c.warmup_epochs)
            self.keep_snapshot("init", 0)
            self.share_snapshot("dense", "init")
            if self.rewind.mode == "epoch" and self.rewind.epoch == 0:
                self.share_snapshot("epoch", "init")
            self.best = None
            if c.warmup_epochs == 0:
                try:
                    self.best = self.run_epoch(clock, train=False)
                except DivergenceError as exc:
                    raise UserError(f"the initial dense network does not evaluate: {exc}") from None
                records.append(self.log(0, 0, clock, self.best))
            self.save_state("warmup", 0, 0, clock, self.warmup_stop.state_dict())
            start = 1
        diverged, trained = False, start - 1
        ended = state is not None and self.warmup_stop.decide(state["epoch"])
        for epoch in range(start, c.warmup_epochs + 1):
            if ended:
                break
            last_good = snapshot(self.model)
            try:
                record = self.run_epoch(clock, train=True)
            except DivergenceError as exc:
                if self.best is None:
                    raise UserError(
                        f"the dense warm-up diverged in its first epoch ({exc}); try a lower"
                        f" learning rate than lr={c.lr} or a larger batch size than"
                        f" batch_size={c.batch_size}"
                    ) from None
                self.recover(exc, last_good)
                diverged = True
                break
            trained = epoch
            with clock("flow"):
                similarity = self.warmup_stop.observe(epoch, self._first_prune)
            if similarity is not None:
                record["epi_similarity"] = similarity
            records.append(self.log(0, epoch, clock, record))
            self.bar.advance()
            ended = self.warmup_stop.decide(epoch)
            # An early end makes theta* this epoch's weights, the ones the indicator judged.
            improved = ended or self.best is None or self.score(record) > self.score(self.best)
            if improved:
                self.best = record
                self.keep_snapshot("dense", epoch)
            if self.rewind.mode == "epoch" and epoch == self.rewind.epoch:
                if improved:  # the same weights: one file serves both
                    self.share_snapshot("epoch", "dense")
                else:
                    self.keep_snapshot("epoch", epoch)
            self.save_state("warmup", 0, epoch, clock, self.warmup_stop.state_dict())
        return WarmUp(
            self.snapshots,
            self.best,
            dict(clock.seconds),
            records,
            self.epoch_counter,
            trained,
            diverged,
            self.warmup_stop.name if ended else "warmup",
        )

    def reference(self, score: float) -> Reference:
        """theta* with its score, for the stopping rule; data parallel, each rank measures
        the flows on its part of the probe set and they are summed."""
        if self.world.size == 1 or self.probe is None:
            return Reference(self.model, self.masks, score, self.probe, pruner=self.pruner)
        return Reference(
            self.model,
            self.masks,
            score,
            self.world.part(self.probe),
            origin=self.probe[0][0][:1],
            reduce=self.world.sum,
            pruner=self.pruner,
        )

    def _first_prune(self) -> Masks:
        """The masks the first prune would give the current weights (for the warm-up stop)."""
        weights = {name: p.detach() for name, p in self.params.items()}
        return preview(self.pruner, weights, self.masks)

    def level_zero(self, warmup: WarmUp, *, shared: bool = False) -> None:
        """Take up a dense warm-up and prepare the stopping rule; ``shared``: trained by another
        run, so its epoch records are logged here too."""
        if shared:  # trained elsewhere: this run folder gets its own copies, for resume
            self.snapshots, self.snapshot_files = {}, {}
            for name, weights in warmup.snapshots.items():
                self.snapshots[name] = weights
                self.snapshot_files[name] = self.writer.snapshot(f"{name}-0", weights)
        self.best = warmup.best
        self.epoch_counter = warmup.epoch_counter
        self.model.load_state_dict(self.snapshots["dense"])
        self.dense_accuracy = warmup.best["val_accuracy"]
        self.dense_metric = warmup.best["val_metric"]
        clock = _Clock(self.device)
        clock.seconds.update(warmup.seconds)
        if shared:
            for record in warmup.records:
                self.writer.epoch(record)
        with clock("flow"):
            reference = self.reference(self.score(warmup.best))
            self.rule.prepare(reference)
        reason = "diverged" if warmup.diverged else warmup.reason
        self._finish_level(0, warmup.epochs, clock, warmup.best, reason)

    def retrain_level(self, level: int, state: dict[str, Any] | None = None) -> None:
        """Prune, rewind, then retrain until the stopping rule fires.

        ``state``: a saved state from within this level to go on from (already restored)."""
        c = self.config
        clock = _Clock(self.device)
        if state is not None:
            clock.seconds.update(state["clock"])
            epoch = state["epoch"] + 1
        else:
            weights = {name: p.detach() for name, p in self.params.items()}
            self.masks.update(
                self.to_target(weights, self.pruner(weights, self.masks, self.generator))
            )
            self.world.check_same(mask_fingerprint(self.masks), "the masks after the prune")
            if self.rewind.snapshot is not None:
                self.model.load_state_dict(self.snapshots[self.rewind.snapshot])
            if self.rewind.restart_optimizer or self.optimizer is None:
                self.fresh_optimizer()
            self.scheduler = make_scheduler(self.optimizer, c.schedule, c.max_epochs)
            self.enforcer.after_step(self.optimizer)
            self.record = {}
            epoch = 0
        while True:
            last_good = snapshot(self.model)
            try:
                record = self.run_epoch(clock, train=epoch > 0)
            except DivergenceError as exc:
                self.recover(exc, last_good)
                reason, epoch = "diverged", max(epoch - 1, 0)
                if not self.record:  # diverged right after the prune: nothing better to report
                    self.record = self._evaluate(clock)
            else:
                self.record = record
                reason = self.rule.decide(epoch, self.score(record), record.get("distance"))
                self.log(level, epoch, clock, record)
                if epoch > 0:
                    self.bar.advance()
            if reason is not None:
                self._finish_level(level, epoch, clock, self.record, reason)
                self.save_state("done", level, epoch, clock)
                return
            self.save_state("retrain", level, epoch, clock)
            epoch += 1

    def setup(self) -> None:
        """Seed, check the data, find the prunable weights, build the parts and the probe set.

        Everything that can refuse the run happens here, before the writer opens its folder."""
        c = self.config
        if c.threads is not None:
            torch.set_num_threads(c.threads)
        torch.manual_seed(c.seed)
        self.generator = torch.Generator().manual_seed(c.seed)
        self.model.to(self.device)
        self.trained = training_module(
            self.model, channels_last=c.channels_last, compile=c.compile, world=self.world
        )
        sources = {"train_data": self.train_data, "val_data": self.val_data}
        if self.test_data is not None:
            sources["test_data"] = self.test_data
        self.example_input = check_sources(
            self.model, sources, self.loss_fn, self.device, self.metric.fn
        )
        held = getattr(self.train_data, "x", None)
        if torch.is_tensor(held) and c.batch_size > len(held):
            warnings.warn(
                f"batch_size {c.batch_size} is larger than the training split ({len(held)}"
                f" examples): every epoch is one batch of {len(held)}",
                RuntimeWarning,
                stacklevel=3,
            )
        unmatched = unmatched_patterns(self.model, c.include, c.exclude)
        if c.used("if_skip") and c.if_skip != default_value("if_skip"):
            unmatched += unmatched_layer_patterns(self.model, c.if_skip, c.include, c.exclude)
        if unmatched:
            raise UserError("\n".join(unmatched))
        self.params = prunable_parameters(self.model, c.include, c.exclude)
        if not self.params:
            raise UserError(
                "no prunable weights: the model has no Conv/Linear weight left after"
                f" include={c.include} exclude={c.exclude}"
            )
        self.masks = full_masks(self.params)
        self.train_loss_fn = with_l1(self.loss_fn, self.model, c.l1)
        #: Where pruning ends (fraction of the prunable weights): a number, or the pruning
        #: limit once theta* is trained (``target_remaining: limit``); None: no target.
        self.target = c.target_remaining if isinstance(c.target_remaining, float) else None
        self.limit: dict[str, Any] | None = None
        self.enforcer = MaskEnforcer(self.params, self.masks)
        self.precision = Precision(c.precision, self.device)
        self.pruner = c.build_pruner()
        if hasattr(self.pruner, "bind"):  # it scores with the network itself (synflow, snip)
            context = PruneContext(
                self.model,
                self.train_data,
                self.loss_fn,
                c.seed,
                self.device,
                self.example_input,
                self.world,
            )
            self.pruner = self.pruner.bind(context)
        self.rule = c.build_stopping_rule()
        self.warmup_stop = c.build_warmup_stop()
        self.rewind = c.build_rewind()
        self.snapshots: dict[str, dict[str, torch.Tensor]] = {}
        self.snapshot_files: dict[str, str | None] = {}
        self.levels: list[LevelResult] = []
        self.level_masks: list[Masks] = []
        self.best: dict[str, Any] | None = None
        self.optimizer = self.scheduler = None
        self.record: dict[str, Any] = {}
        self.bar = Progress(0)
        self.probe = None
        if self.rule.needs_probe:
            self.probe = shared_probe(
                self.train_data, c.probe_size, c.seed, c.eval_batch_size, self.world, self.device
            )

    @contextmanager
    def _writing(self, resume: bool) -> Iterator[dict[str, Any] | None]:
        """Open the writer's folder, take up its saved state (``resume``) or write the config,
        and close the folder at the end; yields the saved state, if any."""
        self.writer.open()
        failed = True
        try:
            state = None
            # Rank 0 first: it checks the folder and cuts it back to the saved state, then the
            # other ranks read it, and rank 0 writes again only once they all have.
            for main_turn in (True, False) if resume else ():
                if self.world.is_main == main_turn:
                    state = self.writer.load_state(self.device)
                    if state is not None:
                        restore_state(self, state)
                self.world.barrier()
            if state is None:
                self.writer.config(to_yaml(self.config))
            yield state
            failed = False
        finally:
            self.writer.close(failed=failed)

    def warm_up(self, *, resume: bool = False) -> WarmUp:
        """Set up and train the dense network only: the part a comparison shares.

        ``resume``: go on from the writer's saved state, if there is one."""
        self.setup()
        with self._writing(resume) as state:
            done = state["epoch"] if state is not None else 0
            self.bar = Progress(
                self.config.warmup_epochs,
                done=done,
                enabled=self.progress,
                desc="warm-up",
            )
            try:
                return self.train_dense(state)
            finally:
                self.bar.close()

    def run(self, warmup: WarmUp | None = None, *, resume: bool = False) -> Result:
        """Run every level and return the result.

        ``warmup``: a dense warm-up from :meth:`warm_up` of another run with the same
        model, data and seed, used instead of training the dense network here.
        ``resume``: go on from the writer's saved state, if there is one.
        """
        self.setup()
        with self._writing(resume) as state:
            return self._levels(warmup, state)

    def _levels(self, warmup: WarmUp | None, state: dict[str, Any] | None) -> Result:
        c = self.config
        within = state["epoch"] if state is not None and state["phase"] != "done" else 0
        unused = sum(self._planned(lv.level) - lv.epochs for lv in self.levels)
        self.bar = Progress(
            c.warmup_epochs + c.levels * c.max_epochs + c.finetune_epochs - unused,
            done=sum(lv.epochs for lv in self.levels) + within,
            enabled=self.progress,
        )
        try:
            if not self.levels:
                if warmup is None:
                    warmup = self.train_dense(state)
                    self.level_zero(warmup)
                else:
                    self.bar.advance(warmup.epochs)
                    self.level_zero(warmup, shared=True)
                self.predict_limit()
                self.save_state("done", 0, c.warmup_epochs, _Clock(self.device))
            while len(self.levels) <= c.levels and not self._should_end():
                level = len(self.levels)
                within = (
                    state is not None and state["phase"] == "retrain" and state["level"] == level
                )
                self.retrain_level(level, state if within else None)
            final = None
            if c.finetune_epochs > 0:
                going_on = state is not None and state["phase"] == "finetune"
                final = finetune(self, state if going_on else None)
        finally:
            self.bar.close()
        result = Result(
            levels=self.levels,
            masks={k: v.clone() for k, v in self.masks.items()},
            dense_accuracy=self.dense_accuracy,
            dense_metric=self.dense_metric,
            final=final,
            config=c,
            limit=self.limit,
            level_masks=self.level_masks,
            sparsity=sparsity_report(self.model, self.masks, self.example_input),
        )
        self.writer.summary(result.summary())
        self._warn_if_at_chance()
        return result

    def _warn_if_at_chance(self) -> None:
        """Warn when no level learned anything: every validation accuracy within 2 points of
        guessing (1 / classes), the sign of a learning rate too large to train at all."""
        if self.metric.name != "accuracy" or not self.levels:
            return
        with torch.no_grad():
            was_training = self.model.training
            self.model.eval()
            outputs = self.model(self.example_input)
            self.model.train(was_training)
        classes = outputs.shape[-1] if torch.is_tensor(outputs) and outputs.dim() >= 2 else 0
        accuracies = [lv.val_accuracy for lv in self.levels]
        if classes >= 2 and all(a is not None and a <= 1 / classes + 0.02 for a in accuracies):
            warnings.warn(
                f"every level's validation accuracy stayed at chance ({max(accuracies):.3f}, with"
                f" {classes} classes: {1 / classes:.3f}); nothing was learned. Try a lower"
                f" learning rate than lr={self.config.lr}",
                RuntimeWarning,
                stacklevel=3,
            )

    def _target_count(self, masks: Masks) -> tuple[int, int]:
        """``(alive, kept at the target)`` weights of ``masks``."""
        total = sum(m.numel() for m in masks.values())
        return sum(int(m.sum()) for m in masks.values()), keep_count(total, self.target)

    def _should_end(self) -> bool:
        if self.target is not None and len(self.levels) > 1:
            alive, keep = self._target_count(self.masks)
            if alive <= keep:
                return True  # the target is reached
        return self.config.on_divergence == "stop" and self.levels[-1].stop_reason == "diverged"

    def to_target(self, weights: dict[str, torch.Tensor], masks: Masks) -> Masks:
        """The pruner's new ``masks``, held to the target: with one level, pruned straight to
        it by magnitude (unless the pruner did so itself); with more, never below it."""
        if self.target is None or getattr(self.pruner, "target", None) is not None:
            return masks
        alive, keep = self._target_count(masks)
        if self.config.levels == 1 or alive < keep:
            scores = {name: w.abs() for name, w in weights.items()}
            return prune_scores(scores, self.masks, keep)
        return masks

    def predict_limit(self) -> None:
        """``target_remaining: limit``: the pruning limit of theta* (the current weights) on a
        seeded subset of the training data (8192 examples at most, batches of 128), recorded
        and taken as the target."""
        if self.config.target_remaining != LIMIT_TARGET or self.limit is not None:
            return
        batches = make_probe(self.train_data, LIMIT_SAMPLES, self.config.seed, 128)
        batches = [(x.to(self.device), y.to(self.device)) for x, y in batches]
        limit = pruning_limit(self.model, batches, loss_fn=self.loss_fn, seed=self.config.seed)
        measured = {k: v for k, v in limit.to_dict().items() if not k.startswith("ritz_")}
        # Ranks may hold other data: every rank takes rank 0's limit, so the masks agree.
        self.limit = self.world.from_main(measured)
        self.target = self.limit["predicted_remaining_fraction"]


def prune(
    model: nn.Module,
    train_data: BatchSource,
    val_data: BatchSource,
    *,
    test_data: BatchSource | None = None,
    method: str = "incop-gf",
    levels: int | None = None,
    max_epochs: int | None = None,
    warmup_epochs: int | None = None,
    seed: int = 0,
    out: str | None = None,
    loss_fn: LossFn = F.cross_entropy,
    metric: str | MetricFn | None = None,
    higher_is_better: bool = True,
    batch_fn: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] | None = None,
    progress: bool = False,
    **options: Any,
) -> Result:
    """Find sparse networks in ``model`` by IMP; ``model`` is pruned in place.

    ``train_data`` / ``val_data``: iterables of ``(inputs, targets)`` batches
    (e.g. a ``torch.utils.data.DataLoader`` or :class:`incop.Batches`); every decision
    reads ``val_data``. ``test_data`` (optional): evaluated at the end of every level and
    reported as ``test_accuracy`` / ``test_loss``, never used to decide.
    ``method``: ``lth``, ``random``, ``sap``, ``sap-acc``, ``incop-if`` or
    ``incop-gf``; ``levels`` pruning rounds after the dense warm-up of
    ``warmup_epochs``, each retraining at most ``max_epochs``. ``options``: any
    other :class:`incop.config.Config` field (``p=1, q=2, rewind="init", eps=0.2``...).
    ``out``: a folder to write the run to (config, metrics, summary, checkpoints).
    ``loss_fn(outputs, targets)``: the training loss (a mean over the batch).
    ``metric``: what every decision reads on ``val_data`` (best dense epoch, accuracy rule,
    the flow rules' accuracy clause): ``"accuracy"`` (default; classification),
    ``"loss"`` (any task, e.g. regression), or a callable ``(outputs, targets) -> float``,
    the mean over one batch, oriented by ``higher_is_better``.
    ``batch_fn(batch) -> (inputs, targets)``: unpacks batches that are not pairs (dicts,
    longer tuples). Unset arguments take the method's and the config's defaults.
    """
    if method is None:
        raise UserError("method: None is not a method; allowed: " + ", ".join(METHODS.names()))
    if not isinstance(model, nn.Module):
        raise UserError(f"model: got a {type(model).__name__}, not a torch.nn.Module")
    chosen_metric = None
    if callable(metric):
        chosen_metric = Metric.from_callable(metric, higher_is_better)
        metric = chosen_metric.name
    if batch_fn is not None:
        train_data, val_data = MappedSource(train_data, batch_fn), MappedSource(val_data, batch_fn)
        if test_data is not None:
            test_data = MappedSource(test_data, batch_fn)
    overrides = {
        "metric": metric,
        "method": method,
        "levels": levels,
        "max_epochs": max_epochs,
        "warmup_epochs": warmup_epochs,
        "seed": seed,
        "out": out,
        **options,
    }
    config = resolve(overrides)
    world = current_world()
    writer = run_writer(out, main=world.is_main)
    imp = IMP(
        config,
        model,
        train_data,
        val_data,
        loss_fn=loss_fn,
        writer=writer,
        progress=progress,
        metric=chosen_metric,
        test_data=test_data,
        world=world,
    )
    return imp.run()
