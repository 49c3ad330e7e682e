"""Output folders that incop owns: what it writes there, who may write, and what it may delete.

A :class:`Layout` lists, as regular expressions over paths relative to the
folder, the files and sub-folders incop may write. A :class:`Manifest`
(``manifest.json`` in the folder) records every file incop actually wrote there
with its size and SHA-256, before the file is renamed into place. Together they
are the one authority for ``--overwrite`` and for a restart: a file is incop's
only if the layout names it *and* the manifest holds its content, so a user's
file merely named like one of incop's is never removed. The manifest also lets a
reader check, byte for byte, that a file is the one incop wrote
(:meth:`OwnedFolder.verify`).

An :class:`OwnedFolder` is one such folder in use: it is checked read-only
before any work (:meth:`OwnedFolder.check`), created and locked only when the
first file is about to be written (:meth:`OwnedFolder.open`), written only
through its own methods (atomically, never through a symbolic link, never
outside the folder), and, if the work fails before anything worth keeping was
written, removed again (:meth:`OwnedFolder.close`). The lock is ``fcntl.flock``
on ``.incop.lock`` inside the folder: the kernel releases it when the process
dies, so a SIGKILL never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from incop.errors import StorageError, UserError

LOCK_FILE = ".incop.lock"
MANIFEST_FILE = "manifest.json"
#: The manifest's own format; bumped when its content changes incompatibly.
MANIFEST_FORMAT = 1
#: Temporary files of an interrupted atomic write: ``.<name>.<8 random characters>.tmp``
#: beside the file ``<name>`` (see :func:`atomic_path`).
TMP_PATTERN = re.compile(r"(?:(?P<dir>.+)/)?\.(?P<name>[^/]+)\.[a-z0-9_]{8}\.tmp")
#: How many unexpected entries an error message names before summarising the rest.
_SHOWN = 5
_EMPTY = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Layout:
    """What incop may write in a folder: ``files`` and ``dirs`` are regular expressions matched
    against whole relative POSIX paths (``levels/3/checkpoint.pt``); ``appended``: the files
    among them that grow by appending (their recorded content is a prefix)."""

    files: tuple[str, ...]
    dirs: tuple[str, ...] = ()
    appended: tuple[str, ...] = ()

    def nested(self, prefix: str) -> Layout:
        """This layout placed in every sub-folder matching the regular expression ``prefix``."""
        return Layout(
            tuple(f"{prefix}/(?:{f})" for f in self.files),
            (prefix, *(f"{prefix}/(?:{d})" for d in self.dirs)),
            tuple(f"{prefix}/(?:{f})" for f in self.appended),
        )

    def __add__(self, other: Layout) -> Layout:
        return Layout(
            self.files + other.files, self.dirs + other.dirs, self.appended + other.appended
        )

    def names_file(self, relative: str) -> bool:
        return any(re.fullmatch(p, relative) for p in self.files)

    def names_dir(self, relative: str) -> bool:
        return any(re.fullmatch(p, relative) for p in self.dirs)

    def is_appended(self, relative: str) -> bool:
        return any(re.fullmatch(p, relative) for p in self.appended)

    def files_below(self, root: Path) -> list[str]:
        """The files below ``root`` that this layout names (links not followed), sorted."""
        return sorted(
            r
            for r, is_dir in _entries(root)
            if not is_dir and not (root / r).is_symlink() and self.names_file(r)
        )

    def names_leftover(self, relative: str) -> bool:
        """``relative`` is the lock, or a temporary file of an atomic write of a file incop
        writes here (left by a killed process)."""
        if relative == LOCK_FILE or relative.endswith("/" + LOCK_FILE):
            return True
        match = TMP_PATTERN.fullmatch(relative)
        if match is None:
            return False
        target = f"{match['dir']}/{match['name']}" if match["dir"] else match["name"]
        return self.names_file(target) or PurePosixPath(target).name == MANIFEST_FILE


def file_digest(path: Path, size: int | None = None) -> str:
    """SHA-256 of the file at ``path`` (of its first ``size`` bytes, if given)."""
    digest = hashlib.sha256()
    left = size
    with open(path, "rb") as handle:
        while left is None or left > 0:
            block = handle.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
    return digest.hexdigest()


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
    try:
        # mkstemp makes the file private (0600); results are meant to be shared like any file.
        os.chmod(tmp, 0o644)
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise StorageError.from_os_error(exc, path, "writing") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def symlinks_below(root: Path) -> list[str]:
    """Every symbolic link below ``root`` (not followed), as sorted relative paths."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in (*dirnames, *filenames):
            if (here / name).is_symlink():
                found.append((here / name).relative_to(root).as_posix())
    return sorted(found)


