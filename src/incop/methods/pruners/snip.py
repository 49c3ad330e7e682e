"""``snip``: SNIP at initialisation (Lee et al. 2019; METHOD.md section 8)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from incop.core.options import MAX_COUNT, NoOptions, in_range, option
from incop.methods.at_init import NetworkScored, PruneContext, snip_scores
from incop.methods.pruning import PRUNERS, PrunerComponent, Weights, keep_count, prune_scores

if TYPE_CHECKING:
    import torch

    from incop.core.masks import Masks


@dataclass(frozen=True)
class SNIPOptions(NoOptions):
    snip_batch: int = option(
        128, "snip: training examples in the one batch the sensitivities are taken on"
    )
    snip_mode: str = option(
        "train",
        "snip: the network's mode for the sensitivities: train (BatchNorm on batch statistics,"
        " as Lee et al.) or eval (running statistics, as the Synaptic-Flow reference code)",
        choices=("train", "eval"),
    )

    def check(self) -> list[str]:
        return in_range("snip_batch", self.snip_batch, 1, MAX_COUNT)


@dataclass(frozen=True)
class SNIPPruner(NetworkScored, PrunerComponent):
    """SNIP (Lee et al., 2019): one prune to ``target`` by connection sensitivity on one batch
    of ``batch_size`` training examples (drawn with the run's seed); global scope."""

    Options = SNIPOptions
    by_magnitude = False
    at_init = True

    target: float = 0.1
    batch_size: int = 128
    mode: str = "train"
    scope: str = "global"
    context: PruneContext | None = None

    @classmethod
    def from_options(cls, options: SNIPOptions, config: Any) -> SNIPPruner:
        return cls(config.target_remaining, options.snip_batch, options.snip_mode)

    def __call__(self, weights: Weights, masks: Masks, generator: torch.Generator) -> Masks:
        context = self._context()
        batch, *_ = context.probe(self.batch_size, self.batch_size)
        scores = snip_scores(context.model, masks, batch, context.loss_fn, context.output_fn,
                             train=self.mode == "train")  # fmt: skip
        total = sum(mask.numel() for mask in masks.values())
        return prune_scores(scores, masks, keep_count(total, self.target))


PRUNERS.register("snip", "SNIP at init: connection sensitivity on one batch (Lee et al. 2019)")(
    SNIPPruner
)
