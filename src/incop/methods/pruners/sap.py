"""``sap``: magnitude pruning whose count the PQ Index sets (Diao et al. 2023; METHOD.md
section 3). The formulas are :func:`incop.methods.pruning.pq_index` and
:func:`incop.methods.pruning.sap_prune_count`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from incop.core.options import NoOptions, not_allowed, option
from incop.methods.pruning import (
    PRUNERS,
    SCOPES_SAP,
    PrunerComponent,
    Weights,
    _prune,
    pq_index,
    sap_prune_count,
)

if TYPE_CHECKING:
    import torch

    from incop.core.masks import Masks


@dataclass(frozen=True)
class SAPOptions(NoOptions):
    p: float = option(0.5, "SAP's p (0 < p < q)")
    q: float = option(1.0, "SAP's q")
    eta_r: float = option(0.0, "SAP's eta_r >= 0 (larger prunes more)")
    gamma: float = option(1.0, "SAP's gamma > 0 (scales the pruned fraction)")
    beta: float = option(0.9, "SAP's beta in (0, 1): most it prunes in one level")

    def check(self) -> list[str]:
        problems = []
        if self.p <= 0:
            problems.append(not_allowed("p", self.p, "must be > 0"))
        if self.p >= self.q:
            problems.append(f"p: {self.p} must be smaller than q ({self.q}): SAP needs 0 < p < q")
        if not 0 < self.beta < 1:
            problems.append(not_allowed("beta", self.beta, "must be in (0, 1)"))
        if self.gamma <= 0:
            problems.append(not_allowed("gamma", self.gamma, "must be > 0"))
        if self.eta_r < 0:
            problems.append(not_allowed("eta_r", self.eta_r, "must be >= 0"))
        return problems


@dataclass(frozen=True)
class SAPPruner(PrunerComponent):
    """SAP: in each scope prune ``sap_prune_count(d, pq_index(alive), ...)`` smallest weights."""

    Options = SAPOptions
    scopes = SCOPES_SAP

    p: float = 0.5
    q: float = 1.0
    eta_r: float = 0.0
    gamma: float = 1.0
    beta: float = 0.9
    scope: str = "global"

    @classmethod
    def from_options(cls, options: SAPOptions, config: Any) -> SAPPruner:
        o = options
        return cls(o.p, o.q, o.eta_r, o.gamma, o.beta, config.scope)

    def count(self, alive: torch.Tensor) -> int:
        """c for a scope whose alive weights are ``alive`` (any shape)."""
        pqi = pq_index(alive, self.p, self.q)
        return sap_prune_count(
            alive.numel(), pqi, self.p, self.q, self.eta_r, self.gamma, self.beta
        )

    def __call__(self, weights: Weights, masks: Masks, generator: torch.Generator) -> Masks:
        scores = {n: w.detach().abs() for n, w in weights.items()}
        # count() sees scores[mask]: the alive |w| of the scope, which is what PQI measures.
        return _prune(scores, weights, masks, self.scope, self.count)


PRUNERS.register("sap", "magnitude, the count adapted to the PQ Index (Diao et al. 2023)")(
    SAPPruner
)
