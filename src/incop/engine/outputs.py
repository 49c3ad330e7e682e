"""The run folder: the one place that decides what is written, and writes it atomically.

Layout (documented in the README)::

    config.yaml                 the full resolved config
    metrics.jsonl               one JSON object per epoch, appended as they finish
    summary.json                {"levels": [...], "dense_accuracy": a*, "config": {...}}
    levels/<k>/checkpoint.pt    {"state_dict": ..., "masks": {name: bool tensor}}
    final/checkpoint.pt         the same for the fine-tuned final ticket (finetune_epochs > 0)
    snapshots/<name>-<e>.pt     weights the run rewinds to (theta_0, theta*, epoch K), each
                                written once, where it is produced (e: the epoch it was taken)
    state.pt                    what changes per epoch (model, optimiser, scheduler, RNGs,
                                counters), and which snapshots it needs
    .incop.lock                 held (flock) by the one process writing the folder

``state.pt`` also records the SHA-256 of ``config.yaml``, of every level
checkpoint and snapshot, and of the first ``metrics_lines`` lines of ``metrics.jsonl``, so a
resume either continues exactly the run those files describe or refuses,
naming the file that does not fit. No file ever holds NaN or Infinity: JSON
gets ``null`` for a non-finite number.

Only one process writes: in data-parallel training every rank but 0 gets a
:class:`NullWriter`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from incop.engine.folders import Layout, OwnedFolder, clear
from incop.engine.masks import Masks
from incop.errors import StorageError, UserError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` only if the block
    succeeds, so ``path`` is never half-written. A failing write (full disk, read-only file
    system) raises :class:`StorageError` naming ``path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise StorageError.from_os_error(exc, path, "writing") from None
    os.close(fd)
    # mkstemp makes the file private (0600); results are meant to be shared like any file.
    os.chmod(tmp, 0o644)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise StorageError.from_os_error(exc, path, "writing") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> str:
    """Write ``text`` atomically; return its SHA-256."""
    data = text.encode()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def atomic_torch_save(path: Path, obj: Any) -> str:
    """``torch.save`` atomically; return the file's SHA-256."""
    with atomic_path(path) as tmp:
        # Through a file object, so a full disk surfaces as OSError(ENOSPC), not a bare
        # RuntimeError from torch's own writer.
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
        return file_digest(tmp)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by None, recursively."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: finite(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(value) for value in obj]
    return obj


def to_json(obj: Any, **options: Any) -> str:
    """Strict JSON (no NaN or Infinity tokens): non-finite numbers become ``null``."""
    return json.dumps(finite(obj), allow_nan=False, default=str, **options)


STATE_FILE = "state.pt"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
#: What ``incop run`` writes in its folder; ``--overwrite`` removes these and nothing else.
RUN_LAYOUT = Layout(
    files=(
        r"config\.yaml",
        r"metrics\.jsonl",
        r"summary\.json",
        r"state\.pt",
        r"levels/\d+/checkpoint\.pt",
        r"final/checkpoint\.pt",
        r"snapshots/[a-z]+-\d+\.pt",
    ),
    dirs=(r"levels", r"levels/\d+", r"final", r"snapshots"),
)
#: The files a resume without ``state.pt`` starts again from scratch (all but the config).
_PROGRESS = Layout(RUN_LAYOUT.files[1:], RUN_LAYOUT.dirs)
#: Bumped when the content of ``state.pt`` changes incompatibly.
STATE_FORMAT = 3
SNAPSHOTS = "snapshots"


class NullWriter:
    """Writes nothing: for library use without ``out`` and for non-zero ranks."""

    #: Whether :meth:`state` keeps anything (building a resume state is skipped if not).
    saves_state = False

    def open(self) -> None:
        """Called once the run has checked everything and is about to write its first file."""

    def close(self, *, failed: bool) -> None:
        """Called when the run ends (``failed``: by an exception)."""

    def config(self, text: str) -> None:
        pass

    def epoch(self, record: dict[str, Any]) -> None:
        pass

    def level(self, level: int, state_dict: dict[str, torch.Tensor], masks: Masks) -> None:
        pass

    def final(self, state_dict: dict[str, torch.Tensor], masks: Masks) -> None:
        pass

    def snapshot(self, name: str, state_dict: dict[str, torch.Tensor]) -> str | None:
        return None

    def summary(self, summary: dict[str, Any]) -> None:
        pass

    def state(self, state: dict[str, Any]) -> None:
        pass

    def load_state(self, device: torch.device) -> dict[str, Any] | None:
        return None


