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
                                counters), and which snapshots it needs; its first line is
                                the SHA-256 of the rest
    manifest.json               every file incop wrote here, with its size and SHA-256
    .incop.lock                 held (flock) by the one process writing the folder

Nothing read back runs code: tensor files are loaded with ``weights_only=True``
(:func:`load_tensors`). ``state.pt`` also records the SHA-256 of ``config.yaml``, of every level
checkpoint and snapshot, and of the first ``metrics_lines`` lines of ``metrics.jsonl``, so a
resume either continues exactly the run those files describe or refuses,
naming the file that does not fit. No file ever holds NaN or Infinity: JSON
gets ``null`` for a non-finite number.

Only one process writes: in data-parallel training every rank but 0 gets a
:class:`NullWriter`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from incop.core.masks import Masks
from incop.engine.folders import (
    MANIFEST_FILE,
    Layout,
    OwnedFolder,
    file_digest,
)
from incop.errors import StorageError, UserError

#: The only non-tensor, non-container types a file incop reads back may hold. incop itself
#: writes none (its files hold tensors, numbers, strings, lists, tuples and dicts), so this is
#: empty; anything else in a file is refused before it is built.
SAFE_GLOBALS: list[Any] = []


def load_tensors(path: Path, device: torch.device | str | None = None, data: bytes | None = None):
    """A file of tensors and plain containers, as incop writes them (``data``: its bytes, if
    already read). Nothing in it runs: ``torch.load(weights_only=True)`` with
    :data:`SAFE_GLOBALS`; a file that would need any other type or function is refused with a
    :class:`UserError` naming the file and what it asked for, and so is a corrupt one."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            # An old pickle protocol warns; the content is what is checked.
            warnings.simplefilter("ignore", UserWarning)
            source = io.BytesIO(data) if data is not None else path
            return torch.load(source, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        asked = re.search(r"GLOBAL (\S+)", str(exc))
        if asked:
            raise UserError(
                f"{path} asks to build {asked[1]} on loading, which no file incop writes does:"
                " refused, nothing read from a folder runs code (if the folder is yours, start"
                " it again with --overwrite)"
            ) from None
        raise UserError(f"{path} is corrupt or truncated (UnpicklingError)") from None
    except OSError as exc:
        raise StorageError.from_os_error(exc, path, "reading") from None
    except Exception as exc:  # unpickling garbage can raise nearly anything
        raise UserError(f"{path} is corrupt or truncated ({type(exc).__name__})") from None


def torch_file(obj: Any):
    """A producer for :meth:`OwnedFolder.write`: ``torch.save(obj)`` into the given path."""

    def produce(tmp: Path) -> None:
        # Serialised in memory, then written by Python: a full disk then surfaces as
        # OSError(ENOSPC), never as torch's own writer's RuntimeError.
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        tmp.write_bytes(buffer.getvalue())

    return produce


#: ``state.pt`` starts with this, the SHA-256 of the rest and a newline; the rest is a
#: ``torch.save`` archive. So every byte a resume reads is checked (the archive's own CRCs are
#: not checked by torch).
STATE_MAGIC = b"incop-state sha256:"


def state_bytes(state: dict[str, Any]) -> bytes:
    """``state`` as ``state.pt`` holds it: the digest line, then the archive."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    return STATE_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def read_state_file(
    path: Path, device: torch.device | str | None = None, *, legacy: bool = True
) -> Any:
    """The content of a ``state.pt``: its digest checked, then loaded as :func:`load_tensors`
    does. A ``state.pt`` of an incop before digests (a bare archive) is loaded unchecked where
    ``legacy`` allows it, else refused."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StorageError.from_os_error(exc, path, "reading") from None
    if data.startswith(STATE_MAGIC):
        head = len(STATE_MAGIC)
        digest, payload = data[head : head + 64], data[head + 65 :]
        if data[head + 64 : head + 65] != b"\n" or (
            hashlib.sha256(payload).hexdigest().encode() != digest
        ):
            raise UserError(
                f"resume: {path} is corrupt, truncated or edited (its content does not match"
                " the digest it was written with); this run cannot be resumed exactly"
            )
        data = payload
    elif not legacy:
        raise UserError(f"resume: {path} lacks the digest line incop writes first; it was edited")
    return load_tensors(path, device, data)


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
#: The event files of ``--log tensorboard`` (TensorBoard names them).
TENSORBOARD_EVENTS = r"tensorboard/events\.out\.tfevents\.[A-Za-z0-9._-]+"
#: What ``incop run`` may write in its folder; ``--overwrite`` removes those of these that the
#: folder's manifest records, and nothing else.
RUN_LAYOUT = Layout(
    files=(
        r"config\.yaml",
        r"metrics\.jsonl",
        r"summary\.json",
        r"state\.pt",
        r"manifest\.json",
        r"limit\.json",
        r"limit\.csv",
        r"levels/\d+/checkpoint\.pt",
        r"final/checkpoint\.pt",
        r"snapshots/[a-z]+-\d+\.pt",
        r"metrics\.csv",
        TENSORBOARD_EVENTS,
    ),
    dirs=(r"levels", r"levels/\d+", r"final", r"snapshots", r"tensorboard"),
    appended=(r"metrics\.jsonl", TENSORBOARD_EVENTS),
)
#: Bumped when the content of ``state.pt`` changes incompatibly.
STATE_FORMAT = 3
SNAPSHOTS = "snapshots"
#: What ``state.pt`` holds, key -> the types its value may have (checked before a resume
#: changes anything, so a damaged or foreign state is one line, never a traceback).
STATE_KEYS: dict[str, tuple[type, ...]] = {
    "phase": (str,),
    "phase_state": (dict, type(None)),
    "level": (int,),
    "epoch": (int,),
    "config": (dict,),
    "model": (dict,),
    "optimizer": (dict, type(None)),
    "scheduler": (dict, type(None)),
    "scaler": (dict, type(None)),
    "masks": (dict,),
    "snapshots": (dict,),
    "best": (dict, type(None)),
    "levels": (list,),
    "clock": (dict,),
    "record": (dict, type(None)),
    "rule": (dict, type(None)),
    "epoch_counter": (int,),
    "threads": (int,),
    "generator": (torch.Tensor,),
    "torch_rng": (torch.Tensor,),
    "cuda_rng": (list, type(None)),
    "format": (int,),
    "metrics_lines": (int,),
    "metrics_sha256": (str,),
    "files": (dict,),
    "target": (float, type(None)),
    "limit": (dict, type(None)),
    "pruner": (dict, type(None)),
    "cost": (dict,),
}
#: Keys a state of an earlier incop may lack, or that only some runs have (checked when
#: present): ``pruner`` is the ``state_dict`` of a pruner that accumulates (movement scores);
#: ``cost``, the FLOPs counted so far.
OPTIONAL_STATE_KEYS = ("target", "limit", "pruner", "cost")
PHASES = ("warmup", "retrain", "done", "finetune")


def check_state(state: Any, path: Path) -> None:
    """Refuse, in one line naming ``path`` and the key, a resume state that lacks a key or
    holds a value of another type than incop writes there."""

    def refuse(problem: str) -> UserError:
        return UserError(
            f"resume: {path} {problem}; it was not written by this version of incop's run"
            " folder, or was edited: this run cannot be resumed (start it again with --overwrite)"
        )

    if not isinstance(state, dict):
        raise refuse(f"holds a {type(state).__name__}, not a resume state")
    if state.get("format") != STATE_FORMAT:
        raise refuse(f"has format {state.get('format')!r}, expected {STATE_FORMAT}")
    for key, types in STATE_KEYS.items():
        if key not in state:
            if key in OPTIONAL_STATE_KEYS:
                continue
            raise refuse(f"lacks the key {key!r}")
        value = state[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            allowed = " or ".join(t.__name__ for t in types)
            raise refuse(f"holds a {type(value).__name__} under {key!r}, where {allowed} belongs")
    if state["phase"] not in PHASES:
        raise refuse(f"holds the unknown phase {state['phase']!r}")
    for key in ("files", "snapshots"):
        for name, value in state[key].items():
            relative = name if key == "files" else value
            if not (isinstance(relative, str) and RUN_LAYOUT.names_file(relative)):
                raise refuse(f"names {relative!r} under {key!r}, not a file of a run folder")
    if not all(isinstance(d, str) for d in state["files"].values()):
        raise refuse("holds a digest under 'files' that is not a string")
    for name, value in state["masks"].items():
        if not (isinstance(value, tuple | list) and len(value) == 2 and torch.is_tensor(value[1])):
            raise refuse(f"holds a mask {name!r} that is not (shape, bits)")
    if not all(torch.is_tensor(v) for v in state["model"].values()):
        raise refuse("holds a model weight that is not a tensor")


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
        return read_state_file(path, device) if path.exists() else None

    def read(self, relative: str, device: torch.device) -> Any:
        return load_tensors(self.root / relative, device)


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
        self._metrics_bytes = 0
        self._metrics_hash = hashlib.sha256()
        self.digests: dict[str, str] = {}

    def open(self) -> None:
        self.folder.open()

    def close(self, *, failed: bool) -> None:
        # A run that failed before its first epoch record leaves nothing behind.
        nothing_trained = self.lines == 0 and self.folder.mode != "resume"
        self.folder.close(discard=failed and nothing_trained)

    def config(self, text: str) -> None:
        self.digests[CONFIG_FILE] = self.folder.write_bytes(CONFIG_FILE, text.encode())

    def epoch(self, record: dict[str, Any]) -> None:
        line = (to_json(record) + "\n").encode()
        self.folder.append(METRICS_FILE, line)
        self._metrics_hash.update(line)
        self._metrics_bytes += len(line)
        self.lines += 1

    def level(self, level: int, state_dict: dict[str, torch.Tensor], masks: Masks) -> None:
        self._ticket(f"levels/{level}/checkpoint.pt", state_dict, masks)

    def final(self, state_dict: dict[str, torch.Tensor], masks: Masks) -> None:
        self._ticket("final/checkpoint.pt", state_dict, masks)

    def _ticket(self, relative: str, state_dict: dict[str, torch.Tensor], masks: Masks) -> None:
        ticket = {
            "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
            "masks": {k: v.cpu() for k, v in masks.items()},
        }
        self.digests[relative] = self.folder.write(relative, torch_file(ticket))

    def snapshot(self, name: str, state_dict: dict[str, torch.Tensor]) -> str:
        """Write weights the run rewinds to (theta_0, theta*, epoch K) once, under a new name
        (``snapshots/<name>.pt``, the name unique), so a state saved before still finds the
        file it refers to; returns the relative path for the state."""
        relative = f"{SNAPSHOTS}/{name}.pt"
        weights = {k: v.detach().cpu() for k, v in state_dict.items()}
        self.digests[relative] = self.folder.write(relative, torch_file(weights))
        return relative

    def read(self, relative: str, device: torch.device) -> Any:
        """A tensor file of this folder (its digest was checked by :meth:`load_state`)."""
        return load_tensors(self.folder.path(relative), device)

    def _drop_snapshots(self, kept: set[str]) -> None:
        """Remove the snapshot files no saved state refers to any more (only those incop
        recorded writing: nothing else in ``snapshots/`` is touched)."""
        for relative in self.folder.files():
            if relative.startswith(f"{SNAPSHOTS}/") and relative not in kept:
                self.folder.unlink(relative)
                self.digests.pop(relative, None)

    def summary(self, summary: dict[str, Any]) -> None:
        self.folder.write_bytes("summary.json", to_json(summary, indent=2).encode())

    def state(self, state: dict[str, Any]) -> None:
        """Save the resume state. ``state["snapshots"]`` maps names to the snapshot files it
        needs; once it is saved, the others are removed."""
        kept = set(state["snapshots"].values())
        files = {r: d for r, d in self.digests.items() if not r.startswith(f"{SNAPSHOTS}/")}
        files.update({r: self.digests[r] for r in kept})
        self.folder.note(METRICS_FILE, self._metrics_bytes, self._metrics_hash.hexdigest())
        content = {
            **state,
            "format": STATE_FORMAT,
            "metrics_lines": self.lines,
            "metrics_sha256": self._metrics_hash.hexdigest(),
            "files": files,
        }
        self.folder.write(STATE_FILE, lambda tmp: tmp.write_bytes(state_bytes(content)))
        self._drop_snapshots(kept)

    def load_state(self, device: torch.device) -> dict[str, Any] | None:
        """The saved resume state, after checking it byte for byte (its own digest, and the
        manifest's record of it) and that every file it refers to is the one it was saved with;
        ``metrics.jsonl`` is cut back to the lines it had then (a torn or later line belongs to
        the epoch that was lost). Without ``state.pt`` (killed before the first save) the run
        starts again: every file incop wrote but ``config.yaml`` is removed.

        A folder written by an incop before manifests is taken up where its ``state.pt``
        checks: its files are then adopted into a new manifest.

        Raises :class:`UserError` naming the file that is corrupt, missing or foreign, before
        anything in the folder changes."""
        path = self.root / STATE_FILE
        if not path.exists():
            if self.folder.legacy:
                raise UserError(
                    f"resume: {self.root} was written by an older incop (no {MANIFEST_FILE})"
                    " and holds no state.pt to check its files against: it cannot be resumed;"
                    " move it away and start the run again"
                )
            self._start_again()
            return None
        if not self.folder.legacy:
            self.folder.verify(STATE_FILE)
        try:
            state = read_state_file(path, device, legacy=self.folder.legacy)
        except UserError as exc:
            message = str(exc).removeprefix("resume: ")
            raise UserError(
                f"resume: {message}; this run cannot be resumed, start it again with --overwrite"
            ) from None
        check_state(state, path)
        for relative, digest in state["files"].items():
            self._verify(relative, digest)
        kept = self._verified_metrics(state["metrics_lines"], state["metrics_sha256"])
        if self.folder.legacy:
            self.folder.adopt(RUN_LAYOUT.files_below(self.root))
        self.folder.write_bytes(METRICS_FILE, b"".join(kept))
        self.lines = len(kept)
        self._metrics_bytes = sum(len(line) for line in kept)
        self._metrics_hash = hashlib.sha256(b"".join(kept))
        self.digests = dict(state["files"])
        # A snapshot written after the state was saved belongs to the epoch that was lost.
        self._drop_snapshots(set(state["snapshots"].values()))
        return state

    def _start_again(self) -> None:
        """Remove every file of the run but ``config.yaml``; refuse, naming them, files there
        that incop did not write."""
        keep = (CONFIG_FILE, MANIFEST_FILE)
        progress = [r for r in RUN_LAYOUT.files_below(self.root) if r not in keep]
        foreign = [r for r in progress if not self.folder.owns(r)]
        if foreign:
            raise UserError(
                f"resume: {self.root} holds files incop did not write, or that changed since"
                f" ({', '.join(foreign)}); move them away, or start again with --overwrite"
            )
        for relative in progress:
            self.folder.unlink(relative)
        self.folder.flush()

    def _verify(self, relative: str, digest: str) -> None:
        path = self.folder.path(relative)
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
