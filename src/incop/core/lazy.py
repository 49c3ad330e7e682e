"""torch, imported on first use: what the modules a config reads use in its place, so that
``incop --help``, ``incop list`` and every refusal of bad input answer without importing torch
(about 2 s and 200 MB). Those modules import torch inside the functions that compute."""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def no_grad(fn: Callable[P, R]) -> Callable[P, R]:
    """``@torch.no_grad()`` that imports torch when ``fn`` is called, not when it is defined."""

    @functools.wraps(fn)
    def without_grad(*args: P.args, **kwargs: P.kwargs) -> R:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return without_grad


def exports(package: str, where: dict[str, tuple[str, ...]]) -> tuple[Callable, Callable]:
    """A package's ``__getattr__`` and ``__dir__`` (PEP 562) that import each name of
    ``where`` (module -> names) from its module on first use, so importing the package (or a
    torch-free module in it) does not import them all."""
    module_of = {name: module for module, names in where.items() for name in names}
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_of[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *module_of})

    return __getattr__, __dir__
