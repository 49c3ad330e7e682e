"""``mask-gf`` and ``mask-if``: mask stability first, the flow as a veto (METHOD.md section 6).

A level ends once the next prune's mask has stopped changing (the ``mask`` rule's condition,
threshold ``mask_eps``) AND the flow is back within eps of theta*'s (either eps mode)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from incop.core.lazy import no_grad
from incop.core.options import NoOptions, not_allowed, option
from incop.methods.named import MASK_EPS
from incop.methods.stopping.flow import FlowRule
from incop.methods.stopping.gradient import GFOptions, MeasuresGF
from incop.methods.stopping.information import IFOptions, MeasuresIF, if_fields
from incop.methods.stopping.mask import MaskRule
from incop.methods.stopping.rule import register_rule

if TYPE_CHECKING:
    from torch import nn

    from incop.core.masks import Masks


@dataclass(frozen=True)
class MaskFields(NoOptions):
    mask_eps: float = option(
        MASK_EPS,
        "mask-gf, mask-if: the mask part holds once fewer than mask_eps of the alive weights"
        " change their next-prune fate",
    )

    def check(self) -> list[str]:
        return [] if self.mask_eps > 0 else [not_allowed("mask_eps", self.mask_eps, "must be > 0")]


@dataclass(frozen=True)
class MaskIFOptions(IFOptions, MaskFields):
    def check(self) -> list[str]:
        return IFOptions.check(self) + MaskFields.check(self)


@dataclass(frozen=True)
class MaskGFOptions(GFOptions, MaskFields):
    def check(self) -> list[str]:
        return GFOptions.check(self) + MaskFields.check(self)


@dataclass
class MaskFlow(FlowRule):
    """Stop once the mask distance (:class:`MaskRule`'s) is below ``mask_eps`` and the flow
    distance below eps (or eps x sigma); with the accuracy clause, also once the validation
    metric is back at a*. The logged distance is the flow's."""

    mask_eps: float = MASK_EPS
    reasons = {"mask+flow": "the next prune's mask stopped changing and the flow was back"}

    def prepare(self, reference: Any) -> None:
        super().prepare(reference)
        self.mask = MaskRule(self.max_epochs, self.min_epochs, self.mask_eps)
        self.mask.prepare(reference)
        self.mask_distance: float | None = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "mask": self.mask.state_dict(),
                "mask_distance": self.mask_distance}  # fmt: skip

    def load_state_dict(self, state: dict, reference: Any) -> None:
        super().load_state_dict(state, reference)
        self.mask = MaskRule(self.max_epochs, self.min_epochs, self.mask_eps)
        self.mask.load_state_dict(state["mask"], reference)
        self.mask_distance = state["mask_distance"]

    @no_grad
    def measure(self, model: nn.Module, masks: Masks, probe: list | None = None) -> float:
        if probe is None:  # a decision's measurement: the mask moves with it
            self.mask_distance = self.mask.measure(model, masks)
        return super().measure(model, masks, probe)

    def met(self, score: float, distance: float | None) -> str | None:
        stable = self.mask.met(score, self.mask_distance) is not None
        if stable and distance is not None and distance < self.threshold:
            return "mask+flow"
        return "accuracy" if self.accuracy_clause and score >= self.target else None


@dataclass
class MaskIF(MeasuresIF, MaskFlow):
    """``mask-if``: :class:`MaskFlow` with the information flow."""

    summary: str = "mean"
    skip: tuple[str, ...] = ("*downsample*", "*shortcut*")
    channel_dim: int | None = None
    name: str = field(default="mask-if", init=False)

    Options = MaskIFOptions

    @classmethod
    def from_options(cls, options: MaskIFOptions, config: Any) -> MaskIF:
        o = options
        return cls(config.max_epochs, config.min_epochs, o.eps, o.distance, o.accuracy_clause,
                   o.eps_mode, o.noise_probes, mask_eps=o.mask_eps, **if_fields(o))  # fmt: skip


@dataclass
class MaskGF(MeasuresGF, MaskFlow):
    """``mask-gf``: :class:`MaskFlow` with the gradient flow."""

    normalize: bool = False
    name: str = field(default="mask-gf", init=False)

    Options = MaskGFOptions

    @classmethod
    def from_options(cls, options: MaskGFOptions, config: Any) -> MaskGF:
        o = options
        return cls(config.max_epochs, config.min_epochs, o.eps, o.distance, o.accuracy_clause,
                   o.eps_mode, o.noise_probes, mask_eps=o.mask_eps,
                   normalize=o.gf_normalize)  # fmt: skip


register_rule("mask-if", "mask stable and the information flow back within eps")(MaskIF)
register_rule("mask-gf", "mask stable and the gradient flow back within eps")(MaskGF)
