"""Components and their options: the frame every pruner, stopping rule, warm-up stop, score
and logger is built on, so that adding one is one file.

A component is a class registered under a name (:class:`incop.core.registry.Registry`) with

- ``Options``: a dataclass of its settings. Each field is made with :func:`option`, which
  records its one-line help and, where the values are names, the allowed ones. Its
  ``check()`` returns one line per bad value. The field names are the run's setting names:
  the YAML keys, the ``--flags`` (``_`` written ``-``) and the ``incop.prune`` keywords.
  Two components may share a setting (``eps`` of the flow rules) by declaring the same name
  with the same type and default.
- ``from_options(options, config)``: the component built from its options; ``config`` is
  the whole run's (read-only), for the settings of other sections (``max_epochs``...).
- ``check_config(config)`` (optional): the problems of settings that span sections.

See CONTRIBUTING.md for a component written out in full.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from incop.core.registry import closest

#: Allowed values: a fixed list, or a function giving it (for registries filled later).
Choices = Sequence[str] | Callable[[], Sequence[str]] | None


def option(
    default: Any,
    help: str,
    *,
    choices: Choices = None,
    checked: bool = True,
    words: tuple[str, ...] = (),
) -> Any:
    """A field of an ``Options`` dataclass: its default (a list is copied per instance), its
    one-line ``help`` for ``--help`` and the docs, and, for names, the allowed ``choices``
    (a value outside them is refused, unless ``checked`` is false: the options' own
    ``check()`` then judges values the list only describes, such as ``epoch:K``). ``words``:
    the words a number field also takes (``auto``; ``limit``), kept as they are written."""
    metadata = {"help": help, "choices": choices, "checked": checked, "words": words}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class NoOptions:
    """The options of a component that has none."""

    def check(self) -> list[str]:
        """One line per bad value (field, value, what is allowed); empty when all is well."""
        return []


class Component:
    """What every registered component provides; subclasses override what they need."""

    Options: ClassVar[type] = NoOptions

    @classmethod
    def from_options(cls, options: Any, config: Any) -> Any:
        """The component built from its ``options`` (an ``Options`` instance) and the run's
        ``config``."""
        return cls()

    @classmethod
    def check_config(cls, config: Any) -> list[str]:
        """Problems of this component's settings together with other sections' (one line each)."""
        return []


def not_allowed(name: str, value: Any, allowed: str) -> str:
    """The one-line refusal of a bad value: ``name: value is not allowed; allowed``."""
    return f"{name}: {value!r} is not allowed; {allowed}"


def unknown_value(name: str, value: Any, allowed: Sequence[str]) -> str:
    """The one-line refusal of a name that is not among ``allowed`` (with the closest one)."""
    return (
        f"{name}: unknown value {value!r}{closest(str(value), list(allowed))};"
        f" allowed: {', '.join(allowed)}"
    )


def in_range(name: str, value: int, low: int, high: int) -> list[str]:
    """``[]`` if ``low <= value <= high``, else the one-line refusal."""
    return [] if low <= value <= high else [not_allowed(name, value, f"must be in {low}..{high}")]


@dataclass(frozen=True)
class OptionSpec:
    """One setting of a run, as an ``Options`` field declares it. ``kind``: int, float, bool,
    str or list (Optional unwrapped); ``optional``: None is allowed; ``owners``:
    ``(kind of component, name)`` of each component declaring it, empty for a section's."""

    name: str
    kind: type
    optional: bool
    default_value: Any
    help: str
    choices: Choices
    owners: tuple[tuple[str, str], ...] = ()
    checked: bool = True
    words: tuple[str, ...] = ()

    def default(self) -> Any:
        """A fresh copy of the default (lists are never shared)."""
        return (
            list(self.default_value)
            if isinstance(self.default_value, list)
            else (self.default_value)
        )

    def allowed(self) -> list[str] | None:
        """The allowed values, for names; None for anything else."""
        choices = self.choices() if callable(self.choices) else self.choices
        return list(choices) if choices is not None else None


def specs_of(options: type, owner: tuple[str, str] | None = None) -> list[OptionSpec]:
    """The settings an ``Options`` dataclass declares, in its field order."""
    hints = typing.get_type_hints(options)
    specs = []
    for f in dataclasses.fields(options):
        if not f.init:
            continue
        hint = hints[f.name]
        optional = False
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            optional = len(args) < len(typing.get_args(hint))
            hint = args[0]
        kind = typing.get_origin(hint) or hint
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = f.default
        specs.append(
            OptionSpec(
                f.name,
                kind,
                optional,
                default,
                f.metadata.get("help", ""),
                f.metadata.get("choices"),
                (owner,) if owner else (),
                f.metadata.get("checked", True),
                f.metadata.get("words", ()),
            )
        )
    return specs


def merge(specs: list[OptionSpec]) -> dict[str, OptionSpec]:
    """One spec per name; a name declared by several components must agree in type and
    default (its help is the first one's), or the declaration is refused."""
    merged: dict[str, OptionSpec] = {}
    for spec in specs:
        seen = merged.get(spec.name)
        if seen is None:
            merged[spec.name] = spec
            continue
        if (seen.kind, seen.default_value) != (spec.kind, spec.default_value):
            owner = spec.owners[0] if spec.owners else ("section", "")
            raise TypeError(
                f"option {spec.name!r} of {owner[0]} {owner[1]!r} has type {spec.kind.__name__}"
                f" and default {spec.default_value!r}, but it is already declared with type"
                f" {seen.kind.__name__} and default {seen.default_value!r}"
            )
        merged[spec.name] = dataclasses.replace(seen, owners=seen.owners + spec.owners)
    return merged


#: Sane bounds: beyond them a value is a typo, and would only exhaust memory.
MAX_EPOCHS = 100_000
MAX_COUNT = 10**8
