"""``synflow``: SynFlow at initialisation (Tanaka et al. 2020; METHOD.md section 8)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from incop.core.options import MAX_COUNT, NoOptions, in_range, option
from incop.methods.at_init import NetworkScored, PruneContext, synflow_scores
from incop.methods.pruning import PRUNERS, PrunerComponent, Weights, keep_count, prune_scores

if TYPE_CHECKING:
    import torch

    from incop.core.masks import Masks


@dataclass(frozen=True)
class SynFlowOptions(NoOptions):
    synflow_iterations: int = option(
        100, "synflow: rounds of scoring and pruning, on the exponential schedule"
    )

    def check(self) -> list[str]:
        return in_range("synflow_iterations", self.synflow_iterations, 1, MAX_COUNT)


@dataclass(frozen=True)
class SynFlowPruner(NetworkScored, PrunerComponent):
    """SynFlow (Tanaka et al., 2020): ``iterations`` rounds of scoring and pruning on the
    exponential schedule, round k keeping ``target ** (k / iterations)`` of the prunable
    weights; global scope. Data-free."""

    Options = SynFlowOptions
    by_magnitude = False
    at_init = True

    target: float = 0.1
    iterations: int = 100
    scope: str = "global"
    context: PruneContext | None = None

    @classmethod
    def from_options(cls, options: SynFlowOptions, config: Any) -> SynFlowPruner:
        return cls(config.target_remaining, options.synflow_iterations)

    def __call__(self, weights: Weights, masks: Masks, generator: torch.Generator) -> Masks:
        context = self._context()
        total = sum(mask.numel() for mask in masks.values())
        new = dict(masks)
        for k in range(1, self.iterations + 1):
            keep = keep_count(total, self.target ** (k / self.iterations))
            scores = synflow_scores(context.model, new, context.example_input)
            new = prune_scores(scores, new, keep)
        return new


PRUNERS.register("synflow", "SynFlow at init: data-free, iterative, global (Tanaka et al. 2020)")(
    SynFlowPruner
)
