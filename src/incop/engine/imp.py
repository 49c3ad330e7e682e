"""The IMP loop (METHOD.md section 1): dense warm-up, then prune / rewind / retrain per level.

The loop knows nothing of particular pruners, rewinding modes or stopping rules beyond their
small interfaces; the config builds them, the phases (:mod:`incop.engine.phases`) use them,
and the loop sequences the phases. What changes as it runs is one :class:`RunState`. It holds
no global state besides seeding torch's RNG (dropout draws from it), and writes only through
the writer it is given and the callbacks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from incop.config import METHODS, USER_PREFIX, Config, default_value, resolve, to_yaml
from incop.core import inputs as model_inputs
from incop.core.batches import AUTO, BatchSource, LossFn, count_examples, eval_batch, probe_examples
from incop.core.callbacks import LOGGERS, Callback, check_callback
from incop.core.distill import Teacher
from incop.core.flops import EVAL_PASSES, TRAIN_PASSES, FlopCounter, with_search
from incop.core.inputs import OutputFn
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
from incop.core.optimizers import make_optimizer, make_scheduler
from incop.core.precision import AUTO_PRECISION, Precision, auto_precision
from incop.core.training import (
    DivergenceError,
    evaluate,
    train_epoch,
)
from incop.core.world import World, shared_probe
from incop.engine import phases
from incop.engine.clock import Clock
from incop.engine.counts import frozen_counts, reference_levels
from incop.engine.distributed import current_world
from incop.engine.fastpath import training_module
from incop.engine.outputs import NullWriter, RunWriter, run_writer
from incop.engine.phases import WarmUp
from incop.engine.progress import Progress
from incop.engine.result import LevelResult, Result
from incop.engine.resume import check_settings, warn_threads
from incop.engine.state import RunState
from incop.errors import UserError
from incop.methods.at_init import PruneContext
from incop.methods.pruning import Pruner, preview
from incop.methods.rewind import snapshot
from incop.methods.stopping import Reference, StoppingRule
from incop.workload.models import FACTORY, USER_MODEL, load_factory, model_init
from incop.workload.sources import MappedSource, check_sources


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


class IMP:
    """Iterative magnitude pruning of ``model`` in place, as ``config`` says.

    ``train_data`` and ``val_data`` are iterables of ``(inputs, targets)`` batches,
    re-iterable once per epoch; if ``train_data`` has ``set_epoch(int)`` it is
    called before every epoch (reshuffling, as with a DistributedSampler).
    ``world``: the ranks of a data-parallel run (default: torchrun's, else one process).
    ``callbacks``: objects told of every epoch, prune, level and the run's end
    (:class:`incop.Callback`). ``pruner`` / ``stop``: a user's own pruner or stopping rule,
    used instead of the config's (whose ``pruner`` / ``stop`` then name it).

    What the run changes as it goes is :attr:`state` (a :class:`RunState`); the phases
    (:mod:`incop.engine.phases`) do the work, the loop sequences them.
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
        callbacks: Sequence[Any] = (),
        pruner: Pruner | None = None,
        stop: StoppingRule | None = None,
        output_fn: OutputFn = model_inputs.logits,
    ) -> None:
        self.config = config
        self.output_fn = output_fn
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
        for callback in callbacks:
            check_callback(callback)
        self.user_callbacks = list(callbacks)
        self.user_parts = {"pruner": pruner, "stop": stop}
        for kind, part in self.user_parts.items():
            if part is not None:
                check_part(kind, part)

    # --- services of the phases ----------------------------------------------------------------

    def fresh_optimizer(self) -> None:
        c = self.config
        self.state.optimizer = make_optimizer(
            self.model.parameters(),
            c.optimizer,
            lr=c.lr,
            momentum=c.momentum,
            nesterov=c.nesterov,
            weight_decay=c.weight_decay,
        )

    def new_clock(self) -> Clock:
        return Clock(self.device)

    def _train_one_epoch(self, clock: Clock) -> dict[str, float]:
        s = self.state
        # The rate this epoch trains at: the scheduler steps at its end.
        lr = s.optimizer.param_groups[0]["lr"]
        before = getattr(self.pruner, "dense_backward_examples", 0)
        if hasattr(self.train_data, "set_epoch"):
            self.train_data.set_epoch(s.epoch_counter)
        s.epoch_counter += 1
        teacher = self.teacher() if self.distilling else None
        with clock("train"):
            stats = train_epoch(
                self.trained,
                self.train_data,
                s.optimizer,
                enforcer=self.enforcer,
                loss_fn=self.train_loss_fn,
                device=self.device,
                scheduler=s.scheduler,
                precision=self.precision,
                after_backward=self.after_backward,
                output_fn=self.output_fn,
                teacher=teacher,
            )
        stats = self.world.combine(stats)
        if s.train_examples is None:
            s.train_examples = stats.examples
        flops = TRAIN_PASSES * self.flops.forward(s.masks) * stats.examples
        # Update steps of dynamic sparse training whose backward pass was dense (RigL).
        dense = getattr(self.pruner, "dense_backward_examples", 0)
        flops += 2 * (self.flops.dense(s.masks) - self.flops.forward(s.masks)) * (dense - before)
        if teacher is not None:  # the teacher's forward pass over every example
            flops += self.flops.dense(s.masks) * stats.examples
        return {"train_loss": stats.loss, "train_accuracy": stats.accuracy, "lr": lr,
                "train_flops": float(flops)}  # fmt: skip

    def teacher(self) -> Teacher:
        """theta*, frozen, to distil from (``distill``), built once it exists."""
        dense = self.state.snapshots["dense"]
        if self._teacher is None or self._teacher[0] is not dense:
            c = self.config
            teacher = Teacher.of(self.model, dense, c.distill_alpha, c.distill_temperature,
                                 self.train_loss_fn, self.output_fn)  # fmt: skip
            self._teacher = (dense, teacher)
        return self._teacher[1]

    def evaluate(self, clock: Clock) -> dict[str, float]:
        """The current weights on the validation data."""
        with clock("eval"):
            stats = evaluate(
                self.model,
                self.val_data,
                loss_fn=self.loss_fn,
                device=self.device,
                metric_fn=self.metric.fn,
                precision=self.precision,
                output_fn=self.output_fn,
            )
        stats = self.world.combine(stats)
        self.count("eval", EVAL_PASSES, stats.examples)
        value = self.metric.value(stats.loss, stats.accuracy, stats.custom)
        return {"val_loss": stats.loss, "val_accuracy": stats.accuracy, "val_metric": value}

    def run_epoch(self, clock: Clock, *, train: bool, measure: bool = True) -> dict[str, Any]:
        """Train one epoch (if ``train``), evaluate, and (``measure``) the stopping rule's
        distance.

        Raises :class:`DivergenceError` if the training loss, the validation loss or the
        distance is not finite."""
        record = self._train_one_epoch(clock) if train else {}
        record.update(self.evaluate(clock))
        if measure and self.state.levels:  # the rule has its dense reference from level 0 on
            with clock("flow"):
                distance = self.rule.measure(self.model, self.state.masks)
            self.count_flows()
            if distance is not None:
                record["distance"] = distance
        for key in ("val_loss", "distance"):
            value = record.get(key)
            if value is not None and not math.isfinite(value):
                raise DivergenceError(f"{key.replace('_', ' ')} became {value}")
        return record

    def count(self, category: str, passes: int, examples: int) -> float:
        """Add ``examples`` x ``passes`` forward passes under the current masks to the cost."""
        flops = float(passes * self.flops.forward(self.state.masks) * examples)
        self.state.cost[category] += flops
        return flops

    def count_flows(self) -> None:
        """The cost of one measurement of the stopping rule's flow on the probe set."""
        passes = getattr(self.rule, "probe_passes", 0)
        if passes and self.probe is not None:
            self.count("flows", passes, sum(y.shape[0] for _, y in self.probe))

    def emit(self, hook: str, *args: Any) -> None:
        """Call ``hook`` of every callback that has it, with ``args`` and the state."""
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(*args, self.state) if hook != "close" else method()

    def log(self, level: int, epoch: int, clock: Clock, record: dict[str, Any]) -> dict[str, Any]:
        """Tell the callbacks (``metrics.jsonl`` first) the full epoch record; return it."""
        full = {
            "level": level,
            "epoch": epoch,
            "remaining_fraction": remaining_fraction(self.state.masks),
            **record,
            # Epoch 0 trains nothing: the rate epoch 1 will use.
            "lr": record.get("lr", self.state.optimizer.param_groups[0]["lr"]),
            # What this epoch's training cost (0 for a record that trained nothing).
            "train_flops": record.get("train_flops", 0.0),
            **{f"{k}_seconds": v for k, v in clock.seconds.items()},
        }
        s = self.state
        if level == 0:
            s.cost["warmup"] += full["train_flops"]
        elif record.get("phase") == "finetune":
            s.cost["finetune"] += full["train_flops"]
        else:
            s.cost["retrain"] += full["train_flops"]
        if record.get("phase") != "finetune":
            s.level_flops += full["train_flops"]
        self.emit("on_epoch_end", full)
        return full

    def finish_level(
        self, level: int, epochs: int, clock: Clock, last: dict[str, Any], reason: str
    ) -> None:
        """Decide ``level``: its result, checkpoint and masks."""
        s = self.state
        report = sparsity_report(self.model, s.masks, self.example_input)
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
            train_flops=s.level_flops,
        )
        s.level_flops = 0.0
        self.writer.level(level, self.model.state_dict(), s.masks)
        s.level_masks.append({k: v.clone() for k, v in s.masks.items()})
        s.levels.append(result)
        self.emit("on_level_end", result.to_dict())

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
            output_fn=self.output_fn,
        )
        stats = self.world.combine(stats)
        self.count("eval", EVAL_PASSES, stats.examples)
        return {"test_accuracy": stats.accuracy, "test_loss": stats.loss}

    def score(self, record: dict[str, Any]) -> float:
        """The record's validation metric, higher is better: what every decision compares."""
        return self.metric.score(record["val_metric"])

    def planned(self, level: int) -> int:
        """The most epochs ``level`` can take."""
        return self.config.warmup_epochs if level == 0 else self.config.max_epochs

    def recover(self, exc: DivergenceError, last_good: dict[str, torch.Tensor]) -> None:
        """Put back the weights of the last good epoch after a divergence, and say so."""
        self.model.load_state_dict(last_good)
        warnings.warn(
            f"{exc} at level {len(self.state.levels)}: restored the weights of the last good"
            f" epoch and ended this level's training (on_divergence={self.config.on_divergence})",
            RuntimeWarning,
            stacklevel=4,
        )

    def keep_snapshot(self, name: str, epoch: int) -> None:
        """Keep the current weights as snapshot ``name`` (in memory and, once, on disk)."""
        s = self.state
        s.snapshots[name] = snapshot(self.model)
        s.snapshot_files[name] = self.writer.snapshot(f"{name}-{epoch}", s.snapshots[name])

    def share_snapshot(self, name: str, same_as: str) -> None:
        """Snapshot ``name`` is the same weights as ``same_as`` (and the same file)."""
        s = self.state
        s.snapshots[name] = s.snapshots[same_as]
        s.snapshot_files[name] = s.snapshot_files[same_as]

    def reference(self, score: float) -> Reference:
        """theta* with its score, for the stopping rule; data parallel, each rank measures
        the flows on its part of the probe set and they are summed."""
        s = self.state
        if self.world.size == 1 or self.probe is None:
            return Reference(self.model, s.masks, score, self.probe, pruner=self.pruner,
                             loss_fn=self.loss_fn, output_fn=self.output_fn)  # fmt: skip
        return Reference(
            self.model,
            s.masks,
            score,
            self.world.part(self.probe),
            origin=model_inputs.take(self.probe[0][0], 0, 1),
            reduce=self.world.sum,
            pruner=self.pruner,
            loss_fn=self.loss_fn,
            output_fn=self.output_fn,
        )

    def first_prune(self) -> Masks:
        """The masks the first prune would give the current weights (for the warm-up stop)."""
        weights = {name: p.detach() for name, p in self.params.items()}
        return preview(self.pruner, weights, self.state.masks)

    # --- resume state ----------------------------------------------------------------------------

    def save_state(
        self, phase: str, level: int, epoch: int, clock: Clock, phase_state: Any = None
    ) -> None:
        """Save everything needed to go on after ``epoch`` of ``level`` (``phase``: ``warmup``,
        ``retrain`` within a level, ``done`` once the level is finished, ``finetune``;
        ``phase_state``: whatever that phase needs besides)."""
        if not self.writer.saves_state:
            return
        self.writer.state({
            "phase": phase,
            "phase_state": phase_state,
            "level": level,
            "epoch": epoch,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "scaler": self.precision.state_dict(),
            "clock": dict(clock.seconds),
            "rule": part_state(self.rule) if self.state.levels else None,
            **({"pruner": part_state(self.pruner)} if hasattr(self.pruner, "state_dict") else {}),
            "threads": torch.get_num_threads(),
            **self.state.state_dict(),
        })  # fmt: skip

    def restore(self, saved: dict[str, Any]) -> None:
        """Put the loop (set up, not yet run) back where ``saved`` was saved."""
        c, s = self.config, self.state
        check_settings(saved["config"], c)
        warn_threads(saved["threads"])
        self.model.load_state_dict(saved["model"])
        self.precision.load_state_dict(saved.get("scaler"))
        if saved["optimizer"] is not None:
            self.fresh_optimizer()
            epochs = c.warmup_epochs if saved["phase"] == "warmup" else c.max_epochs
            s.scheduler = make_scheduler(s.optimizer, c.schedule, epochs)
        s.load_state_dict(saved, lambda path: self.writer.read(path, self.device), self.device)
        if saved.get("pruner") is not None and hasattr(self.pruner, "load_state_dict"):
            self.pruner.load_state_dict(saved["pruner"])
        if s.levels:
            reference = self.reference(self.metric.score(s.dense_metric))
            load_part_state(self.rule, saved["rule"], reference)

    # --- the loop --------------------------------------------------------------------------------

    def setup(self) -> None:
        """Seed, check the data, find the prunable weights, build the parts and the probe set.

        Everything that can refuse the run happens here, before the writer opens its folder."""
        c = self.config
        if c.threads is not None:
            torch.set_num_threads(c.threads)
        torch.manual_seed(c.seed)
        self.model.to(self.device)
        self.trained = training_module(
            self.model, channels_last=c.channels_last, compile=c.compile, world=self.world
        )
        sources = {"train_data": self.train_data, "val_data": self.val_data}
        if self.test_data is not None:
            sources["test_data"] = self.test_data
        self.example_input = check_sources(
            self.model, sources, self.loss_fn, self.device, self.metric.fn, self.output_fn
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
        #: ``prune_counts: frozen``: per level (index 0: level 1), the alive weights per tensor.
        self.counts = (
            frozen_counts(reference_levels(c), self.params) if c.prune_counts == "frozen" else None
        )
        #: Where pruning ends (fraction of the prunable weights): a number, or the pruning
        #: limit once theta* is trained (``target_remaining: limit``); None: no target.
        target = c.target_remaining if isinstance(c.target_remaining, float) else None
        self.state = RunState(
            full_masks(self.params), torch.Generator().manual_seed(c.seed), target=target
        )
        self.train_loss_fn = with_l1(self.loss_fn, self.model, c.l1)
        self.enforcer = MaskEnforcer(self.params, self.state.masks)
        self.flops = FlopCounter(self.model, self.state.masks, self.example_input)
        chosen = c.precision
        if chosen == AUTO_PRECISION:
            chosen = auto_precision(self.model, self.device)
        self.precision = Precision(chosen, self.device)
        #: The probe and evaluation batch sizes, ``auto`` chosen from the data and the model.
        self.sizes = {"eval_batch_size": eval_batch(c.eval_batch_size, self.model)}
        if c.used("probe_size") or getattr(self.user_parts["stop"], "needs_probe", False):
            examples = count_examples(self.train_data) if c.probe_size == AUTO else 0
            self.sizes["probe_size"] = probe_examples(c.probe_size, examples)
        self.pruner = self.user_parts["pruner"] or c.build_pruner()
        if hasattr(self.pruner, "bind"):  # it scores with the network itself (synflow, snip)
            context = PruneContext(
                self.model,
                self.train_data,
                self.loss_fn,
                c.seed,
                self.device,
                self.example_input,
                self.world,
                self.output_fn,
                init_fn=model_init(c.model),
                log=lambda record: self.writer.epoch({"level": len(self.state.levels), **record}),
                **self.sizes,
            )
            self.pruner = self.pruner.bind(context)
        self.after_backward = None
        if callable(getattr(self.pruner, "after_backward", None)):
            pruner, model, state = self.pruner, self.model, self.state
            self.after_backward = lambda: pruner.after_backward(model, state.masks, state)
        self.rule = self.user_parts["stop"] or c.build_stopping_rule()
        self.warmup_stop = c.build_warmup_stop()
        self.rewind = c.build_rewind()
        self.probe = None
        if getattr(self.rule, "needs_probe", False):
            self.probe = shared_probe(
                self.train_data,
                self.sizes["probe_size"],
                c.seed,
                self.sizes["eval_batch_size"],
                self.world,
                self.device,
            )
            if callable(getattr(self.rule, "check_model", None)):  # it refuses what it cannot read
                self.rule.check_model(self.model, self.probe)
        #: Whether training distils from theta* now (the phases say, as ``distill`` does).
        self.distilling = False
        self._teacher: tuple[dict, Teacher] | None = None
        self.callbacks: list[Any] = [MetricsLog(self.writer)]
        if c.log and isinstance(self.writer, RunWriter):
            self.callbacks += [LOGGERS.get(name).open(self.writer, c) for name in c.log]
        elif c.log and self.world.is_main:  # other ranks write nothing: rank 0 logs
            raise UserError(
                f"log: {', '.join(c.log)} writes into the run folder, and this run has none;"
                " give out (--out)"
            )
        self.callbacks += self.user_callbacks
        self.bar = Progress(0)

    def _start_bar(self, total: int, done: int, desc: str = "IMP") -> None:
        self.bar = Progress(total, done=done, enabled=self.progress, desc=desc,
                            planned=self.planned, metric=self.metric.name)  # fmt: skip
        self.callbacks = [c for c in self.callbacks if not isinstance(c, Progress)] + [self.bar]

    @contextmanager
    def _writing(self, resume: bool) -> Iterator[dict[str, Any] | None]:
        """Open the writer's folder, take up its saved state (``resume``) or write the config,
        and close the folder and the callbacks at the end; yields the saved state, if any."""
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
                        self.restore(state)
                self.world.barrier()
            if state is None:
                self.writer.config(to_yaml(self.config))
            yield state
            failed = False
        finally:
            try:
                self.emit("close")
            finally:
                self.writer.close(failed=failed)

    def warm_up(self, *, resume: bool = False) -> WarmUp:
        """Set up and train the dense network only: the part a comparison shares.

        ``resume``: go on from the writer's saved state, if there is one."""
        self.setup()
        with self._writing(resume) as saved:
            done = saved["epoch"] if saved is not None else 0
            self._start_bar(self.config.warmup_epochs, done, desc="warm-up")
            return phases.warm_up(self, saved)

    def run(self, warmup: WarmUp | None = None, *, resume: bool = False) -> Result:
        """Run every level and return the result.

        ``warmup``: a dense warm-up from :meth:`warm_up` of another run with the same
        model, data and seed, used instead of training the dense network here.
        ``resume``: go on from the writer's saved state, if there is one.
        """
        self.setup()
        with self._writing(resume) as saved:
            return self._levels(warmup, saved)

    def _levels(self, warmup: WarmUp | None, saved: dict[str, Any] | None) -> Result:
        c, s = self.config, self.state
        phase = saved["phase"] if saved is not None else None
        within = saved["epoch"] if phase not in (None, "done") else 0
        unused = sum(self.planned(lv.level) - lv.epochs for lv in s.levels)
        self._start_bar(
            c.warmup_epochs + c.levels * c.max_epochs + c.finetune_epochs - unused,
            sum(lv.epochs for lv in s.levels) + within,
        )
        if not s.levels:
            shared = warmup is not None
            warmup = warmup if shared else phases.warm_up(self, saved)
            phases.take_up(self, warmup, shared=shared)
            phases.predict_limit(self)
            self.save_state("done", 0, c.warmup_epochs, self.new_clock())
        while len(s.levels) <= c.levels and not self._should_end():
            level = len(s.levels)
            going_on = phase == "retrain" and saved["level"] == level
            if not going_on:
                phases.prune(self)
                phases.rewind(self)
            phases.retrain(self, level, saved if going_on else None)
        final = phases.finetune(self, saved if phase == "finetune" else None)
        result = Result(
            levels=s.levels,
            masks={k: v.clone() for k, v in s.masks.items()},
            dense_accuracy=s.dense_accuracy,
            dense_metric=s.dense_metric,
            final=final,
            config=c,
            limit=s.limit,
            pruner=part_state(self.pruner),
            cost=with_search(s.cost),
            dense_epoch=self._dense_epoch(),
            train_examples=s.train_examples,
            chosen={**self.sizes, "precision": self.precision.name},
            example_input=model_inputs.describe(self.example_input),
            level_masks=s.level_masks,
            **self._noise_floor(),
            sparsity=sparsity_report(self.model, s.masks, self.example_input),
        )
        summary = result.summary()
        self.writer.summary(summary)
        self.emit("on_run_end", summary)
        self._warn_if_at_chance()
        return result

    def _noise_floor(self) -> dict[str, Any]:
        """What ``eps_mode: noise`` measured, for the result."""
        sigma = getattr(self.rule, "noise", None)
        if sigma is None:
            return {}
        return {"noise_floor": {self.rule.name: sigma}, "eps_used": self.rule.threshold}

    def _dense_epoch(self) -> float | None:
        """FLOPs of one dense training epoch (None if no epoch trained)."""
        examples = self.state.train_examples
        if examples is None:
            return None
        return float(TRAIN_PASSES * self.flops.dense(self.state.masks) * examples)

    def _should_end(self) -> bool:
        s = self.state
        if s.target is not None and len(s.levels) > 1:
            alive, keep = phases.target_counts(self, s.masks)
            if alive <= keep:
                return True  # the target is reached
        return self.config.on_divergence == "stop" and s.levels[-1].stop_reason == "diverged"

    def _warn_if_at_chance(self) -> None:
        """Warn when no level learned anything: every validation accuracy within 2 points of
        guessing (1 / classes), the sign of a learning rate too large to train at all."""
        if self.metric.name != "accuracy" or not self.state.levels:
            return
        with torch.no_grad():
            was_training = self.model.training
            self.model.eval()
            outputs = self.output_fn(model_inputs.call(self.model, self.example_input))
            self.model.train(was_training)
        classes = outputs.shape[-1] if torch.is_tensor(outputs) and outputs.dim() >= 2 else 0
        accuracies = [lv.val_accuracy for lv in self.state.levels]
        if classes >= 2 and all(a is not None and a <= 1 / classes + 0.02 for a in accuracies):
            warnings.warn(
                f"every level's validation accuracy stayed at chance ({max(accuracies):.3f}, with"
                f" {classes} classes: {1 / classes:.3f}); nothing was learned. Try a lower"
                f" learning rate than lr={self.config.lr}",
                RuntimeWarning,
                stacklevel=3,
            )


class MetricsLog(Callback):
    """``metrics.jsonl``: one line per epoch record, through the run's writer."""

    def __init__(self, writer: NullWriter) -> None:
        self.writer = writer

    def on_epoch_end(self, record: dict[str, Any], state: RunState) -> None:
        self.writer.epoch(record)


#: What the loop calls on a user's pruner and stopping rule.
_PART_METHODS = {"pruner": ("__call__",), "stop": ("prepare", "measure", "decide")}


def check_part(kind: str, part: object) -> None:
    """Refuse, before any work, a user's pruner or rule that lacks what the loop calls."""
    missing = [m for m in _PART_METHODS[kind] if not callable(getattr(part, m, None))]
    if missing:
        protocol = "incop.Pruner" if kind == "pruner" else "incop.StoppingRule"
        raise UserError(
            f"{kind}: {type(part).__name__} has no {', '.join(missing)}; it must follow the"
            f" {protocol} protocol (README, 'Your own pruner and stopping rule')"
        )


def part_state(part: object) -> dict[str, Any] | None:
    """A part's ``state_dict()``, or None for a part without state."""
    return part.state_dict() if callable(getattr(part, "state_dict", None)) else None


def load_part_state(rule: object, state: dict[str, Any] | None, reference: Reference) -> None:
    """Give a stopping rule back what it computed from theta* (its saved state)."""
    if state is None or not callable(getattr(rule, "load_state_dict", None)):
        raise UserError(
            f"resume: the stopping rule {type(rule).__name__} has no state_dict() /"
            " load_state_dict(): what it took from the dense network cannot be taken up;"
            " give it both (or subclass incop.StoppingRule), or start the run again"
        )
    rule.load_state_dict(state, reference)


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
    callbacks: Sequence[Any] = (),
    pruner: str | Pruner | None = None,
    stop: str | StoppingRule | None = None,
    resume: bool = False,
    output_fn: OutputFn = model_inputs.logits,
    model_factory: str | None = None,
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
    longer tuples); inputs may be a tensor, a tuple (the model's positional arguments) or a
    dict (its keyword arguments, as Hugging Face models take them). ``output_fn(output) ->
    tensor``: what the loss reads of the model's output (default: a tensor as it is, else its
    ``.logits``, a dict's ``"logits"`` or a tuple's first element). ``model_factory``:
    ``"pkg.module:callable"``, a callable that builds ``model``'s architecture with no
    arguments, recorded as the run's ``model`` so that :func:`incop.load_ticket` and
    ``incop export`` rebuild it (without one the run records ``user:<class>``, and they need
    the model passed). Unset arguments take
    the method's and the config's defaults.
    ``callbacks``: objects told of every epoch, prune, level and the run's end
    (:class:`incop.Callback`). ``pruner`` / ``stop``: a registered name, or an object
    following the :class:`incop.Pruner` / :class:`incop.StoppingRule` protocol, used as the
    built-in ones are (the config records it as ``user:<class name>``). ``resume``: go on
    from the saved state in ``out`` (pass the same objects again; their ``state_dict`` is
    taken up).
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
    if model_factory is not None:
        if not (isinstance(model_factory, str) and FACTORY.fullmatch(model_factory)):
            raise UserError(f"model_factory: {model_factory!r} is not allowed; give"
                            " 'pkg.module:callable'")  # fmt: skip
        load_factory(model_factory)  # refused now if it does not import
    parts = {"pruner": pruner, "stop": stop}
    named = {kind: part for kind, part in parts.items() if isinstance(part, str)}
    objects = {kind: part for kind, part in parts.items() if part is not None and kind not in named}
    for kind, part in objects.items():
        check_part(kind, part)
    overrides = {
        **named,
        **{kind: USER_PREFIX + type(part).__name__ for kind, part in objects.items()},
        "metric": metric,
        "method": method,
        "model": model_factory or USER_MODEL + type(model).__name__,
        "levels": levels,
        "max_epochs": max_epochs,
        "warmup_epochs": warmup_epochs,
        "seed": seed,
        "out": out,
        **options,
    }
    config = resolve(overrides)
    if resume and out is None:
        raise UserError("resume: needs out, the run folder to go on from")
    world = current_world()
    writer = run_writer(out, main=world.is_main, mode="resume" if resume else "new")
    imp = IMP(
        config,
        model,
        train_data,
        val_data,
        loss_fn=loss_fn,
        output_fn=output_fn,
        writer=writer,
        progress=progress,
        metric=chosen_metric,
        test_data=test_data,
        world=world,
        callbacks=callbacks,
        **objects,
    )
    return imp.run(resume=resume)
