"""Name -> factory tables, so adding a model, dataset, pruner or stopping rule is one entry."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from incop.errors import UserError

T = TypeVar("T")


def closest(name: str, valid: list[str]) -> str:
    """' (did you mean X?)' for the nearest valid name, or '' when none is close."""
    match = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


#: Bumped by every registration anywhere: what is computed from the registries' contents
#: (the settings of a run) is cached per generation.
generation = 0


class Registry(Generic[T]):
    """A table of named entries of one kind (``kind`` is used in error messages).

    ``builtins``: the module whose import registers the built-in entries, where they live in a
    layer above the registry's users (the loggers, in the engine, which a config checks
    names against); it is imported on the first lookup, so every caller sees them."""

    def __init__(self, kind: str, builtins: str | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}
        self._builtins = builtins

    def _load(self) -> None:
        if self._builtins is not None:
            module, self._builtins = self._builtins, None
            importlib.import_module(module)

    def register(self, name: str, help: str = "") -> Callable[[T], T]:
        """Decorator adding ``entry`` as ``name``; ``help`` is its one-line description."""

        def add(entry: T) -> T:
            global generation
            self._load()  # a built-in's name is taken before any of the user's
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            self._help[name] = help
            generation += 1
            return entry

        return add

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            valid = self.names()
            hint = closest(str(name), valid)
            message = f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(valid)}"
            raise UserError(message) from None

    def help(self, name: str) -> str:
        """The one-line description ``name`` was registered with ('' if none)."""
        self._load()
        return self._help.get(name, "")

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries
