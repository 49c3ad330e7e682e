"""Stopping rules for a retraining phase (METHOD.md section 6).

The IMP loop asks a rule two things after every epoch (and once before the
first, "epoch 0"): :meth:`StoppingRule.measure` — a flow distance, or None for
rules that need none (the loop times this as flow time) — and
:meth:`StoppingRule.decide` — the reason to stop, or None to go on. ``decide``
is a pure function of the epoch, the validation score and the distance, so
rules can be checked on scripted sequences. The score is the run's validation
metric oriented so that higher is better (:class:`incop.core.metrics.Metric`):
accuracy as it is, a loss negated.

Every rule stops at the cap ``max_epochs`` (E) and never before ``min_epochs``. This module
holds what every rule shares: the protocol (:class:`StoppingRule`, which is also ``fixed``),
the registry and the reasons a level ends; each other rule is a file of this package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from incop.core import inputs as model_inputs
from incop.core.batches import LossFn
from incop.core.inputs import OutputFn
from incop.core.options import Component
from incop.core.registry import Registry
from incop.methods.flows import Reduce
from incop.methods.pruning import Pruner

if TYPE_CHECKING:
    import torch
    from torch import nn

    from incop.core.masks import Masks


#: Why a level ended, as recorded in ``stop_reason`` and explained under the level table: the
#: loop's own reasons; each rule and warm-up stop adds its ``reasons`` as it is registered.
STOP_REASONS = {
    "warmup": "the dense network (level 0), trained warmup_epochs",
    "diverged": "the loss became NaN or infinite; the last good epoch's weights were kept",
}

STOPPING_RULES: Registry[type] = Registry("stopping rule")


def register_rule(name: str, help: str = "") -> Callable[[type], type]:
    """Register a stopping rule class as ``name``, with the reasons it can stop for."""

    def add(cls: type) -> type:
        STOPPING_RULES.register(name, help)(cls)
        STOP_REASONS.update(getattr(cls, "reasons", {}))
        return cls

    return add


@dataclass
class Reference:
    """What retraining aims back at: the trained dense network theta* and its validation
    score a* (the metric oriented so that higher is better).

    ``probe`` is the fixed probe set (batches of ``(inputs, targets)``) that every
    flow measurement of the run uses; ``masks`` are the dense (all-ones) masks. Data
    parallel, ``probe`` is this rank's part of it, ``origin`` the whole set's first input
    (shape (1, ...)) and ``reduce`` sums over the ranks (see :func:`incop.information_flow`).
    """

    model: nn.Module
    masks: Masks
    score: float
    probe: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None
    origin: torch.Tensor | None = None
    reduce: Reduce | None = None
    #: The run's own (bound) pruner, for rules that watch the next prune.
    pruner: Pruner | None = None
    #: The run's ``loss_fn(outputs, targets)`` (batch mean), for rules that take gradients;
    #: None: cross-entropy.
    loss_fn: LossFn | None = None
    #: The run's ``output_fn`` (:func:`incop.core.inputs.logits` by default).
    output_fn: OutputFn = model_inputs.logits


@dataclass
class StoppingRule(Component):
    """``fixed(E)``: always E epochs (LTH and SAP as published).

    Also the protocol every stopping rule follows, a user's own included (subclass it, or
    give an object the same methods): :meth:`prepare` once after the warm-up, then after
    every epoch :meth:`measure` and :meth:`decide`; :meth:`state_dict` /
    :meth:`load_state_dict` carry what it computed across ``--resume`` (tensors, numbers,
    strings, lists and dicts only). ``name`` is recorded in the config; ``reasons``: the
    ``stop_reason`` values it returns, with the line the level table explains them by.
    """

    max_epochs: int
    min_epochs: int = 1
    name: str = field(default="fixed", init=False)

    #: Whether :meth:`prepare` needs ``Reference.probe``.
    needs_probe: ClassVar[bool] = False
    #: Forward passes one probe example costs at each :meth:`measure` (the run's FLOP count).
    probe_passes: ClassVar[int] = 0
    reasons: ClassVar[dict[str, str]] = {"cap": "retrained the full max_epochs (E)"}

    @classmethod
    def from_options(cls, options: Any, config: Any) -> StoppingRule:
        """The rule with the run's ``max_epochs`` and ``min_epochs`` and its own options."""
        return cls(max_epochs=config.max_epochs, min_epochs=config.min_epochs, **asdict(options))

    def prepare(self, reference: Reference) -> None:
        """Called once, after the dense warm-up, before the first prune."""
        self.target = reference.score

    def state_dict(self) -> dict:
        """What :meth:`prepare` computed, for resuming a run."""
        return {"target": self.target}

    def load_state_dict(self, state: dict, reference: Reference) -> None:
        """Take up a saved state instead of :meth:`prepare` (``reference.model`` is unused)."""
        self.target = state["target"]

    def measure(self, model: nn.Module, masks: Masks) -> float | None:
        return None

    def met(self, score: float, distance: float | None) -> str | None:
        """The rule's own criterion, without cap or minimum."""
        return None

    def decide(self, epoch: int, score: float, distance: float | None) -> str | None:
        """Reason to stop after ``epoch`` epochs (0 = before training), or None."""
        if epoch >= self.max_epochs:
            return "cap"
        if epoch >= self.min_epochs:
            return self.met(score, distance)
        return None


register_rule("fixed", "always max_epochs (E) a level: LTH and SAP as published")(StoppingRule)
