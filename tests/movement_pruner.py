"""A pruner that needs the gradients (a toy movement-pruning score, Sanh et al. 2020), written
outside incop in one module: class, options, registry entry. Importing it registers
``movement``."""

from dataclasses import dataclass, field
from typing import Any

import torch

import incop
from incop.methods.pruning import prune_scores


@dataclass(frozen=True)
class MovementOptions(incop.NoOptions):
    movement_rate: float = incop.option(
        0.5, "movement: fraction of the alive weights removed a level"
    )

    def check(self):
        if not 0 < self.movement_rate < 1:
            return [incop.not_allowed("movement_rate", self.movement_rate, "must be in (0, 1)")]
        return []


@dataclass
class MovementPruner(incop.PrunerComponent):
    """Score each weight by -sum over training steps of w * dL/dw (weights moving towards zero
    score low) and prune the lowest ``rate`` of the alive ones. The scores are accumulated by
    the training-time hook ``after_backward`` and start again after every prune."""

    Options = MovementOptions

    rate: float = 0.5
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    steps: int = 0
    used: list[dict[str, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def from_options(cls, options: MovementOptions, config: Any) -> "MovementPruner":
        return cls(options.movement_rate)

    def after_backward(self, model, masks, state):
        self.steps += 1
        for name in masks:
            weight = model.get_parameter(name)
            movement = -(weight.detach() * weight.grad.detach())
            self.scores[name] = self.scores.get(name, torch.zeros_like(weight)) + movement

    def __call__(self, weights, masks, generator):
        scores = {n: self.scores.get(n, torch.zeros_like(w)) for n, w in weights.items()}
        self.used.append({n: s.clone() for n, s in scores.items()})
        alive = sum(int(m.sum()) for m in masks.values())
        self.scores = {}
        return prune_scores(scores, masks, alive - round(self.rate * alive))

    def state_dict(self):
        return {"scores": self.scores, "steps": self.steps}

    def load_state_dict(self, state):
        self.scores, self.steps = state["scores"], state["steps"]


incop.PRUNERS.register("movement", "toy movement pruning: scores from the gradients")(
    MovementPruner
)
