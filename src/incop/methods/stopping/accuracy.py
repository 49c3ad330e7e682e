"""``accuracy``: a level ends once the validation metric is back at the dense network's."""

from __future__ import annotations

from dataclasses import dataclass, field

from incop.core.options import NoOptions, not_allowed, option
from incop.methods.stopping.rule import StoppingRule, register_rule


@dataclass(frozen=True)
class AccuracyOptions(NoOptions):
    delta: float = option(
        0.0,
        "accuracy rule: stop once validation accuracy >= a* - delta (a fraction; below 0 asks"
        " for more than the dense network's)",
    )

    def check(self) -> list[str]:
        if -1 < self.delta < 1:
            return []
        return [not_allowed("delta", self.delta, "must be in (-1, 1)")]


@dataclass
class AccuracyRule(StoppingRule):
    """``accuracy(delta)``: stop once the validation score >= a* - delta (for accuracy, a
    fraction; for a loss, stop once it is <= the dense loss + delta)."""

    delta: float = 0.0
    name: str = field(default="accuracy", init=False)

    Options = AccuracyOptions
    reasons = {"accuracy": "the validation metric reached the dense network's (a*, minus delta)"}

    def met(self, score: float, distance: float | None) -> str | None:
        return "accuracy" if score >= self.target - self.delta else None


register_rule("accuracy", "a level ends once validation accuracy is back at a* - delta")(
    AccuracyRule
)
