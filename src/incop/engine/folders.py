"""Output folders that incop owns: what it writes there, who may write, and what it may delete.

A :class:`Layout` lists, as regular expressions over paths relative to the
folder, the files and sub-folders incop itself writes. It is the one authority
for ``--overwrite`` (which removes only those, and refuses a folder holding
anything else) and for telling a folder that is safe to take over from one that
holds a user's files.

An :class:`OwnedFolder` is one such folder in use: it is checked read-only
before any work (:meth:`OwnedFolder.check`), created and locked only when the
first file is about to be written (:meth:`OwnedFolder.open`), and, if the work
fails before anything worth keeping was written, removed again
(:meth:`OwnedFolder.close`). The lock is ``fcntl.flock`` on ``.incop.lock``
inside the folder: the kernel releases it when the process dies, so a SIGKILL
never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from incop.errors import StorageError, UserError

LOCK_FILE = ".incop.lock"
#: The lock of a folder and of every folder nested in it (a comparison's run folders).
LOCK_PATTERN = r"(?:.+/)?\.incop\.lock"
#: Temporary files of an interrupted atomic write (see :func:`incop.engine.outputs.atomic_path`).
TMP_PATTERN = r"(?:.+/)?\.[^/]+\.tmp"
#: How many unexpected entries an error message names before summarising the rest.
_SHOWN = 5


@dataclass(frozen=True)
class Layout:
    """What incop writes in a folder: ``files`` and ``dirs`` are regular expressions matched
    against whole relative POSIX paths (``levels/3/checkpoint.pt``)."""

    files: tuple[str, ...]
    dirs: tuple[str, ...] = ()

    def nested(self, prefix: str) -> Layout:
        """This layout placed in every sub-folder matching the regular expression ``prefix``."""
        return Layout(
            tuple(f"{prefix}/(?:{f})" for f in self.files),
            (prefix, *(f"{prefix}/(?:{d})" for d in self.dirs)),
        )

    def __add__(self, other: Layout) -> Layout:
        return Layout(self.files + other.files, self.dirs + other.dirs)

    def owns_file(self, relative: str) -> bool:
        return any(re.fullmatch(p, relative) for p in (*self.files, LOCK_PATTERN, TMP_PATTERN))

    def owns_dir(self, relative: str) -> bool:
        return any(re.fullmatch(p, relative) for p in self.dirs)


def _entries(root: Path) -> Iterable[tuple[str, bool]]:
    """Every path below ``root`` as ``(relative posix path, is_dir)``, children before parents."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        here = Path(dirpath)
        for name in filenames:
            yield (here / name).relative_to(root).as_posix(), False
        for name in dirnames:
            path = here / name
            # A link to a folder is not walked into; it is the user's, not ours.
            yield path.relative_to(root).as_posix(), not path.is_symlink()


def foreign_entries(root: Path, layout: Layout) -> list[str]:
    """Paths below ``root`` that incop did not write (a folder counts if it is not in the
    layout, whatever it holds), sorted."""
    found = []
    for relative, is_dir in _entries(root):
        owned = layout.owns_dir(relative) if is_dir else layout.owns_file(relative)
        if not owned:
            found.append(relative + ("/" if is_dir else ""))
    # Report a foreign folder once, not every file inside it.
    dirs = [f for f in found if f.endswith("/")]
    return sorted(f for f in found if not any(f != d and f.startswith(d) for d in dirs))


def _describe(paths: list[str]) -> str:
    shown = ", ".join(paths[:_SHOWN])
    more = len(paths) - _SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def remove_tmp_files(root: Path) -> list[Path]:
    """Delete leftovers of atomic writes that a killed process never renamed; return them."""
    removed = []
    for relative, is_dir in list(_entries(root)):
        if not is_dir and re.fullmatch(TMP_PATTERN, relative):
            (root / relative).unlink(missing_ok=True)
            removed.append(root / relative)
    return removed


def clear(root: Path, layout: Layout) -> None:
    """Remove everything ``layout`` says incop wrote below ``root`` (not the lock, not ``root``);
    the caller has checked that nothing else is there."""
    for relative, is_dir in list(_entries(root)):
        path = root / relative
        if is_dir and layout.owns_dir(relative):
            if not any(path.iterdir()):
                path.rmdir()
        elif not is_dir and relative != LOCK_FILE and layout.owns_file(relative):
            path.unlink()


