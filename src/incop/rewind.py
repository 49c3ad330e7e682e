"""Rewinding after each prune (METHOD.md section 5)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from incop.errors import UserError

REWIND_MODES = ("init", "epoch:K", "dense", "none", "lr")

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Rewind:
    """Where the surviving weights go after a prune.

    ``init``: back to the initial weights theta_0 (original LTH). ``epoch``
    (written ``epoch:K``): back to the weights after K dense epochs (stabilised
    LTH). ``dense``: back to the trained dense theta*. ``none``: keep the
    weights and go on fine-tuning with the optimiser and schedule as they were.
    ``lr``: keep the weights, restart optimiser and learning-rate schedule.
    Biases and BatchNorm parameters and statistics follow the same choice.
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
