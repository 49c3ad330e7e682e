"""Stopping rules for a retraining phase (METHOD.md section 6).

The IMP loop asks a rule two things after every epoch (and once before the
first, "epoch 0"): :meth:`StoppingRule.measure` — a flow distance, or None for
rules that need none (the loop times this as flow time) — and
:meth:`StoppingRule.decide` — the reason to stop, or None to go on. ``decide``
is a pure function of the epoch, the validation score and the distance, so
rules can be checked on scripted sequences. The score is the run's validation
metric oriented so that higher is better (:class:`incop.engine.metrics.Metric`):
accuracy as it is, a loss negated.

Every rule stops at the cap ``max_epochs`` (E) and never before ``min_epochs``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from incop.engine.masks import Masks
from incop.methods.flows import Reduce, flow_distance, gradient_flow, information_flow
from incop.methods.pruning import preview
from incop.registry import Registry

#: Why a level ended, as recorded in ``stop_reason`` and explained under the level table.
STOP_REASONS = {
    "warmup": "the dense network (level 0), trained warmup_epochs",
    "epi": "the dense network (level 0), its warm-up ended once the first prune's mask stopped"
    " changing (warmup_stop epi)",
    "cap": "retrained the full max_epochs (E)",
    "accuracy": "the validation metric reached the dense network's (a*, minus delta)",
    "flow": "the flow distance fell below eps",
    "mask": "the next prune's mask changed in fewer than eps of the alive weights",
    "diverged": "the loss became NaN or infinite; the last good epoch's weights were kept",
}


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


@dataclass
class StoppingRule:
    """``fixed(E)``: always E epochs (LTH and SAP as published)."""

    max_epochs: int
    min_epochs: int = 1
    name: str = field(default="fixed", init=False)

    #: Whether :meth:`prepare` needs ``Reference.probe``.
    needs_probe = False

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


@dataclass
class AccuracyRule(StoppingRule):
    """``accuracy(delta)``: stop once the validation score >= a* - delta (for accuracy, a
    fraction; for a loss, stop once it is <= the dense loss + delta)."""

    delta: float = 0.0
    name: str = field(default="accuracy", init=False)

    def met(self, score: float, distance: float | None) -> str | None:
        return "accuracy" if score >= self.target - self.delta else None


@dataclass
class FlowRule(StoppingRule):
    """Stop once the flow distance to the dense flow is below ``eps``, or, with the
    ``accuracy_clause`` (default, as the original code does), once the validation score
    reaches a*; without it the flow alone decides (besides the cap and divergence).

    ``distance`` is ``l2``, ``relative`` or ``cosine``
    (see :func:`incop.methods.flows.flow_distance`).
    """

    eps: float = 0.1
    distance: str = "l2"
    accuracy_clause: bool = True
    needs_probe = True

    def flow(self, model: nn.Module, masks: Masks) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, reference: Reference) -> None:
        super().prepare(reference)
        self.reference = reference
        self.reference_flow = self.flow(reference.model, reference.masks)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "reference_flow": self.reference_flow}

    def load_state_dict(self, state: dict, reference: Reference) -> None:
        super().load_state_dict(state, reference)
        self.reference = reference
        self.reference_flow = state["reference_flow"]

    def measure(self, model: nn.Module, masks: Masks) -> float:
        return flow_distance(self.flow(model, masks), self.reference_flow, self.distance)

    def met(self, score: float, distance: float | None) -> str | None:
        if distance is not None and distance < self.eps:
            return "flow"
        return "accuracy" if self.accuracy_clause and score >= self.target else None


@dataclass
class InformationFlowRule(FlowRule):
    """``if(eps)``, InCoP-IF: :func:`incop.information_flow` of the probe set.

    ``summary`` reduces each correlation matrix (``mean`` or ``abs-mean``);
    ``skip`` lists module-name patterns left out (residual projections by default).
    """

    summary: str = "mean"
    skip: tuple[str, ...] = ("*downsample*", "*shortcut*")
    name: str = field(default="if", init=False)

    def flow(self, model: nn.Module, masks: Masks) -> torch.Tensor:
        r = self.reference
        return information_flow(
            model, r.probe, summary=self.summary, skip=self.skip, origin=r.origin, reduce=r.reduce
        ).vector


@dataclass
class GradientFlowRule(FlowRule):
    """``gf(eps)``, InCoP-GF: :func:`incop.gradient_flow` of the probe set, per prunable layer;
    ``normalize`` divides each layer's norm by its number of alive weights."""

    normalize: bool = False
    name: str = field(default="gf", init=False)

    def flow(self, model: nn.Module, masks: Masks) -> torch.Tensor:
        params = {name: model.get_parameter(name) for name in masks}
        r = self.reference
        return gradient_flow(
            model, r.probe, masks=masks, normalize=self.normalize, params=params, reduce=r.reduce
        )


@dataclass
class MaskRule(StoppingRule):
    """``mask(eps)``, mask stability: after every epoch (and at epoch 0) compute the mask the
    pruner would produce next from the current weights, and stop once the fraction of alive
    weights whose keep/prune decision differs from the previous epoch's next mask is below
    ``eps``. With dense rewinding only the next mask survives a retraining phase, so this
    watches the one thing the phase produces (after Early-Bird tickets, You et al. 2020, and
    EPI, Shen et al. 2022). The distance is None at epoch 0 of a level: nothing to compare.

    ``pruner``: the run's pruner; it is called on a throwaway generator, so the run's own
    random state is untouched.
    """

    eps: float = 0.01
    pruner: Callable | None = None
    name: str = field(default="mask", init=False)

    def prepare(self, reference: Reference) -> None:
        super().prepare(reference)
        self.previous: tuple[Masks, Masks] | None = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "previous": self.previous}

    def load_state_dict(self, state: dict, reference: Reference) -> None:
        super().load_state_dict(state, reference)
        self.previous = state["previous"]

    @torch.no_grad()
    def measure(self, model: nn.Module, masks: Masks) -> float | None:
        weights = {name: model.get_parameter(name).detach() for name in masks}
        upcoming = preview(self.pruner, weights, masks)
        distance = None
        if self.previous is not None and _same(self.previous[0], masks):
            earlier = self.previous[1]
            changed = sum(int(((upcoming[n] != earlier[n]) & masks[n]).sum()) for n in masks)
            alive = sum(int(m.sum()) for m in masks.values())
            distance = changed / alive if alive else 0.0
        # Kept with the masks it was computed under: after the next prune, a new level starts.
        self.previous = ({n: m.clone() for n, m in masks.items()}, upcoming)
        return distance

    def met(self, score: float, distance: float | None) -> str | None:
        return "mask" if distance is not None and distance < self.eps else None


def _same(a: Masks, b: Masks) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


STOPPING_RULES: Registry[type[StoppingRule]] = Registry("stopping rule")
STOPPING_RULES.register("fixed")(StoppingRule)
STOPPING_RULES.register("accuracy")(AccuracyRule)
STOPPING_RULES.register("if")(InformationFlowRule)
STOPPING_RULES.register("gf")(GradientFlowRule)
STOPPING_RULES.register("mask")(MaskRule)
