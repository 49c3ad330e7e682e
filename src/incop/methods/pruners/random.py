"""``random``: uniformly random pruning, the sanity baseline every criterion must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from incop.methods.pruners.magnitude import MagnitudePruner
from incop.methods.pruning import PRUNERS, Weights

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RandomPruner(MagnitudePruner):
    """Sanity baseline: remove a fraction ``rate`` of the alive weights, uniformly at random."""

    by_magnitude = False

    def scores(self, weights: Weights, generator: torch.Generator) -> Weights:
        import torch

        return {
            n: torch.rand(w.shape, generator=generator).to(w.device) for n, w in weights.items()
        }


PRUNERS.register(
    "random", "uniformly random, rate of the alive weights or to target_remaining (baseline)"
)(RandomPruner)
