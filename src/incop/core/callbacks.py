"""Callbacks: what the IMP loop tells whoever listens, and the loggers built on them.

The loop calls each callback of a run, in order:

- ``on_epoch_end(record, state)`` after every logged epoch (warm-up, retraining, fine-tune),
  ``record`` being the line ``metrics.jsonl`` gets (level, epoch, losses, accuracies,
  ``val_metric``, ``remaining_fraction``, seconds...);
- ``on_prune(masks, state)`` right after each prune, before rewinding;
- ``on_level_end(level, state)`` once a level is decided, ``level`` being its row of
  ``summary.json`` (a dict);
- ``on_run_end(summary, state)`` at the end, ``summary`` being ``summary.json``'s content;
- ``close()`` always, also when the run fails.

``state`` is the loop's :class:`incop.engine.state.RunState` (counters, masks, optimiser),
for reading. A callback subclasses :class:`Callback` and overrides what it needs, or is any
object with some of these methods. A logger is a callback registered in :data:`LOGGERS`
under the name ``--log`` takes; its ``open(folder, config)`` builds it for a run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from incop.core.registry import Registry
from incop.errors import UserError

HOOKS = ("on_epoch_end", "on_prune", "on_level_end", "on_run_end", "close")


class Callback:
    """Does nothing at every hook; subclasses override the hooks they need."""

    def on_epoch_end(self, record: dict[str, Any], state: Any) -> None:
        """After every logged epoch (see the module docstring for ``record``)."""

    def on_prune(self, masks: dict[str, Any], state: Any) -> None:
        """Right after each prune: ``masks``, the new masks (parameter name -> bool tensor)."""

    def on_level_end(self, level: dict[str, Any], state: Any) -> None:
        """Once a level is decided: its row of ``summary.json``."""

    def on_run_end(self, summary: dict[str, Any], state: Any) -> None:
        """At the end of the run: the content of ``summary.json``."""

    def close(self) -> None:
        """Always called last, also when the run fails: release files."""


class Logger(Callback):
    """A callback ``--log NAME`` builds for a run folder."""

    @classmethod
    def open(cls, folder: Path, config: Any) -> Logger:
        """The logger writing into the run folder ``folder`` (its own files only)."""
        raise NotImplementedError


#: Logger name -> its class (``open(folder, config)`` builds it).
LOGGERS: Registry[type] = Registry("logger", builtins="incop.engine.loggers")


def check_callback(obj: object) -> None:
    """Refuse an object with none of the hooks: it would silently hear nothing."""
    if not any(callable(getattr(obj, hook, None)) for hook in HOOKS):
        raise UserError(
            f"callbacks: {type(obj).__name__} has none of the hooks {', '.join(HOOKS)};"
            " subclass incop.Callback and override the ones you need"
        )
