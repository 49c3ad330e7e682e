"""The run folder: the one place that decides what is written, and writes it atomically.

Layout (documented in the README)::

    config.yaml                 the full resolved config
    metrics.jsonl               one JSON object per epoch, appended as they finish
    summary.json                {"levels": [...], "dense_accuracy": a*, "config": {...}}
    levels/<k>/checkpoint.pt    {"state_dict": ..., "masks": {name: bool tensor}}
    state.pt                    everything needed to resume after the last completed epoch

Only one process writes: in data-parallel training every rank but 0 gets a
:class:`NullWriter`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from incop.errors import UserError
from incop.masks import Masks


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` only if the block
    succeeds, so ``path`` is never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    # mkstemp makes the file private (0600); results are meant to be shared like any file.
    os.chmod(tmp, 0o644)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_torch_save(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


STATE_FILE = "state.pt"
#: The files of a run folder besides ``levels/``.
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", STATE_FILE)


def _json(obj: Any) -> str:
    return json.dumps(obj, allow_nan=True, default=str)


class NullWriter:
    """Writes nothing: for library use without ``out`` and for non-zero ranks."""

    #: Whether :meth:`state` keeps anything (building a resume state is skipped if not).
    saves_state = False
    #: Lines of ``metrics.jsonl`` written so far, recorded in the resume state.
    lines = 0

    def config(self, text: str) -> None:
        pass

    def epoch(self, record: dict[str, Any]) -> None:
        pass

    def level(self, level: int, state_dict: dict[str, torch.Tensor], masks: Masks) -> None:
        pass

    def summary(self, summary: dict[str, Any]) -> None:
        pass

    def state(self, state: dict[str, Any]) -> None:
        pass

    def load_state(self, device: torch.device) -> dict[str, Any] | None:
        return None


class RunWriter(NullWriter):
    """Writes a run folder at ``root`` (created if needed), including ``state.pt``, the
    resume state of the last completed epoch."""

    saves_state = True

    def __init__(self, root: str | os.PathLike, *, mode: str = "new") -> None:
        """``mode``: ``new`` refuses a folder that already holds a run, ``overwrite`` clears
        that run's files first, ``resume`` requires one (see :meth:`load_state`)."""
        self.root = Path(root)
        held = self.root / "config.yaml"
        if mode == "new" and held.exists():
            raise UserError(
                f"out: {str(self.root)!r} already holds a run; pass --resume {self.root} to"
                " continue it, --overwrite to replace it, or choose another --out"
            )
        if mode == "resume" and not held.exists():
            raise UserError(f"resume: {str(self.root)!r} holds no run (no config.yaml there)")
        if mode == "overwrite":
            for name in RUN_FILES:
                (self.root / name).unlink(missing_ok=True)
            shutil.rmtree(self.root / "levels", ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lines = 0

    def config(self, text: str) -> None:
        atomic_write_text(self.root / "config.yaml", text)

    def epoch(self, record: dict[str, Any]) -> None:
        # One write call per line, flushed: a crash leaves at most a torn last line.
        with open(self.root / "metrics.jsonl", "a") as handle:
            handle.write(_json(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.lines += 1

    def level(self, level: int, state_dict: dict[str, torch.Tensor], masks: Masks) -> None:
        atomic_torch_save(
            self.root / "levels" / str(level) / "checkpoint.pt",
            {
                "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
                "masks": {k: v.cpu() for k, v in masks.items()},
            },
        )

    def summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.root / "summary.json", json.dumps(summary, indent=2, default=str))

    def state(self, state: dict[str, Any]) -> None:
        atomic_torch_save(self.root / STATE_FILE, {**state, "metrics_lines": self.lines})

    def load_state(self, device: torch.device) -> dict[str, Any] | None:
        """The saved resume state, with ``metrics.jsonl`` cut back to the lines it had then
        (a torn or later line belongs to the epoch that was lost)."""
        path = self.root / STATE_FILE
        if not path.exists():
            return None
        state = torch.load(path, map_location=device, weights_only=False)
        self.lines = state["metrics_lines"]
        metrics = self.root / "metrics.jsonl"
        kept = read_metrics(metrics)[: self.lines] if metrics.exists() else []
        atomic_write_text(metrics, "".join(_json(record) + "\n" for record in kept))
        return state


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, ignoring a torn (unparseable) last line."""
    records = []
    lines = Path(path).read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
    return records
