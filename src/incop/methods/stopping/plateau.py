"""Plateau rules (METHOD.md section 6): a level ends once its measurement stops improving.

``if-plateau`` and ``gf-plateau`` watch the flow distance to theta*'s flow, ``loss-plateau``
the validation metric (the standard early stop a flow rule has to beat)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from incop.core.options import NoOptions, in_range, not_allowed, option
from incop.methods.stopping.flow import FlowMeasureOptions, FlowRule
from incop.methods.stopping.gradient import GFFields, MeasuresGF
from incop.methods.stopping.information import IFFields, MeasuresIF, if_fields
from incop.methods.stopping.rule import StoppingRule, register_rule


@dataclass(frozen=True)
class PlateauFields(NoOptions):
    plateau_tol: float = option(
        0.05,
        "plateau rules: stop at the first epoch whose flow distance is not below the level's"
        " smallest earlier one by more than this fraction of it",
    )

    def check(self) -> list[str]:
        if not 0 <= self.plateau_tol < 1:
            return [not_allowed("plateau_tol", self.plateau_tol, "must be in [0, 1)")]
        return []


@dataclass(frozen=True)
class IFPlateauOptions(FlowMeasureOptions, IFFields, PlateauFields):
    def check(self) -> list[str]:
        return FlowMeasureOptions.check(self) + PlateauFields.check(self)


@dataclass(frozen=True)
class GFPlateauOptions(FlowMeasureOptions, GFFields, PlateauFields):
    def check(self) -> list[str]:
        return FlowMeasureOptions.check(self) + PlateauFields.check(self)


def plateaued(history: list[float], tol: float) -> bool:
    """Whether the last value of ``history`` is not below the smallest earlier one by more
    than ``tol`` of it (relative): the distance stopped falling."""
    *earlier, last = history
    return bool(earlier) and last >= min(earlier) * (1 - tol)


class LevelHistory:
    """A rule's one number per epoch of the current level (epoch 0, right after rewinding,
    included), carried across ``--resume``."""

    history: list[float]

    def prepare(self, reference: Any) -> None:
        super().prepare(reference)
        self.history = []

    def state_dict(self) -> dict:
        return {**super().state_dict(), "history": list(self.history)}

    def load_state_dict(self, state: dict, reference: Any) -> None:
        super().load_state_dict(state, reference)
        self.history = list(state["history"])

    def remember(self, epoch: int, value: float | None) -> None:
        if epoch == 0:  # a new level: a new curve
            self.history = []
        if value is not None:
            self.history.append(value)


@dataclass
class FlowPlateau(LevelHistory, FlowRule):
    """Stop at the first epoch >= min_epochs whose flow distance is not below the smallest
    distance of the level's earlier epochs (epoch 0, right after rewinding, included) by more
    than ``plateau_tol`` (relative); or, with the accuracy clause, once the validation metric
    is back at a*. No eps: the level's own curve decides."""

    plateau_tol: float = 0.05
    reasons = {"flow-plateau": "the flow distance stopped falling (plateau_tol)"}

    def decide(self, epoch: int, score: float, distance: float | None) -> str | None:
        self.remember(epoch, distance)
        return super().decide(epoch, score, distance)

    def met(self, score: float, distance: float | None) -> str | None:
        if distance is not None and plateaued(self.history, self.plateau_tol):
            return "flow-plateau"
        return "accuracy" if self.accuracy_clause and score >= self.target else None


@dataclass
class IFPlateau(MeasuresIF, FlowPlateau):
    """``if-plateau``: :class:`FlowPlateau` on the information flow."""

    summary: str = "mean"
    skip: tuple[str, ...] = ("*downsample*", "*shortcut*")
    channel_dim: int | None = None
    name: str = field(default="if-plateau", init=False)

    Options = IFPlateauOptions

    @classmethod
    def from_options(cls, options: IFPlateauOptions, config: Any) -> IFPlateau:
        o = options
        return cls(config.max_epochs, config.min_epochs, distance=o.distance,
                   accuracy_clause=o.accuracy_clause, plateau_tol=o.plateau_tol,
                   **if_fields(o))  # fmt: skip


@dataclass
class GFPlateau(MeasuresGF, FlowPlateau):
    """``gf-plateau``: :class:`FlowPlateau` on the gradient flow."""

    normalize: bool = False
    name: str = field(default="gf-plateau", init=False)

    Options = GFPlateauOptions

    @classmethod
    def from_options(cls, options: GFPlateauOptions, config: Any) -> GFPlateau:
        o = options
        return cls(config.max_epochs, config.min_epochs, distance=o.distance,
                   accuracy_clause=o.accuracy_clause, plateau_tol=o.plateau_tol,
                   normalize=o.gf_normalize)  # fmt: skip


@dataclass(frozen=True)
class PatienceOptions(NoOptions):
    patience: int = option(
        1, "loss-plateau: stop once the validation metric has not improved for this many epochs"
    )

    def check(self) -> list[str]:
        return in_range("patience", self.patience, 1, 10_000)


@dataclass
class LossPlateau(LevelHistory, StoppingRule):
    """``loss-plateau(patience)``: early stopping on the validation metric (the run's
    ``metric``, loss or accuracy, oriented so that higher is better): stop at the first epoch
    >= min_epochs after which the best score of the level (epoch 0 included) has not
    improved for ``patience`` epochs."""

    patience: int = 1
    name: str = field(default="loss-plateau", init=False)

    Options = PatienceOptions
    reasons = {"plateau": "the validation metric did not improve for patience epochs"}

    def decide(self, epoch: int, score: float, distance: float | None) -> str | None:
        self.remember(epoch, score)
        return super().decide(epoch, score, distance)

    def met(self, score: float, distance: float | None) -> str | None:
        scores = self.history
        if len(scores) <= self.patience:
            return None
        best_before = max(scores[: -self.patience])
        return "plateau" if max(scores[-self.patience :]) <= best_before else None


register_rule("if-plateau", "a level ends once the information-flow distance stops falling")(
    IFPlateau
)
register_rule("gf-plateau", "a level ends once the gradient-flow distance stops falling")(GFPlateau)
register_rule("loss-plateau", "early stopping: the validation metric stopped improving")(
    LossPlateau
)