def _entries(root: Path) -> Iterable[tuple[str, bool]]:
    """Every path below ``root`` as ``(relative posix path, is_dir)``, children before parents;
    links are not followed (a link is reported as a file)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        here = Path(dirpath)
        for name in filenames:
            yield (here / name).relative_to(root).as_posix(), False
        for name in dirnames:
            path = here / name
            yield path.relative_to(root).as_posix(), not path.is_symlink()


def _describe(paths: list[str]) -> str:
    shown = ", ".join(paths[:_SHOWN])
    more = len(paths) - _SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


class Manifest:
    """``manifest.json`` of a folder: every file incop wrote there, as relative path -> the
    ``(size, sha256)`` contents it may have (two while a new content is being renamed in, so a
    kill at any moment leaves a file the manifest accounts for). An appended file's recorded
    content is a prefix: bytes after it are a torn last append of incop's own."""

    def __init__(self, root: Path, entries: dict[str, list[list]] | None = None) -> None:
        self.root = root
        self.entries: dict[str, list[list]] = entries or {}

    @classmethod
    def read(cls, root: Path) -> Manifest | None:
        """The manifest of ``root``; None where it has none. A manifest that is not incop's
        JSON is refused, naming it."""
        path = root / MANIFEST_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_bytes())
            entries = data["files"]
            assert data.get("format") == MANIFEST_FORMAT and isinstance(entries, dict)
            for relative, versions in entries.items():
                _check_relative(relative)
                assert isinstance(versions, list) and versions
                for size, digest in versions:
                    assert isinstance(size, int) and size >= 0
                    assert isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)
        except (ValueError, KeyError, TypeError, AssertionError, UnicodeDecodeError):
            raise UserError(
                f"{path} is not a manifest incop wrote (corrupt or edited); incop cannot tell"
                " its own files in this folder from yours"
            ) from None
        return cls(root, entries)

    def flush(self) -> None:
        data = {"format": MANIFEST_FORMAT, "files": dict(sorted(self.entries.items()))}
        with atomic_path(self.root / MANIFEST_FILE) as tmp:
            tmp.write_text(json.dumps(data, indent=1))

    def expect(self, relative: str, size: int, digest: str) -> None:
        """Record that ``relative`` is about to hold this content (its earlier one stays valid
        until :meth:`settle`); saved at once."""
        versions = [v for v in self.entries.get(relative, [])[-1:] if v != [size, digest]]
        self.entries[relative] = [*versions, [size, digest]]
        self.flush()

    def settle(self, relative: str) -> None:
        """The last expected content of ``relative`` is now in place (saved with the next
        change)."""
        self.entries[relative] = self.entries[relative][-1:]

    def forget(self, relative: str) -> None:
        self.entries.pop(relative, None)

    def holds(self, relative: str, *, appended: bool = False) -> bool:
        """Whether the file ``relative`` has a content recorded here (for an appended file: a
        recorded content is its prefix)."""
        path = self.root / relative
        if relative not in self.entries or path.is_symlink() or not path.is_file():
            return False
        size = path.stat().st_size
        for recorded, digest in self.entries[relative]:
            if appended and size >= recorded and file_digest(path, recorded) == digest:
                return True
            if size == recorded and file_digest(path) == digest:
                return True
        return False


