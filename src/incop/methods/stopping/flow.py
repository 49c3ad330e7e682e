"""What the flow rules share (METHOD.md section 6): stop once the flow distance to the dense
network's flow is below ``eps``. The flows themselves: :mod:`incop.methods.flows`; the rules:
:mod:`.information` (InCoP-IF) and :mod:`.gradient` (InCoP-GF)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from incop.core.batches import AUTO, PROBE_HELP
from incop.core.options import MAX_COUNT, NoOptions, in_range, not_allowed, option
from incop.methods.flows import DISTANCES, flow_distance
from incop.methods.stopping.rule import Reference, StoppingRule

if TYPE_CHECKING:
    import torch
    from torch import nn

    from incop.core.masks import Masks


EPS_HELP = "flow rules: stop once the flow distance < eps (units of the distance)"


EPS_MODES = ("absolute", "noise")


@dataclass(frozen=True)
class FlowMeasureOptions(NoOptions):
    """What every rule that measures a flow shares."""

    distance: str = option(
        "l2", "flow rules: how the flow is compared with the dense one", choices=DISTANCES
    )
    probe_size: int | str = option(AUTO, PROBE_HELP, words=(AUTO,))
    accuracy_clause: bool = option(
        True,
        "flow rules also stop once the validation metric reaches a* (the research code's"
        " behaviour); off: the flow distance alone decides",
    )

    def check(self) -> list[str]:
        if self.probe_size == AUTO:
            return []
        return in_range("probe_size", self.probe_size, 1, MAX_COUNT)


@dataclass(frozen=True)
class FlowOptions(FlowMeasureOptions):
    """The threshold rules' own: eps, in absolute units or in units of the noise floor."""

    eps: float = option(0.1, EPS_HELP)
    eps_mode: str = option(
        "absolute",
        "flow rules: eps in the distance's units (absolute), or in units of the flow's noise"
        " floor sigma measured at theta* after the warm-up (noise: stop once distance <="
        " eps x sigma; METHOD.md section 6)",
        choices=EPS_MODES,
    )
    noise_probes: int = option(
        3, "eps_mode noise: other probe sets of the same size theta*'s flow is measured on"
    )

    def check(self) -> list[str]:
        problems = super().check() + in_range("noise_probes", self.noise_probes, 1, 100)
        if self.eps <= 0:
            problems.append(not_allowed("eps", self.eps, "must be > 0"))
        return problems


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
    eps_mode: str = "absolute"
    noise_probes: int = 3
    needs_probe = True
    reasons = {"flow": "the flow distance fell below eps"}

    def flow(self, model: nn.Module, masks: Masks, probe: list | None = None) -> torch.Tensor:
        """The flow of ``model`` on ``probe`` (default: the reference's probe set)."""
        raise NotImplementedError

    def prepare(self, reference: Reference) -> None:
        super().prepare(reference)
        self.reference = reference
        self.reference_flow = self.flow(reference.model, reference.masks)
        self.noise: float | None = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "reference_flow": self.reference_flow,
                "noise": self.noise}  # fmt: skip

    def load_state_dict(self, state: dict, reference: Reference) -> None:
        super().load_state_dict(state, reference)
        self.reference = reference
        self.reference_flow = state["reference_flow"]
        self.noise = state.get("noise")

    def measure(self, model: nn.Module, masks: Masks, probe: list | None = None) -> float:
        """The distance of ``model``'s flow (on ``probe``, default the reference's) to
        theta*'s on the reference probe set."""
        # A subclass's flow(model, masks) of earlier versions measures the reference probe only.
        flow = self.flow(model, masks) if probe is None else self.flow(model, masks, probe)
        return flow_distance(flow, self.reference_flow, self.distance)

    def calibrate(self, noise: float) -> None:
        """``eps_mode: noise``: the noise floor sigma the run measured at theta*."""
        self.noise = float(noise)

    @property
    def threshold(self) -> float:
        """The distance a level stops below, in the distance's units (eps, or eps x sigma)."""
        if self.eps_mode != "noise":
            return self.eps
        if self.noise is None:
            raise RuntimeError("eps_mode noise: calibrate(sigma) before the first decision")
        return self.eps * self.noise

    def met(self, score: float, distance: float | None) -> str | None:
        if distance is not None and distance < self.threshold:
            return "flow"
        return "accuracy" if self.accuracy_clause and score >= self.target else None
