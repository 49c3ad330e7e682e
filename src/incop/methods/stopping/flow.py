"""What the flow rules share (METHOD.md section 6): stop once the flow distance to the dense
network's flow is below ``eps``. The flows themselves: :mod:`incop.methods.flows`; the rules:
:mod:`.information` (InCoP-IF) and :mod:`.gradient` (InCoP-GF)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from incop.core.masks import Masks
from incop.core.options import MAX_COUNT, NoOptions, in_range, not_allowed, option
from incop.methods.flows import DISTANCES, flow_distance
from incop.methods.stopping.rule import Reference, StoppingRule

EPS_HELP = "flow rules: stop once the flow distance < eps (units of the distance)"


@dataclass(frozen=True)
class FlowOptions(NoOptions):
    eps: float = option(0.1, EPS_HELP)
    distance: str = option(
        "l2", "flow rules: how the flow is compared with the dense one", choices=DISTANCES
    )
    probe_size: int = option(2048, "examples in the fixed probe set the flows are measured on")
    accuracy_clause: bool = option(
        True,
        "flow rules also stop once the validation metric reaches a* (the research code's"
        " behaviour); off: the flow distance alone decides",
    )

    def check(self) -> list[str]:
        problems = []
        if self.eps <= 0:
            problems.append(not_allowed("eps", self.eps, "must be > 0"))
        return problems + in_range("probe_size", self.probe_size, 1, MAX_COUNT)


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
    reasons = {"flow": "the flow distance fell below eps"}

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
