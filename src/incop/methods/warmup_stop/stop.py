"""When the dense warm-up ends (METHOD.md section 8): after ``warmup_epochs`` (``fixed``), or
as soon as the first prune's mask stops changing (``epi``).

The IMP loop asks a warm-up stop after every dense epoch whether to end the warm-up there,
handing it a function that computes the first prune's mask from the current weights (called
only by stops that need it). Like the stopping rules, :meth:`WarmupStop.decide` is a pure
function of what it is shown, so it can be checked on scripted sequences of masks. This module
holds the protocol (:class:`WarmupStop`, which is also ``fixed``) and the registry; each other
warm-up stop is a file of this package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from incop.core.options import Component
from incop.core.registry import Registry

if TYPE_CHECKING:
    from incop.core.masks import Masks


def mask_iou(a: Masks, b: Masks) -> float:
    """Intersection over union of the kept weights of two masks over the same tensors
    (1.0 when both keep nothing)."""
    both = sum(int((a[n] & b[n]).sum()) for n in a)
    either = sum(int((a[n] | b[n]).sum()) for n in a)
    return both / either if either else 1.0


@dataclass
class WarmupStop(Component):
    """``fixed``: the warm-up trains all of ``warmup_epochs``."""

    name: str = field(default="fixed", init=False)

    @classmethod
    def from_options(cls, options: Any, config: Any) -> WarmupStop:
        return cls()

    def observe(self, epoch: int, next_mask: Callable[[], Masks]) -> float | None:
        """Take in dense epoch ``epoch`` (1, 2, ...); return the indicator's value, if any."""
        return None

    def decide(self, epoch: int) -> bool:
        """Whether the warm-up ends after ``epoch`` (the cap is the loop's)."""
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Take up :meth:`state_dict`'s output, to resume a warm-up."""


WARMUP_STOPS: Registry[type[WarmupStop]] = Registry("warm-up stop")
WARMUP_STOPS.register("fixed", "train all of warmup_epochs")(WarmupStop)
