"""Errors a user can fix. The command line prints them without a traceback and exits 2."""

from __future__ import annotations


class UserError(ValueError):
    """A bad value, name or file supplied by the user; the message says what is allowed."""


class DataError(UserError):
    """Dataset files missing, truncated or corrupt."""