def _check_relative(relative: str) -> None:
    """``relative`` must be a plain path inside the folder: no ``..``, not absolute."""
    parts = PurePosixPath(relative).parts
    if (
        not isinstance(relative, str)
        or not parts
        or relative.startswith("/")
        or any(p in ("..", ".", "") for p in parts)
        or "\\" in relative
        or "\x00" in relative
    ):
        raise UserError(f"{relative!r} is not a path inside the folder")


def manifests(root: Path, layout: Layout) -> dict[str, Manifest]:
    """The manifests of ``root`` and of the folders nested in it that the layout names as
    holding one (a comparison's run folders), keyed by the folder's relative path (``""``:
    ``root``)."""
    found = {}
    for relative, is_dir in _entries(root):
        nested = relative.endswith("/" + MANIFEST_FILE)
        if not is_dir and (relative == MANIFEST_FILE or (nested and layout.names_file(relative))):
            folder = relative[: -len(MANIFEST_FILE)].rstrip("/")
            manifest = Manifest.read(root / folder if folder else root)
            if manifest is not None:
                found[folder] = manifest
    return found


def owned_by_manifests(found: dict[str, Manifest], relative: str, layout: Layout) -> bool:
    """Whether a manifest of ``found`` (``relative``'s own folder's or an enclosing one's)
    holds the file ``relative``, which the layout names."""
    if not layout.names_file(relative):
        return False
    appended = layout.is_appended(relative)
    for folder, manifest in found.items():
        if folder == "" or relative.startswith(folder + "/"):
            inner = relative[len(folder) + 1 :] if folder else relative
            if inner == MANIFEST_FILE or manifest.holds(inner, appended=appended):
                return True
    return False


def foreign_entries(root: Path, layout: Layout) -> list[str]:
    """Paths below ``root`` that incop did not write, sorted: files no manifest holds (or the
    layout does not name), folders the layout does not name, and every symbolic link. A
    foreign folder is reported once, not every file inside it."""
    found = manifests(root, layout)
    foreign = []
    for relative, is_dir in _entries(root):
        path = root / relative
        if path.is_symlink():
            foreign.append(relative)
        elif is_dir:
            if not layout.names_dir(relative):
                foreign.append(relative + "/")
        elif not (layout.names_leftover(relative) or owned_by_manifests(found, relative, layout)):
            foreign.append(relative)
    dirs = [f for f in foreign if f.endswith("/")]
    return sorted(f for f in foreign if not any(f != d and f.startswith(d) for d in dirs))


