"""The final fine-tune (METHOD.md section 1, last line): after the last level, train the final
ticket ``finetune_epochs`` more epochs with its masks enforced, a fresh optimiser and a
schedule of its own, and keep the epoch of best validation score.

Early-stopping rules end the sparsest level wherever they stopped; a fine-tune of the same
length for every method makes their final tickets comparable ("no need to retrain to the
original performance in intermediate steps, while maintaining performance at the end").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from incop.core.training import DivergenceError, make_scheduler
from incop.methods.rewind import snapshot

if TYPE_CHECKING:
    from incop.engine.imp import IMP


@dataclass
class FinalResult:
    """The fine-tuned final ticket. ``epochs``: fine-tune epochs trained; ``best_epoch``: the
    one kept (0: none beat the last level's weights); accuracies fractions (None when not
    classification or without test data); seconds wall-clock."""

    epochs: int
    best_epoch: int
    val_accuracy: float | None
    val_loss: float
    val_metric: float
    test_accuracy: float | None
    test_loss: float | None
    train_seconds: float
    eval_seconds: float

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def finetune(loop: IMP, state: dict[str, Any] | None = None) -> FinalResult:
    """Fine-tune ``loop``'s model in place after its last level; ``state``: a saved state
    from within the fine-tune to go on from (already restored)."""
    c = loop.config
    level = len(loop.levels) - 1
    clock = loop.new_clock()
    if state is None:
        loop.fresh_optimizer()
        loop.scheduler = make_scheduler(loop.optimizer, c.schedule, c.finetune_epochs)
        kept = {"record": dict(loop.record), "epoch": 0, "weights": snapshot(loop.model)}
        trained, start = 0, 1
    else:
        kept = state["phase_state"]
        clock.seconds.update(state["clock"])
        trained = state["epoch"]
        start = trained + 1
    for epoch in range(start, c.finetune_epochs + 1):
        last_good = snapshot(loop.model)
        try:
            record = loop.run_epoch(clock, train=True, measure=False)
        except DivergenceError as exc:
            loop.recover(exc, last_good)
            break
        trained = epoch
        loop.log(level, epoch, clock, {**record, "phase": "finetune"})
        loop.bar.advance()
        if loop.score(record) > loop.score(kept["record"]):
            kept = {"record": record, "epoch": epoch, "weights": snapshot(loop.model)}
        loop.save_state("finetune", level, epoch, clock, phase_state=kept)
    loop.model.load_state_dict(kept["weights"])
    loop.writer.final(loop.model.state_dict(), loop.masks)
    best = kept["record"]
    return FinalResult(
        epochs=trained,
        best_epoch=kept["epoch"],
        val_accuracy=best["val_accuracy"],
        val_loss=best["val_loss"],
        val_metric=best["val_metric"],
        **loop.test(),
        train_seconds=clock.seconds["train"],
        eval_seconds=clock.seconds["eval"],
    )
