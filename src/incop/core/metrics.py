"""The validation metric: the one number every decision of a run reads.

The best dense epoch (theta*, and the target a*), the ``accuracy`` stopping rule and the
flow rules' accuracy clause all compare *scores*: the metric's value on the validation
split, oriented so that higher is better (a loss is negated). ``accuracy`` suits
classification, ``loss`` any task (regression included); :func:`incop.prune` also takes
a callable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from incop.errors import UserError

if TYPE_CHECKING:
    import torch

#: The metrics a config (YAML, command line) can name.
METRICS = ("accuracy", "loss")
#: How a config records a callable given to ``incop.prune`` (it cannot be rebuilt from a file).
CALLABLE_PREFIX = "callable:"

MetricFn = Callable[["torch.Tensor", "torch.Tensor"], float]


@dataclass(frozen=True)
class Metric:
    """``name``: ``accuracy``, ``loss`` or ``callable:<function name>``; ``fn(outputs,
    targets) -> float`` (callables only) is the mean over one batch, averaged by incop over
    the validation batches weighted by their size; ``higher_is_better`` orients it."""

    name: str
    higher_is_better: bool
    fn: MetricFn | None = None

    @classmethod
    def named(cls, name: str) -> Metric:
        """A metric a config names (``accuracy`` or ``loss``)."""
        if name == "accuracy":
            return cls("accuracy", higher_is_better=True)
        if name == "loss":
            return cls("loss", higher_is_better=False)
        if name.startswith(CALLABLE_PREFIX):
            raise UserError(
                f"metric: {name!r} was a Python function given to incop.prune; a config file"
                f" or the command line can use {', '.join(METRICS)}"
            )
        raise UserError(f"metric: unknown value {name!r}; allowed: {', '.join(METRICS)}")

    @classmethod
    def from_callable(cls, fn: MetricFn, higher_is_better: bool) -> Metric:
        return cls(f"{CALLABLE_PREFIX}{getattr(fn, '__name__', 'metric')}", higher_is_better, fn)

    def value(self, loss: float, accuracy: float | None, custom: float | None) -> float:
        """This metric's value from one evaluation's mean loss, accuracy and custom value."""
        if self.name == "loss":
            return loss
        if self.name == "accuracy":
            if accuracy is None:
                raise UserError(
                    "metric: accuracy needs class targets (integer labels, one per example, and"
                    " outputs of shape (batch, classes)); use metric='loss' or a callable"
                )
            return accuracy
        if custom is None or not math.isfinite(custom):
            raise UserError(
                f"metric: {self.name.removeprefix(CALLABLE_PREFIX)} gave {custom} on the"
                " validation data; a metric must give a finite number"
            )
        return custom

    def score(self, value: float) -> float:
        """``value`` oriented so that higher is better."""
        return value if self.higher_is_better else -value
