"""``mask``: a level ends once the next prune's mask stops changing (docs/mask.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from incop.core.lazy import no_grad
from incop.core.options import NoOptions, not_allowed, option
from incop.methods.pruning import Pruner, preview
from incop.methods.stopping.rule import Reference, StoppingRule, register_rule

if TYPE_CHECKING:
    from torch import nn

    from incop.core.masks import Masks


@dataclass(frozen=True)
class MaskOptions(NoOptions):
    eps: float = option(
        0.1, "mask rule: stop once fewer than eps of the alive weights change their next-prune fate"
    )

    def check(self) -> list[str]:
        return [] if self.eps > 0 else [not_allowed("eps", self.eps, "must be > 0")]


@dataclass
class MaskRule(StoppingRule):
    """``mask(eps)``, mask stability: after every epoch (and at epoch 0) compute the mask the
    pruner would produce next from the current weights, and stop once the fraction of alive
    weights whose keep/prune decision differs from the previous epoch's next mask is below
    ``eps``. With dense rewinding only the next mask survives a retraining phase, so this
    watches the one thing the phase produces (after Early-Bird tickets, You et al. 2020, and
    EPI, Shen et al. 2022). The distance is None at epoch 0 of a level: nothing to compare.

    ``pruner``: the run's pruner; it is called on a throwaway generator, so the run's own
    random state is untouched.
    """

    eps: float = 0.01
    pruner: Pruner | None = None
    name: str = field(default="mask", init=False)

    Options = MaskOptions
    reasons = {"mask": "the next prune's mask changed in fewer than eps of the alive weights"}

    @classmethod
    def from_options(cls, options: MaskOptions, config: Any) -> MaskRule:
        return cls(config.max_epochs, config.min_epochs, options.eps)

    def prepare(self, reference: Reference) -> None:
        super().prepare(reference)
        if self.pruner is None:
            self.pruner = reference.pruner
        self.previous: tuple[Masks, Masks] | None = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "previous": self.previous}

    def load_state_dict(self, state: dict, reference: Reference) -> None:
        # A resumed level never calls prepare(): the pruner is bound here too.
        super().load_state_dict(state, reference)
        if self.pruner is None:
            self.pruner = reference.pruner
        self.previous = state["previous"]

    @no_grad
    def measure(self, model: nn.Module, masks: Masks) -> float | None:
        weights = {name: model.get_parameter(name).detach() for name in masks}
        upcoming = preview(self.pruner, weights, masks)
        distance = None
        if self.previous is not None and _same(self.previous[0], masks):
            earlier = self.previous[1]
            changed = sum(int(((upcoming[n] != earlier[n]) & masks[n]).sum()) for n in masks)
            alive = sum(int(m.sum()) for m in masks.values())
            distance = changed / alive if alive else 0.0
        # Kept with the masks it was computed under: after the next prune, a new level starts.
        self.previous = ({n: m.clone() for n, m in masks.items()}, upcoming)
        return distance

    def met(self, score: float, distance: float | None) -> str | None:
        return "mask" if distance is not None and distance < self.eps else None


def _same(a: Masks, b: Masks) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


register_rule("mask", "a level ends once the next prune's mask stops changing (eps)")(MaskRule)
