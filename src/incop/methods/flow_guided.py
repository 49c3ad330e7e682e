"""Flow-guided pruning (METHOD.md section 8; the formula and its reasons: docs/flow-guided.md).

The base pruner decides how many weights go; the ranking is |w| scaled per tensor by how
much the information flow moves when that tensor alone takes the prune.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from incop.core.batches import AUTO, PROBE_HELP
from incop.core.lazy import no_grad
from incop.core.options import NoOptions, option
from incop.methods.at_init import NetworkScored, PruneContext
from incop.methods.flows import FLOW_SUMMARIES, IF_SKIP, information_flow
from incop.methods.pruning import PRUNERS, SCORES, Pruner, Score, Weights, prune_scores

if TYPE_CHECKING:
    import torch
    from torch import nn

    from incop.core.masks import Masks


def _alive(masks: Masks) -> int:
    return sum(int(m.sum()) for m in masks.values())


@no_grad
def layer_sensitivity(
    model: nn.Module,
    masks: Masks,
    probe,
    fraction: float,
    *,
    summary: str = "mean",
    skip: tuple[str, ...] = (),
) -> dict[str, float]:
    """s_l = ||f(theta^(l)) - f(theta)||_1 per masked tensor l: f the information flow on
    ``probe``, theta^(l) the current weights with ``floor(fraction * alive_l)`` alive weights
    of smallest |w| of tensor l zeroed. The model is left as it was."""

    import torch

    def flow() -> torch.Tensor:
        return information_flow(model, probe, summary=summary, skip=skip).vector

    reference = flow()
    sensitivity = {}
    for name, mask in masks.items():
        weight = model.get_parameter(name)
        original = weight.detach().clone()
        alive = int(mask.sum())
        cut = int(fraction * alive)
        if cut > 0:
            magnitude = original.abs().masked_fill(~mask, float("inf")).flatten()
            # In logical (NCHW) order: a channels_last weight has no flat view.
            pruned = original.reshape(-1).clone()
            pruned[torch.sort(magnitude, stable=True).indices[:cut]] = 0.0
            weight.copy_(pruned.view(original.shape))
        sensitivity[name] = float((flow() - reference).abs().sum())
        weight.copy_(original)
    return sensitivity


def guide_factors(sensitivity: dict[str, float]) -> dict[str, float]:
    """g_l = 1 + s_l / mean(s); all 1 when every s_l is 0."""
    mean = sum(sensitivity.values()) / len(sensitivity)
    if mean == 0:
        return dict.fromkeys(sensitivity, 1.0)
    return {name: 1.0 + s / mean for name, s in sensitivity.items()}


@dataclass(frozen=True)
class FlowGuidedPruner(NetworkScored):
    """``base`` (a magnitude pruner, global scope) with its alive weights ranked by
    ``|w| * g_l`` instead of ``|w|``; keeps ``base``'s count. Needs ``bind(context)``:
    the probe set is drawn from the training data like the flow rules' own."""

    base: Pruner
    probe_size: int | str = AUTO
    batch_size: int | str = AUTO
    summary: str = "mean"
    skip: tuple[str, ...] = ("*downsample*", "*shortcut*")
    context: PruneContext | None = None
    probe: tuple | None = None

    def bind(self, context: PruneContext) -> FlowGuidedPruner:
        """Bound to ``context``, with its probe set drawn once (every prune, and every preview
        of the mask rule, measures the flow on the same examples)."""
        probe = tuple(context.probe(self.probe_size, self.batch_size))
        return replace(self, context=context, probe=probe)

    def guided_scores(self, weights: Weights, masks: Masks, fraction: float) -> Weights:
        """|w| * g_l for every masked tensor (same shapes)."""
        context = self._context()
        sensitivity = layer_sensitivity(
            context.model, masks, self.probe, fraction, summary=self.summary, skip=self.skip
        )
        factors = guide_factors(sensitivity)
        return {n: weights[n].detach().abs() * factors[n] for n in masks}

    def __call__(self, weights: Weights, masks: Masks, generator: torch.Generator) -> Masks:
        plain = self.base(weights, masks, generator)
        alive, keep = _alive(masks), _alive(plain)
        if keep == alive:  # the base prunes nothing: nothing to guide
            return plain
        scores = self.guided_scores(weights, masks, (alive - keep) / alive)
        return prune_scores(scores, masks, keep)


@dataclass(frozen=True)
class FlowGuidedOptions(NoOptions):
    # The information flow's own settings, shared with the if rule (same names and defaults).
    probe_size: int | str = option(AUTO, PROBE_HELP, words=(AUTO,))
    if_summary: str = option("mean", "information flow: how each correlation matrix is summarised",
                             choices=FLOW_SUMMARIES)  # fmt: skip
    if_skip: list[str] = option(
        IF_SKIP, "information flow: module-name patterns left out (residual projections)"
    )


@dataclass(frozen=True)
class FlowGuidedScore(Score):
    """``flow-guided``: the run's magnitude pruner ranks by |w| times its tensor's
    information-flow fragility (:class:`FlowGuidedPruner`)."""

    Options = FlowGuidedOptions

    options: FlowGuidedOptions
    batch_size: int

    @classmethod
    def from_options(cls, options: FlowGuidedOptions, config: Any) -> FlowGuidedScore:
        return cls(options, config.eval_batch_size)

    @classmethod
    def check_config(cls, config: Any) -> list[str]:
        c = config
        pruner = PRUNERS.get(c.pruner) if c.pruner in PRUNERS else None
        if pruner is not None and (not pruner.by_magnitude or c.scope != "global"):
            return [
                "score: flow-guided ranks the weights of the magnitude pruners (lth, sap) in"
                f" global scope; within one tensor it ranks as magnitude does, so with pruner"
                f" {c.pruner!r} and scope {c.scope!r} it would do nothing"
            ]
        return []

    def guide(self, pruner: Pruner) -> Pruner:
        o = self.options
        return FlowGuidedPruner(pruner, o.probe_size, self.batch_size, o.if_summary,
                                tuple(o.if_skip))  # fmt: skip


SCORES.register("flow-guided", "|w| times the layer's information-flow fragility")(FlowGuidedScore)
