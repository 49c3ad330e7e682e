"""``gf``, InCoP-GF: a level ends once the gradient flow is back (METHOD.md sections 4, 6)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from incop.core.flops import TRAIN_PASSES
from incop.core.options import NoOptions, option
from incop.methods.flows import gradient_flow
from incop.methods.stopping.flow import FlowOptions, FlowRule
from incop.methods.stopping.rule import register_rule

if TYPE_CHECKING:
    import torch
    from torch import nn

    from incop.core.masks import Masks


@dataclass(frozen=True)
class GFFields(NoOptions):
    """How the gradient flow is read (every rule that measures it)."""

    gf_normalize: bool = option(
        False, "gradient flow: divide each layer's norm by its alive weights"
    )


@dataclass(frozen=True)
class GFOptions(FlowOptions, GFFields):
    pass


class MeasuresGF:
    """The gradient flow of the rule's probe set, of the run's own loss
    (``Reference.loss_fn``), for every rule that watches it."""

    normalize: bool
    probe_passes = TRAIN_PASSES  # a forward and a backward pass of the probe set

    def flow(self, model: nn.Module, masks: Masks, probe: list | None = None) -> torch.Tensor:
        params = {name: model.get_parameter(name) for name in masks}
        r = self.reference
        # Another probe set is whole on every rank: nothing to sum over ranks.
        shared = probe is None
        return gradient_flow(model, r.probe if shared else probe, masks=masks,
                             normalize=self.normalize, params=params,
                             reduce=r.reduce if shared else None, loss_fn=r.loss_fn,
                             output_fn=r.output_fn)  # fmt: skip


@dataclass
class GradientFlowRule(MeasuresGF, FlowRule):
    """``gf(eps)``, InCoP-GF: :func:`incop.gradient_flow` of the probe set, per prunable layer;
    ``normalize`` divides each layer's norm by its number of alive weights."""

    normalize: bool = False
    name: str = field(default="gf", init=False)

    Options = GFOptions

    @classmethod
    def from_options(cls, options: GFOptions, config: Any) -> GradientFlowRule:
        o = options
        return cls(config.max_epochs, config.min_epochs, o.eps, o.distance, o.accuracy_clause,
                   o.eps_mode, o.noise_probes, normalize=o.gf_normalize)  # fmt: skip


register_rule("gf", "InCoP-GF: a level ends once the gradient flow is back (eps)")(GradientFlowRule)
