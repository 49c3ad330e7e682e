"""``--log tensorboard``: TensorBoard event files in ``tensorboard/`` of the run folder
(needs the ``tensorboard`` package: ``pip install incop[tensorboard]``).

Scalars: ``epoch/<key>`` for every number of an epoch record, at step = the record's line in
``metrics.jsonl``; ``level/<key>`` for every number of a decided level, at step = the level;
``density/<weight>``, each pruned tensor's remaining fraction at each level. A resumed run
writes a new event file that purges the steps after the saved state (the lost epoch's).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from incop.core.callbacks import LOGGERS, Logger
from incop.errors import UserError

if TYPE_CHECKING:
    from incop.engine.outputs import RunWriter


FOLDER = "tensorboard"


class TensorBoardLogger(Logger):
    """Writes through ``torch.utils.tensorboard.SummaryWriter``, opened at the first epoch
    (a run that fails before training leaves no event file); every event file is recorded in
    the run folder's manifest as it grows."""

    def __init__(self, writer: RunWriter) -> None:
        self.writer = writer
        self.events: Any = None
        self.step = 0

    @classmethod
    def open(cls, writer: RunWriter, config: Any) -> TensorBoardLogger:
        if importlib.util.find_spec("tensorboard") is None:
            raise UserError(
                "log: tensorboard needs the tensorboard package; pip install 'incop[tensorboard]'"
            )
        return cls(writer)

    def _events(self) -> Any:
        if self.events is None:
            from torch.utils.tensorboard import SummaryWriter

            self.step = self.writer.lines - 1  # this epoch's line is written already
            folder = self.writer.root / FOLDER
            if folder.is_symlink():  # placed since the folder was checked: never written through
                raise UserError(f"{folder} is a symbolic link; incop does not write through one")
            self.events = SummaryWriter(str(folder), purge_step=self.step)
        return self.events

    def on_epoch_end(self, record: dict[str, Any], state: Any) -> None:
        events = self._events()
        for key, value in _numbers(record):
            events.add_scalar(f"epoch/{key}", value, self.step)
        self.step += 1

    def on_level_end(self, level: dict[str, Any], state: Any) -> None:
        events = self._events()
        step = level["level"]
        for key, value in _numbers(level):
            events.add_scalar(f"level/{key}", value, step)
        for name, fraction in (level.get("layer_remaining") or {}).items():
            events.add_scalar(f"density/{name}", fraction, step)
        self._record()

    def on_run_end(self, summary: dict[str, Any], state: Any) -> None:
        self._record()

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self._record()

    def _record(self) -> None:
        """Flush the event file and record what it holds now in the manifest."""
        self.events.flush()
        root = self.writer.root
        for path in sorted(Path(root, FOLDER).glob("events.out.tfevents.*")):
            data = path.read_bytes()
            relative = path.relative_to(root).as_posix()
            self.writer.folder.note(relative, len(data), hashlib.sha256(data).hexdigest())
        self.writer.folder.flush()


def _numbers(record: dict[str, Any]) -> list[tuple[str, float]]:
    return [
        (key, float(value))
        for key, value in record.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]


LOGGERS.register(
    "tensorboard", "TensorBoard event files in tensorboard/ (needs incop[tensorboard])"
)(TensorBoardLogger)
