"""``lth``: magnitude pruning, smallest |w| first (Frankle & Carbin 2019; METHOD.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from incop.core.options import NoOptions, not_allowed, option
from incop.methods.pruning import (
    PRUNERS,
    PrunerComponent,
    Weights,
    _prune,
    keep_count,
    prune_scores,
)

if TYPE_CHECKING:
    import torch

    from incop.core.masks import Masks


@dataclass(frozen=True)
class RateOptions(NoOptions):
    rate: float = option(0.2, "fraction of the alive weights removed per level (lth, random)")

    def check(self) -> list[str]:
        return [] if 0 <= self.rate < 1 else [not_allowed("rate", self.rate, "must be in [0, 1)")]


@dataclass(frozen=True)
class MagnitudePruner(PrunerComponent):
    """LTH pruning: remove a fraction ``rate`` of the alive weights, smallest |w| first; or,
    given ``target``, remove in one prune down to that fraction of the prunable weights
    (global scope only: one-shot pruning, e.g. at initialisation)."""

    Options = RateOptions

    rate: float = 0.2
    scope: str = "global"
    target: float | None = None

    @classmethod
    def from_options(cls, options: RateOptions, config: Any) -> MagnitudePruner:
        # A number with one level: the pruner prunes straight to it. Otherwise (levels > 1, or
        # "limit", known only once theta* is trained) the IMP loop applies the target.
        target = config.target_remaining
        straight = isinstance(target, float) and config.levels == 1
        return cls(rate=options.rate, scope=config.scope, target=target if straight else None)

    @classmethod
    def check_config(cls, config: Any) -> list[str]:
        c = config
        if c.target_remaining is not None and c.levels == 1 and c.rate != RateOptions.rate:
            return [
                f"rate: {c.rate!r} would be ignored: target_remaining ({c.target_remaining!r})"
                " sets how many weights go"
            ]
        return []

    def scores(self, weights: Weights, generator: torch.Generator) -> Weights:
        return {n: w.detach().abs() for n, w in weights.items()}

    def __call__(self, weights: Weights, masks: Masks, generator: torch.Generator) -> Masks:
        scores = self.scores(weights, generator)
        if self.target is not None:
            total = sum(mask.numel() for mask in masks.values())
            return prune_scores(scores, masks, keep_count(total, self.target))

        def count(alive: torch.Tensor) -> int:
            return round(self.rate * alive.numel())

        return _prune(scores, weights, masks, self.scope, count)


PRUNERS.register(
    "lth", "magnitude: smallest |w| first, rate of the alive weights or to target_remaining"
)(MagnitudePruner)