class FollowerWriter(NullWriter):
    """The run folder at ``root`` as a rank other than 0 of a data-parallel run has it: rank 0
    writes and checks it; this one only reads the saved state back to resume."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def load_state(self, device: torch.device) -> dict[str, Any] | None:
        path = self.root / STATE_FILE
        return torch.load(path, map_location=device, weights_only=False) if path.exists() else None

    def read(self, relative: str, device: torch.device) -> Any:
        return read_tensors(self.root / relative, device)


def read_tensors(path: Path, device: torch.device) -> Any:
    """A tensor file incop wrote (only tensors and plain containers are unpickled)."""
    return torch.load(path, map_location=device, weights_only=True)


def run_writer(
    root: str | os.PathLike | None, *, mode: str = "new", main: bool = True
) -> NullWriter | None:
    """The writer of a run folder at ``root`` (None: no folder), on rank 0 (``main``) or on
    another rank of a data-parallel run."""
    if root is None:
        return None
    return RunWriter(root, mode=mode) if main else FollowerWriter(root)


class RunWriter(NullWriter):
    """Writes a run folder at ``root``, including ``state.pt``, the resume state of the last
    completed epoch.

    ``mode``: ``new`` (the folder must be absent or empty), ``overwrite`` (replaces an
    earlier run; refused if the folder holds files incop did not write) or ``resume`` (see
    :meth:`load_state`). The folder is checked here, without touching the disk; it is created
    and locked by :meth:`open`.
    """

    saves_state = True

    def __init__(self, root: str | os.PathLike, *, mode: str = "new") -> None:
        self.folder = OwnedFolder(root, RUN_LAYOUT, mode=mode, kind="run", marker=CONFIG_FILE)
        self.folder.check()
        self.root = self.folder.root
        self.lines = 0
        self._metrics_hash = hashlib.sha256()
        self.digests: dict[str, str] = {}

    def open(self) -> None:
        self.folder.open()

    def close(self, *, failed: bool) -> None:
        # A run that failed before its first epoch record leaves nothing behind.
        nothing_trained = self.lines == 0 and self.folder.mode != "resume"
        self.folder.close(discard=failed and nothing_trained)

    def config(self, text: str) -> None:
        self.digests[CONFIG_FILE] = atomic_write_text(self.root / CONFIG_FILE, text)

    def epoch(self, record: dict[str, Any]) -> None:
        line = (to_json(record) + "\n").encode()
        path = self.root / METRICS_FILE
        try:
            # One write call per line, flushed: a crash leaves at most a torn last line.
            with open(path, "ab") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise StorageError.from_os_error(exc, path, "writing") from None
        self._metrics_hash.update(line)
        self.lines += 1

    def level(self, level: int, state_dict: dict[str, torch.Tensor], masks: Masks) -> None:
        self._ticket(f"levels/{level}/checkpoint.pt", state_dict, masks)

    def final(self, state_dict: dict[str, torch.Tensor], masks: Masks) -> None:
        self._ticket("final/checkpoint.pt", state_dict, masks)

    def _ticket(self, relative: str, state_dict: dict[str, torch.Tensor], masks: Masks) -> None:
        self.digests[relative] = atomic_torch_save(
            self.root / relative,
            {
                "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
                "masks": {k: v.cpu() for k, v in masks.items()},
            },
        )

    def snapshot(self, name: str, state_dict: dict[str, torch.Tensor]) -> str:
        """Write weights the run rewinds to (theta_0, theta*, epoch K) once, under a new name
        (``snapshots/<name>.pt``, the name unique), so a state saved before still finds the
        file it refers to; returns the relative path for the state."""
        relative = f"{SNAPSHOTS}/{name}.pt"
        self.digests[relative] = atomic_torch_save(
            self.root / relative, {k: v.detach().cpu() for k, v in state_dict.items()}
        )
        return relative

    def read(self, relative: str, device: torch.device) -> Any:
        """A tensor file of this folder (its digest was checked by :meth:`load_state`)."""
        return read_tensors(self.root / relative, device)

    def _drop_snapshots(self, kept: set[str]) -> None:
        """Remove the snapshot files no saved state refers to any more."""
        for relative in [r for r in self.digests if r.startswith(f"{SNAPSHOTS}/")]:
            if relative not in kept:
                del self.digests[relative]
        folder = self.root / SNAPSHOTS
        for path in folder.glob("*.pt") if folder.is_dir() else []:
            if f"{SNAPSHOTS}/{path.name}" not in kept:
                path.unlink(missing_ok=True)

    def summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.root / "summary.json", to_json(summary, indent=2))

    def state(self, state: dict[str, Any]) -> None:
        """Save the resume state. ``state["snapshots"]`` maps names to the snapshot files it
        needs; once it is saved, the others are removed."""
        kept = set(state["snapshots"].values())
        files = {r: d for r, d in self.digests.items() if not r.startswith(f"{SNAPSHOTS}/")}
        files.update({r: self.digests[r] for r in kept})
        atomic_torch_save(
            self.root / STATE_FILE,
            {
                **state,
                "format": STATE_FORMAT,
                "metrics_lines": self.lines,
                "metrics_sha256": self._metrics_hash.hexdigest(),
                "files": files,
            },
        )
        self._drop_snapshots(kept)

    def load_state(self, device: torch.device) -> dict[str, Any] | None:
        """The saved resume state, after checking that every file it refers to is the one it
        was saved with; ``metrics.jsonl`` is cut back to the lines it had then (a torn or
        later line belongs to the epoch that was lost). Without ``state.pt`` (killed before
        the first save) the run starts again: every file but ``config.yaml`` is removed.

        Raises :class:`UserError` naming the file that is corrupt, missing or foreign."""
        path = self.root / STATE_FILE
        if not path.exists():
            clear(self.root, _PROGRESS)
            return None
        try:
            state = torch.load(path, map_location=device, weights_only=False)
        except Exception as exc:  # unpickling garbage can raise nearly anything
            raise UserError(
                f"resume: {path} is corrupt or truncated ({type(exc).__name__}); this run cannot"
                " be resumed, start it again with --overwrite"
            ) from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise UserError(
                f"resume: {path} was not written by this version of incop's run folder"
                f" (format {state.get('format') if isinstance(state, dict) else None!r},"
                f" expected {STATE_FORMAT})"
            )
        for relative, digest in state["files"].items():
            self._verify(relative, digest)
        kept = self._verified_metrics(state["metrics_lines"], state["metrics_sha256"])
        atomic_write_text(self.root / METRICS_FILE, b"".join(kept).decode())
        self.lines = len(kept)
        self._metrics_hash = hashlib.sha256(b"".join(kept))
        self.digests = dict(state["files"])
        # A snapshot written after the state was saved belongs to the epoch that was lost.
        self._drop_snapshots(set(state["snapshots"].values()))
        return state

    def _verify(self, relative: str, digest: str) -> None:
        path = self.root / relative
        if not path.is_file():
            raise UserError(
                f"resume: {path} is missing; {self.root / STATE_FILE} needs it, so this run"
                " cannot be resumed exactly"
            )
        if file_digest(path) != digest:
            raise UserError(
                f"resume: {path} is not the file {self.root / STATE_FILE} was saved with"
                " (changed, truncated or from another run); this run cannot be resumed exactly"
            )

    def _verified_metrics(self, lines: int, digest: str) -> list[bytes]:
        path = self.root / METRICS_FILE
        kept = path.read_bytes().splitlines(keepends=True)[:lines] if path.exists() else []
        complete = [line for line in kept if line.endswith(b"\n")]
        if len(complete) < lines or hashlib.sha256(b"".join(complete)).hexdigest() != digest:
            problem = "missing" if not path.exists() else "truncated, changed or from another run"
            raise UserError(
                f"resume: {path} is {problem}: {self.root / STATE_FILE} was saved after"
                f" {lines} lines of it; this run cannot be resumed exactly"
            )
        return complete


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
            raise UserError(
                f"{path}: line {i + 1} is not valid JSON; the file is corrupt"
            ) from None
    return records
