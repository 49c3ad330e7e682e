"""The epoch progress bar of a run, honest about what will actually run.

Its total starts as the most epochs the run can take (warm-up plus ``levels`` times
``max_epochs``) and shrinks whenever a phase stops early, so the estimate of the time
left is right as soon as a level ends, and the finished bar reads epochs run / epochs
run. The counts are kept here, not read back from tqdm, so they hold with the bar hidden.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from incop.core.callbacks import Callback


class Progress(Callback):
    """``total`` epochs planned, ``done`` of them already run (on resume); ``enabled``
    shows the bar (on standard error); ``planned(level)``: the most epochs a level can take;
    ``metric``: the name the validation metric is shown under.

    As a callback of the run it advances with every trained epoch (a record's epoch 0 trains
    nothing), shows the validation metric, and settles the total as each level ends."""

    def __init__(
        self,
        total: int,
        *,
        done: int = 0,
        enabled: bool = False,
        desc: str = "IMP",
        planned: Callable[[int], int] | None = None,
        metric: str = "val",
    ):
        self.total = total
        self.done = done
        self.planned = planned
        self.metric = metric
        self._bar = (
            tqdm(total=total, initial=done, unit="epoch", desc=desc, leave=True)
            if enabled
            else None
        )

    def advance(self, epochs: int = 1) -> None:
        """``epochs`` more epochs trained."""
        self.done += epochs
        if self._bar is not None:
            self._bar.update(epochs)

    def settle(self, planned: int, used: int) -> None:
        """A phase planned for ``planned`` epochs ended after ``used``: drop the rest."""
        self._retotal(self.total - (planned - used))

    def show(self, **fields: Any) -> None:
        if self._bar is not None:
            self._bar.set_postfix(**fields)

    def on_epoch_end(self, record: dict[str, Any], state: Any) -> None:
        self.show(level=record["level"], **{self.metric[:8]: f"{record['val_metric']:.4g}"})
        if record["epoch"] > 0:
            self.advance()

    def on_level_end(self, level: dict[str, Any], state: Any) -> None:
        if self.planned is not None:
            self.settle(self.planned(level["level"]), level["epochs"])

    def close(self) -> None:
        """End the bar; a run that ended early (on_divergence: stop) ran what it ran."""
        self._retotal(self.done)
        if self._bar is not None:
            self._bar.close()

    def _retotal(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()
