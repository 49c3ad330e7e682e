"""``epi``: the dense warm-up ends as soon as the first prune's mask stops changing
(docs/epi.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from incop.core.options import MAX_COUNT, MAX_EPOCHS, NoOptions, in_range, not_allowed, option
from incop.methods.stopping.rule import STOP_REASONS
from incop.methods.warmup_stop.stop import WARMUP_STOPS, WarmupStop, mask_iou

if TYPE_CHECKING:
    from incop.core.masks import Masks


#: epi_threshold's default: the smallest logged similarity at which every logged warm-up
#: (digits mlp, 3 seeds; Fashion-MNIST lenet5, 2 seeds) ends within 1 point of its full
#: warm-up's best validation accuracy. docs/epi.md has the logs, and why it saves nothing on
#: lenet5.
EPI_THRESHOLD = 0.986


@dataclass(frozen=True)
class EPIOptions(NoOptions):
    epi_window: int = option(
        3, "epi: the mask of each epoch is compared with those of this many before it"
    )
    epi_threshold: float = option(
        EPI_THRESHOLD,
        "epi: end the warm-up once the smallest intersection over union in the window is at"
        " least this (docs/epi.md)",
    )
    min_warmup_epochs: int = option(1, "epi: never end the warm-up before this many epochs")
    epi_mode: str = option(
        "mask",
        "epi: what is compared: mask (which weights the first prune keeps, by intersection over"
        " union, as Early-Bird tickets) or units (the EPI paper's: how many units each layer"
        " keeps, for scope channel; docs/epi.md)",
        choices=("mask", "units"),
    )

    def check(self) -> list[str]:
        problems = in_range("epi_window", self.epi_window, 1, MAX_COUNT)
        if not 0 < self.epi_threshold <= 1:
            problems.append(not_allowed("epi_threshold", self.epi_threshold, "must be in (0, 1]"))
        return problems + in_range("min_warmup_epochs", self.min_warmup_epochs, 0, MAX_EPOCHS)


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
    mode: str = "mask"
    name: str = field(default="epi", init=False)

    Options = EPIOptions

    @classmethod
    def from_options(cls, options: EPIOptions, config: Any) -> EPIStop:
        o = options
        return cls(o.epi_window, o.epi_threshold, o.min_warmup_epochs, o.epi_mode)

    @classmethod
    def check_config(cls, config: Any) -> list[str]:
        c = config
        problems = []
        if c.epi_mode == "units" and c.scope != "channel":
            problems.append(
                f"epi_mode: 'units' compares how many units the first prune keeps, which only"
                f" scope channel decides (scope is {c.scope!r}); use epi_mode mask"
            )
        if c.min_warmup_epochs > c.warmup_epochs:
            problems.append(
                f"min_warmup_epochs: {c.min_warmup_epochs!r} is not allowed; must be in"
                f" 0..warmup_epochs ({c.warmup_epochs})"
            )
        if c.warmup_epochs <= c.epi_window:
            problems.append(
                f"warmup_stop: epi can never end a warm-up of {c.warmup_epochs} epochs early: it"
                f" compares each epoch with the {c.epi_window} before it (epi_window); raise"
                " warmup_epochs, the cap"
            )
        if c.rewind.startswith("epoch:"):
            k = c.rewind.split(":", 1)[1]
            if not k.isdigit() or int(k) > c.min_warmup_epochs:
                problems.append(
                    f"rewind: {c.rewind!r} needs dense epoch {k}, which an EPI warm-up may end"
                    f" before; set min_warmup_epochs >= {k}"
                )
        return problems

    def __post_init__(self) -> None:
        self.history: list[Any] = []
        self.similarity: float | None = None
        self.best: float | None = None

    def observe(self, epoch: int, next_mask: Callable[[], Masks]) -> float | None:
        if self.mode == "units":
            return self._observe_units(next_mask())
        mask = {name: m.cpu() for name, m in next_mask().items()}  # kept for `window` epochs
        earlier = self.history[-self.window :]
        full = len(earlier) == self.window
        self.similarity = min(mask_iou(mask, m) for m in earlier) if full else None
        self.history = [*earlier, mask]
        return self.similarity

    def _observe_units(self, mask: Masks) -> float | None:
        """The EPI paper's Psi of this epoch's unit counts, averaged over the window."""
        counts = {name: int(m.flatten(1).any(1).sum()) for name, m in mask.items()}
        earlier = self.history[-self.window :]
        full = len(earlier) == self.window
        self.best = self.similarity if self.best is None else max(self.best, self.similarity or 0)
        self.similarity = sum(psi(counts, e) for e in earlier) / len(earlier) if full else None
        self.history = [*earlier, counts]
        return self.similarity

    def decide(self, epoch: int) -> bool:
        ready = epoch >= self.min_epochs and self.similarity is not None
        if self.mode == "units":  # at its running maximum, as the paper starts pruning
            ready = ready and (self.best is None or self.similarity >= self.best)
        return ready and self.similarity >= self.threshold

    def state_dict(self) -> dict:
        from incop.core.masks import pack_mask

        if self.mode == "units":
            history: list[Any] = [dict(counts) for counts in self.history]
        else:
            history = [{n: (tuple(m.shape), pack_mask(m)) for n, m in masks.items()}
                       for masks in self.history]  # fmt: skip
        return {"history": history, "similarity": self.similarity, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        from incop.core.masks import unpack_mask

        if self.mode == "units":
            self.history = [dict(counts) for counts in state["history"]]
        else:
            self.history = [
                {n: unpack_mask(bits, shape) for n, (shape, bits) in masks.items()}
                for masks in state["history"]
            ]
        self.similarity = state["similarity"]
        self.best = state.get("best")


def psi(counts: dict[str, int], other: dict[str, int]) -> float:
    """The EPI paper's similarity of two sub-networks from their alive units per layer:
    1 - (1/L) sum_l |n_l - n'_l| / (n_l + n'_l) (a layer with no unit in either counts 0)."""
    terms = [abs(counts[n] - other[n]) / (counts[n] + other[n]) if counts[n] + other[n] else 0.0
             for n in counts]  # fmt: skip
    return 1.0 - sum(terms) / len(terms)


WARMUP_STOPS.register("epi", "end once the first prune's mask stops changing (EPI)")(EPIStop)
STOP_REASONS["epi"] = (
    "the dense network (level 0), its warm-up ended once the first prune's mask stopped"
    " changing (warmup_stop epi)"
)
