"""When the dense warm-up ends (METHOD.md section 8): after ``warmup_epochs`` (``fixed``), or
as soon as the first prune's mask stops changing (``epi``).

The IMP loop asks a warm-up stop after every dense epoch whether to end the warm-up there,
handing it a function that computes the first prune's mask from the current weights (called
only by stops that need it). Like the stopping rules, :meth:`WarmupStop.decide` is a pure
function of what it is shown, so it can be checked on scripted sequences of masks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from incop.engine.masks import Masks, pack_mask, unpack_mask
from incop.registry import Registry

#: epi_threshold's default: the smallest logged similarity at which every logged warm-up
#: (digits mlp, 3 seeds; Fashion-MNIST lenet5, 2 seeds) ends within 1 point of its full
#: warm-up's best validation accuracy. docs/epi.md has the logs, and why it saves nothing on
#: lenet5.
EPI_THRESHOLD = 0.986


def mask_iou(a: Masks, b: Masks) -> float:
    """Intersection over union of the kept weights of two masks over the same tensors
    (1.0 when both keep nothing)."""
    both = sum(int((a[n] & b[n]).sum()) for n in a)
    either = sum(int((a[n] | b[n]).sum()) for n in a)
    return both / either if either else 1.0


@dataclass
class WarmupStop:
    """``fixed``: the warm-up trains all of ``warmup_epochs``."""

    name: str = field(default="fixed", init=False)

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


@dataclass
class EPIStop(WarmupStop):
    """``epi``, in the spirit of EPI (Shen et al., "When to Prune? A Policy towards Early
    Structural Pruning", CVPR 2022): after every dense epoch, the mask the first prune would
    produce; the similarity of epoch t is the smallest intersection over union between its
    mask and each of the ``window`` epochs before it (None until there are ``window``). The
    warm-up ends after the first epoch t >= ``min_epochs`` whose similarity is at least
    ``threshold``: the sub-network the first prune keeps has stopped changing."""

    window: int = 3
    threshold: float = EPI_THRESHOLD
    min_epochs: int = 1
    name: str = field(default="epi", init=False)

    def __post_init__(self) -> None:
        self.history: list[Masks] = []
        self.similarity: float | None = None

    def observe(self, epoch: int, next_mask: Callable[[], Masks]) -> float | None:
        mask = {name: m.cpu() for name, m in next_mask().items()}  # kept for `window` epochs
        earlier = self.history[-self.window :]
        full = len(earlier) == self.window
        self.similarity = min(mask_iou(mask, m) for m in earlier) if full else None
        self.history = [*earlier, mask]
        return self.similarity

    def decide(self, epoch: int) -> bool:
        ready = epoch >= self.min_epochs and self.similarity is not None
        return ready and self.similarity >= self.threshold

    def state_dict(self) -> dict:
        packed = [{n: (tuple(m.shape), pack_mask(m)) for n, m in masks.items()}
                  for masks in self.history]  # fmt: skip
        return {"history": packed, "similarity": self.similarity}

    def load_state_dict(self, state: dict) -> None:
        self.history = [
            {n: unpack_mask(bits, shape) for n, (shape, bits) in masks.items()}
            for masks in state["history"]
        ]
        self.similarity = state["similarity"]


WARMUP_STOPS: Registry[type[WarmupStop]] = Registry("warm-up stop")
WARMUP_STOPS.register("fixed", "train all of warmup_epochs")(WarmupStop)
WARMUP_STOPS.register("epi", "end once the first prune's mask stops changing (EPI)")(EPIStop)
