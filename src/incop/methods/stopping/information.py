"""``if``, InCoP-IF: a level ends once the information flow is back (METHOD.md sections 4, 6)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from incop.core import inputs as model_inputs
from incop.core.flops import EVAL_PASSES
from incop.core.options import NoOptions, option
from incop.methods.flows import FLOW_SUMMARIES, IF_SKIP, information_flow
from incop.methods.stopping.flow import FlowOptions, FlowRule
from incop.methods.stopping.rule import register_rule

if TYPE_CHECKING:
    import torch
    from torch import nn

    from incop.core.masks import Masks


@dataclass(frozen=True)
class IFFields(NoOptions):
    """How the information flow is read (every rule that measures it)."""

    if_summary: str = option(
        "mean",
        "information flow: how each correlation matrix is summarised (mean: the paper's;"
        " frobenius: the whole matrices, so a relative distance is ||C - C*||_F / ||C*||_F)",
        choices=FLOW_SUMMARIES,
    )
    if_skip: list[str] = option(
        IF_SKIP, "information flow: module-name patterns left out (residual projections)"
    )
    if_channel_dim: int | None = option(
        None,
        "information flow: the dim of a layer's output that holds its channels (none:"
        " convolutions dim 1, positions averaged; other layers the last dim, every other"
        " position a sample, as sequence models need)",
    )


@dataclass(frozen=True)
class IFOptions(FlowOptions, IFFields):
    pass


class MeasuresIF:
    """The information flow of the rule's probe set (``summary``, ``skip``, ``channel_dim``),
    for every rule that watches it."""

    summary: str
    skip: tuple[str, ...]
    channel_dim: int | None
    probe_passes = EVAL_PASSES  # a forward pass of the probe set

    def flow(self, model: nn.Module, masks: Masks, probe: list | None = None) -> torch.Tensor:
        r = self.reference
        # Another probe set is whole on every rank: nothing to sum over ranks.
        shared = probe is None
        return information_flow(model, r.probe if shared else probe, summary=self.summary,
                                skip=self.skip, origin=r.origin if shared else None,
                                reduce=r.reduce if shared else None,
                                channel_dim=self.channel_dim).vector  # fmt: skip

    def check_model(self, model: nn.Module, probe: list) -> None:
        """Refuse, before any training, a model whose layers the flow cannot read: measured
        on two examples of the probe set."""
        x, y = probe[0]
        two = [(model_inputs.take(x, 0, 2), y[:2])]
        information_flow(model, two, summary=self.summary, skip=self.skip,
                         channel_dim=self.channel_dim)  # fmt: skip


def if_fields(options: IFFields) -> dict[str, Any]:
    """The keyword arguments of :class:`MeasuresIF` from a rule's options."""
    return {"summary": options.if_summary, "skip": tuple(options.if_skip),
            "channel_dim": options.if_channel_dim}  # fmt: skip


@dataclass
class InformationFlowRule(MeasuresIF, FlowRule):
    """``if(eps)``, InCoP-IF: :func:`incop.information_flow` of the probe set.

    ``summary`` reduces each correlation matrix (``mean``, ``abs-mean`` or ``frobenius``);
    ``skip`` lists module-name patterns left out (residual projections by default).
    """

    summary: str = "mean"
    skip: tuple[str, ...] = ("*downsample*", "*shortcut*")
    channel_dim: int | None = None
    name: str = field(default="if", init=False)

    Options = IFOptions

    @classmethod
    def from_options(cls, options: IFOptions, config: Any) -> InformationFlowRule:
        o = options
        return cls(config.max_epochs, config.min_epochs, o.eps, o.distance, o.accuracy_clause,
                   o.eps_mode, o.noise_probes, **if_fields(o))  # fmt: skip


register_rule("if", "InCoP-IF: a level ends once the information flow is back (eps)")(
    InformationFlowRule
)