class FolderLock:
    """An exclusive ``flock`` on ``<folder>/.incop.lock``, held until :meth:`release` or exit."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise UserError(
                f"out: another incop process is using {str(folder)!r}; wait for it to finish,"
                " or choose another --out"
            ) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class OwnedFolder:
    """A folder incop writes, taken in one of three ``mode``\\ s:

    ``new``: the folder must not exist or be empty; ``overwrite``: it may hold an earlier
    result, which is removed, but nothing incop did not write; ``resume``: it must hold
    ``marker`` (the file that says a result is there).

    ``kind`` names the result in messages (``run``, ``comparison``).
    """

    MODES = ("new", "overwrite", "resume")

    def __init__(
        self, root: str | os.PathLike, layout: Layout, *, mode: str, kind: str, marker: str
    ):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.root = Path(root)
        self.layout = layout
        self.mode = mode
        self.kind = kind
        self.marker = marker
        self.lock: FolderLock | None = None
        #: Folders this process made, deepest first: removed again when a start fails.
        self.created: list[Path] = []

    def check(self) -> None:
        """Refuse, without touching the disk, a folder this mode may not take."""
        root, kind = self.root, self.kind
        if root.exists() and not root.is_dir():
            raise UserError(f"out: {str(root)!r} is a file, not a folder")
        if not root.exists():
            if self.mode == "resume":
                raise UserError(f"resume: {str(root)!r} does not exist")
            _check_creatable(root)
            return
        if not os.access(root, os.W_OK | os.X_OK):
            raise UserError(f"out: cannot write in {str(root)!r}: permission denied")
        holds = (root / self.marker).exists()
        if self.mode == "resume":
            if not holds:
                raise UserError(f"resume: {str(root)!r} holds no {kind} (no {self.marker} there)")
            return
        foreign = foreign_entries(root, self.layout)
        if self.mode == "new":
            if holds:
                raise UserError(
                    f"out: {str(root)!r} already holds a {kind}; pass --resume {root} to"
                    " continue it, --overwrite to replace it, or choose another --out"
                )
            present = sorted(p.relative_to(root).as_posix() for p in root.iterdir())
            present = [p for p in present if p != LOCK_FILE]
            if present:
                raise UserError(
                    f"out: {str(root)!r} is not empty (it holds {_describe(present)}); choose a"
                    f" new or empty folder, or --overwrite to replace an earlier {kind}"
                )
        elif foreign:
            raise UserError(
                f"out: --overwrite refused: {str(root)!r} holds files incop did not write"
                f" ({_describe(foreign)}); move them away or choose another --out"
            )

    def open(self) -> None:
        """Create the folder, take the lock, check again under it, and clear an earlier result
        (``overwrite``) or the leftovers of a killed write (``resume``)."""
        self.check()
        missing = [p for p in (self.root, *self.root.parents) if not p.exists()]
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.root, "creating") from None
        self.created = missing
        self.lock = FolderLock(self.root)
        try:
            # Another process may have written between the first check and the lock.
            self.check()
            if self.mode == "overwrite":
                clear(self.root, self.layout)
            elif self.mode == "resume":
                remove_tmp_files(self.root)
        except BaseException:
            self.close(discard=bool(self.created))
            raise

    def close(self, *, discard: bool = False) -> None:
        """Release the lock; ``discard``: also remove everything incop wrote here, and the folder
        itself if this process created it (a start that failed leaves nothing behind)."""
        if discard and self.root.is_dir():
            clear(self.root, self.layout)
            if self.created and set(os.listdir(self.root)) <= {LOCK_FILE}:
                (self.root / LOCK_FILE).unlink(missing_ok=True)
                for folder in self.created:
                    try:
                        folder.rmdir()
                    except OSError:  # something else was put there meanwhile: keep it
                        break
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _check_creatable(root: Path) -> None:
    """The nearest existing ancestor of ``root`` must be a writable folder."""
    parent = root.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"out: cannot create {str(root)!r}: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"out: cannot create {str(root)!r}: {str(parent)!r} is not writable")
