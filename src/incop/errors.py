"""Errors a user can act on. The command line prints them as one line, without a traceback:
exit status 2 for a :class:`UserError` (a bad value, name or file), 1 for a
:class:`StorageError` (the disk or the file system failed us)."""

from __future__ import annotations

import os


class UserError(ValueError):
    """A bad value, name or file supplied by the user; the message says what is allowed."""


class DataError(UserError):
    """Dataset files missing, truncated or corrupt."""


class StorageError(RuntimeError):
    """Writing to the disk failed (full, read-only, permission denied); the message names the
    path and the cause. What was written before stays consistent, so a run can be resumed once
    the cause is fixed."""

    @classmethod
    def from_os_error(cls, exc: OSError, path: str | os.PathLike, doing: str) -> StorageError:
        cause = (exc.strerror or str(exc)).lower() if exc.errno else str(exc)
        return cls(f"{cause} while {doing} {path}")