class FolderLock:
    """An exclusive ``flock`` on ``<folder>/.incop.lock``, held until :meth:`release` or exit."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise StorageError.from_os_error(exc, self.path, "locking") from None
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
    """A folder incop writes, taken in one of four ``mode``\\ s:

    ``new``: the folder must not exist, be empty, or hold only what a start of incop's that
    was killed before its first file left; ``overwrite``: it may hold an earlier result, which
    is removed, but nothing incop did not write; ``resume``: it must hold ``marker`` (the file
    that says a result is there); ``update``: like ``resume``, for adding files to a finished
    result (a report).

    ``kind`` names the result in messages (``run``, ``comparison``). Every file is written
    through :meth:`write` or :meth:`append`, which record it in the folder's manifest first.
    """

    MODES = ("new", "overwrite", "resume", "update")

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
        self.manifest: Manifest | None = None
        #: Folders this process made, deepest first: removed again when a start fails.
        self.created: list[Path] = []

    # --- taking the folder ------------------------------------------------------------------

    def check(self) -> None:
        """Refuse, without touching the disk, a folder this mode may not take."""
        root, kind = self.root, self.kind
        if "\x00" in str(root):
            raise UserError(f"out: {str(root)!r} holds a NUL character; no folder can be named so")
        if root.exists() and not root.is_dir():
            raise UserError(f"out: {str(root)!r} is a file, not a folder")
        if not root.exists():
            if self.mode in ("resume", "update"):
                raise UserError(f"{self.mode}: {str(root)!r} does not exist")
            _check_creatable(root)
            return
        if not os.access(root, os.W_OK | os.X_OK):
            raise UserError(f"out: cannot write in {str(root)!r}: permission denied")
        links = symlinks_below(root)
        if links:
            raise UserError(
                f"out: {str(root)!r} holds symbolic links ({_describe(links)}); incop never"
                " writes or deletes through a link: remove them or choose another --out"
            )
        holds = (root / self.marker).exists()
        if self.mode in ("resume", "update"):
            if not holds:
                raise UserError(
                    f"{self.mode}: {str(root)!r} holds no {kind} (no {self.marker} there)"
                )
            Manifest.read(root)  # a damaged manifest is refused before any work
            return
        foreign = foreign_entries(root, self.layout)
        if self.mode == "new":
            if holds:
                raise UserError(
                    f"out: {str(root)!r} already holds a {kind}; pass --resume {root} to"
                    " continue it, --overwrite to replace it, or choose another --out"
                )
            if foreign:
                raise UserError(
                    f"out: {str(root)!r} is not empty (it holds {_describe(foreign)}); choose"
                    f" a new or empty folder, or --overwrite to replace an earlier {kind}"
                )
        elif foreign:
            raise UserError(
                f"out: --overwrite refused: {str(root)!r} holds files incop did not write"
                f" ({_describe(foreign)}); move them away or choose another --out"
            )

    def open(self) -> None:
        """Create the folder, take the lock, check again under it, and clear an earlier result
        (``overwrite``; ``new`` where a killed start of incop's left its own files) or the
        leftovers of a killed write (``resume``, ``update``)."""
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
            if self.mode in ("new", "overwrite"):
                self._clear()
                self.manifest = Manifest(self.root)
                self.manifest.flush()
            else:
                self.remove_leftovers()
                self.manifest = Manifest.read(self.root)
        except BaseException:
            self.close(discard=bool(self.created))
            raise

    @property
    def legacy(self) -> bool:
        """Opened on a folder an incop without manifests wrote (see :meth:`adopt`)."""
        return self.lock is not None and self.manifest is None

    def adopt(self, relatives: Iterable[str]) -> None:
        """Take the files ``relatives`` of a folder written before manifests existed as incop's
        (the caller has checked them against digests of its own), and start the manifest."""
        manifest = Manifest(self.root)
        for relative in relatives:
            path = self.root / relative
            manifest.entries[relative] = [[path.stat().st_size, file_digest(path)]]
        manifest.flush()
        self.manifest = manifest

    def close(self, *, discard: bool = False) -> None:
        """Release the lock; ``discard``: also remove everything incop wrote here, and the folder
        itself if this process created it (a start that failed leaves nothing behind)."""
        if discard and self.manifest is not None and self.root.is_dir():
            self._clear(owned_only=True)
            (self.root / MANIFEST_FILE).unlink(missing_ok=True)
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

    def _clear(self, *, owned_only: bool = False) -> None:
        """Remove every file and folder incop wrote below the root (not the lock). Without
        ``owned_only`` the caller has checked that nothing else is there."""
        found = manifests(self.root, self.layout) if owned_only else {}
        for relative, is_dir in list(_entries(self.root)):
            path = self.root / relative
            if is_dir:
                if self.layout.names_dir(relative) and not any(path.iterdir()):
                    path.rmdir()
            elif relative == LOCK_FILE or relative == MANIFEST_FILE:
                continue
            elif (
                not owned_only
                or self.layout.names_leftover(relative)
                or (owned_by_manifests(found, relative, self.layout))
            ):
                path.unlink()
        (self.root / MANIFEST_FILE).unlink(missing_ok=True)

    def remove_leftovers(self) -> list[Path]:
        """Delete temporary files of atomic writes a killed process never renamed; return them."""
        removed = []
        for relative, is_dir in list(_entries(self.root)):
            if not is_dir and TMP_PATTERN.fullmatch(relative):
                if self.layout.names_leftover(relative):
                    (self.root / relative).unlink(missing_ok=True)
                    removed.append(self.root / relative)
        return removed

    # --- reading and writing ----------------------------------------------------------------

    def path(self, relative: str) -> Path:
        """The path of ``relative``, a file incop writes here: refused if it is not one the
        layout names, or leads outside the folder or through a link."""
        _check_relative(relative)
        if not self.layout.names_file(relative):
            raise UserError(
                f"{self.root}: {relative!r} is not a file incop writes in a {self.kind}"
            )
        here = self.root
        for part in PurePosixPath(relative).parts:
            here = here / part
            if here.is_symlink():
                raise UserError(
                    f"{here} is a symbolic link; incop never reads, writes or deletes through one"
                )
        return here

    def write(self, relative: str, produce: Callable[[Path], None]) -> str:
        """Write the file ``relative`` atomically: ``produce(tmp)`` writes the content to a
        temporary path, whose size and digest the manifest records before it is renamed into
        place. Returns the SHA-256."""
        path = self.path(relative)
        with atomic_path(path) as tmp:
            produce(tmp)
            digest = file_digest(tmp)
            self._manifest().expect(relative, tmp.stat().st_size, digest)
        self._manifest().settle(relative)
        return digest

    def write_bytes(self, relative: str, data: bytes) -> str:
        return self.write(relative, lambda tmp: tmp.write_bytes(data))

    def append(self, relative: str, data: bytes) -> None:
        """Append ``data`` to ``relative`` in one write call, flushed: a crash leaves at most a
        torn last append. The manifest holds a prefix (see :meth:`note`)."""
        path = self.path(relative)
        manifest = self._manifest()
        if relative not in manifest.entries:
            manifest.expect(relative, 0, _EMPTY)
        try:
            with open(path, "ab") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise StorageError.from_os_error(exc, path, "writing") from None

    def note(self, relative: str, size: int, digest: str) -> None:
        """Record that the appended file ``relative`` now starts with ``size`` bytes of this
        digest (saved with the next write)."""
        self._manifest().entries[relative] = [[size, digest]]

    def unlink(self, relative: str) -> None:
        """Remove the file ``relative``, which the manifest must hold: a file of someone else's
        that took its place is refused, naming it, and kept."""
        path = self.path(relative)
        if path.exists():
            if not self.owns(relative):
                raise UserError(
                    f"{path} is not the file incop wrote there (changed or replaced); incop"
                    " does not delete it: move it away, then run again"
                )
            path.unlink()
        self._manifest().forget(relative)

    def owns(self, relative: str) -> bool:
        """Whether ``relative`` is a file incop wrote here, as the manifest recorded it."""
        manifest = self._manifest()
        return self.layout.names_file(relative) and manifest.holds(
            relative, appended=self.layout.is_appended(relative)
        )

    def verify(self, relative: str, *, needed_by: str | None = None) -> Path:
        """The path of ``relative`` after checking it is byte for byte the file incop wrote;
        else :class:`UserError` naming it (``needed_by``: who needs it, for the message)."""
        path = self.path(relative)
        who = f"; {needed_by} needs it" if needed_by else ""
        if not path.is_file():
            raise UserError(f"{path} is missing{who}")
        if not self.owns(relative):
            raise UserError(
                f"{path} is not the file incop wrote there (changed, truncated, swapped or from"
                f" another {self.kind}){who}"
            )
        return path

    def files(self) -> list[str]:
        """Every file the manifest records, sorted."""
        return sorted(self._manifest().entries)

    def record(self, relative: str, versions: list[list]) -> None:
        """Record ``relative`` (written by a nested writer) with these contents (saved with the
        next write, or :meth:`flush`)."""
        self._manifest().entries[relative] = [list(v) for v in versions[-1:]]

    def flush(self) -> None:
        self._manifest().flush()

    def _manifest(self) -> Manifest:
        if self.manifest is None:
            raise RuntimeError(f"{self.root} is not open for writing (or not yet adopted)")
        return self.manifest


def _check_creatable(root: Path) -> None:
    """The nearest existing ancestor of ``root`` must be a writable folder."""
    parent = root.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"out: cannot create {str(root)!r}: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"out: cannot create {str(root)!r}: {str(parent)!r} is not writable")
