"""Rewinding after each prune (METHOD.md section 5)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from incop.core.options import NoOptions, option
from incop.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn


REWIND_MODES = ("init", "epoch:K", "dense", "none", "lr")


@dataclass(frozen=True)
class RewindOptions(NoOptions):
    rewind: str = option("dense", "where surviving weights go after a prune",
                         choices=REWIND_MODES, checked=False)  # fmt: skip

    def check(self) -> list[str]:
        try:
            Rewind.parse(self.rewind)
        except UserError as exc:
            return [str(exc)]
        return []


StateDict = dict[str, "torch.Tensor"]


@dataclass(frozen=True)
class Rewind:
    """Where the surviving weights go after a prune.

    ``init``: back to the initial weights theta_0 (original LTH). ``epoch``
    (written ``epoch:K``): back to the weights after K dense epochs (stabilised
    LTH). ``dense``: back to the trained dense theta*. ``none``: keep the
    weights and the optimiser's state (momentum, Adam moments). ``lr``: keep the
    weights, start a fresh optimiser (learning-rate rewinding). Biases and
    BatchNorm parameters and statistics follow the same choice.

    Whatever the mode, every retraining phase runs a whole learning-rate schedule of
    its own over ``max_epochs``, from the base rate: the modes differ in weights and
    optimiser state, never in the schedule a level gets. So ``epoch:K`` also restarts
    the schedule at its first epoch, where OpenLTH resumes its one long schedule at
    step K: here a retraining phase is not the remainder of the dense run but a phase
    as long as any other level's, which keeps levels and rewinding modes comparable.
    With the default ``schedule: none`` the two agree.
    """

    mode: str
    epoch: int = 0

    @classmethod
    def parse(cls, text: str) -> Rewind:
        text = str(text).strip()
        match = re.fullmatch(r"epoch:(\d+)", text)
        if match:
            return cls("epoch", int(match.group(1)))
        if text in ("init", "dense", "none", "lr"):
            return cls(text)
        raise UserError(
            f"rewind: unknown mode {text!r}; allowed: {', '.join(REWIND_MODES)}"
            " (K a whole number of dense epochs, e.g. epoch:2)"
        )

    def __str__(self) -> str:
        return f"epoch:{self.epoch}" if self.mode == "epoch" else self.mode

    @property
    def snapshot(self) -> str | None:
        """Which saved state to load: ``"init"``, ``"epoch"``, ``"dense"`` or None (keep)."""
        return self.mode if self.mode in ("init", "epoch", "dense") else None

    @property
    def restart_optimizer(self) -> bool:
        """Whether retraining starts a fresh optimiser and schedule (all but ``none``)."""
        return self.mode != "none"


def snapshot(model: nn.Module) -> StateDict:
    """A detached copy of every parameter and buffer, kept on the model's device."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
