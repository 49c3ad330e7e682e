"""The one configuration object of a run: its settings, YAML, validation, and the parts.

The settings are the fields of the sections (:mod:`incop.config.sections`) and of every
registered component's ``Options`` (:mod:`incop.core.options`), in one flat namespace.
Precedence, lowest first: the defaults, the chosen method's preset
(:data:`incop.methods.named.METHODS`), the experiment preset, the YAML file, command-line
flags (or ``incop.prune`` keyword arguments). The resolved config is saved with every run as
``config.yaml`` and reproduces it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import yaml

from incop.config.presets import PRESETS
from incop.config.sections import (
    FLOAT_MAX,
    LIMIT_TARGET,
    DataOptions,
    PruningOptions,
    RunOptions,
    ScheduleOptions,
    TrainingOptions,
)
from incop.core import registry as registries
from incop.core.options import OptionSpec, merge, not_allowed, specs_of, unknown_value
from incop.core.registry import Registry, closest
from incop.errors import UserError
from incop.methods.named import METHODS
from incop.methods.pruning import PRUNERS, SCORES
from incop.methods.rewind import Rewind, RewindOptions
from incop.methods.stopping import STOPPING_RULES
from incop.methods.warmup_stop import WARMUP_STOPS

#: The loop's own sections, in order.
SECTIONS: dict[str, type] = {
    "run": RunOptions,
    "schedule": ScheduleOptions,
    "data": DataOptions,
    "training": TrainingOptions,
    "pruning": PruningOptions,
    "rewind": RewindOptions,
}
#: The setting that chooses each kind of component -> the registry it names.
COMPONENTS: dict[str, Registry] = {
    "pruner": PRUNERS,
    "stop": STOPPING_RULES,
    "warmup_stop": WARMUP_STOPS,
    "score": SCORES,
}
#: Components whose options act only after the dense warm-up (``incop compare`` shares it).
AFTER_WARMUP_KINDS = ("pruner", "stop", "score")
#: A pruner or stopping rule passed to ``incop.prune`` as an object is recorded by this prefix
#: and its class name; there is no registry entry to check it against.
USER_PREFIX = "user:"
#: The order ``config.yaml`` lists the settings in (the one it always had); settings of
#: components added later follow.
ORDER = (
    "method", "preset", "model", "dataset", "data_dir", "download", "seed", "device", "threads",
    "out", "log", "levels", "warmup_epochs", "warmup_stop", "epi_window", "epi_threshold",
    "min_warmup_epochs", "max_epochs", "min_epochs", "finetune_epochs", "finetune_from",
    "val_fraction", "split_seed", "train_fraction", "precision", "channels_last", "compile",
    "batch_size", "eval_batch_size", "metric", "on_divergence", "optimizer", "lr", "momentum",
    "nesterov", "weight_decay", "l1", "schedule", "pruner", "scope", "rate", "p", "q", "eta_r",
    "gamma", "beta", "include", "exclude", "rewind", "score", "target_remaining",
    "prune_counts", "counts_from", "synflow_iterations", "snip_batch", "stop", "delta", "eps",
    "distance", "probe_size", "if_summary", "if_skip", "if_channel_dim", "gf_normalize",
    "accuracy_clause",
)  # fmt: skip


def option_specs() -> dict[str, OptionSpec]:
    """Every setting a run has now: the sections' and every registered component's."""
    if _cache.get("generation") != registries.generation:
        _cache.update(generation=registries.generation, specs=_collect_specs())
    return _cache["specs"]


_cache: dict[str, Any] = {}


def _collect_specs() -> dict[str, OptionSpec]:
    specs = [spec for options in SECTIONS.values() for spec in specs_of(options)]
    for kind, registry in COMPONENTS.items():
        for name in registry.names():
            specs += specs_of(registry.get(name).Options, (kind, name))
    merged = merge(specs)
    rank = {name: i for i, name in enumerate(ORDER)}
    return dict(sorted(merged.items(), key=lambda item: rank.get(item[0], len(rank))))


def field_names() -> list[str]:
    """The names of every setting, in ``config.yaml``'s order."""
    return list(option_specs())


def default_value(name: str) -> Any:
    """The global default of setting ``name`` (before any method or preset)."""
    return option_specs()[name].default()


def field_type(name: str) -> type:
    """The plain type of a setting: int, float, bool, str or list (Optional unwrapped)."""
    return option_specs()[name].kind


def help_line(name: str) -> str:
    """The one-line help of setting ``name``."""
    return option_specs()[name].help


class Config:
    """Every setting of a run, read as attributes (``config.lr``). Built by :func:`resolve`,
    which checks it; ``Config(**values)`` alone fills in defaults without checking.

    ``section(name)`` and ``options(kind)`` give the typed ``Options`` of a section
    (:data:`SECTIONS`) or of the chosen component of a kind (:data:`COMPONENTS`).
    """

    __slots__ = ("_values",)

    def __init__(self, **values: Any) -> None:
        specs = option_specs()
        unknown = [name for name in values if name not in specs]
        if unknown:
            raise TypeError(f"Config has no setting {', '.join(map(repr, unknown))}")
        object.__setattr__(self, "_values", {
            name: values[name] if name in values else spec.default()
            for name, spec in specs.items()
        })  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"Config has no setting {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._values:
            raise AttributeError(f"Config has no setting {name!r}")
        self._values[name] = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._values == other._values

    def __repr__(self) -> str:
        return f"Config({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied (unchecked)."""
        return Config(**{**self._values, **changes})

    def chosen(self) -> dict[str, type | None]:
        """Kind -> the class of the chosen component (None for a user's object or a bad name)."""
        return {
            kind: registry.get(value) if (value := self._values[kind]) in registry else None
            for kind, registry in COMPONENTS.items()
        }

    def used(self, name: str) -> bool:
        """Whether setting ``name`` does something in this run: a section's always; a
        component's when one of the components declaring it is chosen."""
        return _uses(self._values, option_specs()[name])

    def section(self, name: str) -> Any:
        """The ``Options`` of section ``name`` with this run's values."""
        return _options(SECTIONS[name], self._values)

    def options(self, kind: str) -> Any:
        """The ``Options`` of the chosen component of ``kind`` with this run's values."""
        return _options(COMPONENTS[kind].get(self._values[kind]).Options, self._values)

    def build(self, kind: str) -> Any:
        """The chosen component of ``kind``: one registry lookup, built from its options."""
        cls = COMPONENTS[kind].get(self._values[kind])
        return cls.from_options(_options(cls.Options, self._values), self)

    def build_pruner(self) -> Any:
        """The pruner callable ``(weights, masks, generator) -> masks``, ranking by the
        run's score; those that score with the network need ``bind(context)`` before use."""
        return self.build("score").guide(self.build("pruner"))

    def build_stopping_rule(self) -> Any:
        return self.build("stop")

    def build_warmup_stop(self) -> Any:
        """When the dense warm-up ends (besides its cap, ``warmup_epochs``)."""
        return self.build("warmup_stop")

    def build_rewind(self) -> Rewind:
        return Rewind.parse(self.rewind)

    def to_dict(self) -> dict[str, Any]:
        """Every setting, as ``config.yaml`` holds it. The settings of components from
        outside incop appear only when such a component is chosen, so that a run's config
        loads wherever incop does."""
        specs = option_specs()
        return {
            name: _copy(value)
            for name, value in self._values.items()
            if name in specs and (_builtin(specs[name]) or self.used(name))
        }


def _uses(values: dict[str, Any], spec: OptionSpec) -> bool:
    return not spec.owners or any(values.get(kind) == comp for kind, comp in spec.owners)


def unused_by(method: str, overrides: dict[str, Any]) -> set[str]:
    """The settings in ``overrides`` that no component of ``method`` (as the overrides choose
    them) uses: a comparison leaves them out of that method's config."""
    values = {k.replace("-", "_"): v for k, v in overrides.items() if v is not None}
    chosen = {kind: default_value(kind) for kind in COMPONENTS}
    chosen |= {k: v for k, v in {**METHODS.get(method), **values}.items() if k in COMPONENTS}
    specs = option_specs()
    return {
        key
        for key in overrides
        if (name := key.replace("-", "_")) in specs and not _uses(chosen, specs[name])
    }


def _builtin(spec: OptionSpec) -> bool:
    return not spec.owners or any(
        COMPONENTS[kind].get(name).__module__.startswith("incop.")
        for kind, name in spec.owners
        if name in COMPONENTS[kind]
    )


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _options(cls: type, values: dict[str, Any]) -> Any:
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    return cls(**{name: _copy(values[name]) for name in names})


def _coerce(name: str, value: Any) -> Any:
    kind = field_type(name)
    if value is None:
        return None
    if isinstance(value, str) and value in option_specs()[name].words:
        return value
    if kind is list:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            return [str(v) for v in value]
    elif kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str | int | float | os.PathLike) and not isinstance(value, bool):
            return str(value)
    raise UserError(f"{name}: {value!r} is not a valid {kind.__name__}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file (an empty file is an empty mapping)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config: file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"config: {str(path)!r} is a folder, not a YAML file") from None
    except UnicodeDecodeError:
        raise UserError(f"config: {path} is not a text file (not UTF-8); expected YAML") from None
    except OSError as exc:
        raise UserError(f"config: cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config: {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config: {path} must hold a mapping of settings, got {type(data).__name__}"
        )
    keys = [key for key in data if not isinstance(key, str)]
    if keys:
        raise UserError(
            f"config: {path} has keys that are not setting names: {', '.join(map(repr, keys))}"
        )
    problems = [
        problem
        for key, value in data.items()
        if (problem := _yaml_type_problem(key.replace("-", "_"), value)) is not None
    ]
    if problems:
        raise UserError("\n".join(f"config: {path}: {problem}" for problem in problems))
    return data


#: What YAML value types each kind of field takes: a YAML file types its values, so a quoted
#: number, a bool or a float where an integer belongs is refused rather than guessed.
_YAML_TYPES: dict[type, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    bool: (bool,),
    str: (str,),
    list: (list, str),
}


def _yaml_type_problem(name: str, value: Any) -> str | None:
    """Why a YAML ``value`` cannot be the field ``name`` (None: it can, or ``name`` is not a
    field, which :func:`resolve` reports)."""
    if name not in option_specs() or value is None:
        return None
    if isinstance(value, str) and value in option_specs()[name].words:
        return None
    kind = field_type(name)
    allowed = _YAML_TYPES[kind]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, allowed):
        return (
            f"{name}: {value!r} is a {type(value).__name__}, where a{'n' if kind is int else ''}"
            f" {kind.__name__} belongs"
        )
    if kind is list and isinstance(value, list) and not all(isinstance(v, str) for v in value):
        return f"{name}: {value!r} must be a list of text patterns"
    return None


def resolve(*layers: dict[str, Any]) -> Config:
    """A validated :class:`Config` from override mappings, later ones winning.

    The method preset is applied under the overrides, whichever layer names the method.
    Raises :class:`UserError` listing every problem found.
    """
    names = field_names()
    merged: dict[str, Any] = {}
    problems: list[str] = []
    for layer in layers:
        for key, value in layer.items():
            if not isinstance(key, str):
                problems.append(f"setting names must be text, got {key!r}")
            elif value is not None:
                merged[key.replace("-", "_")] = value
    problems += [
        f"unknown setting {key!r}{closest(key, names)}" for key in merged if key not in names
    ]
    values: dict[str, Any] = {}
    for key, value in merged.items():
        if key not in names:
            continue
        try:
            values[key] = _coerce(key, value)
        except UserError as exc:
            problems.append(str(exc))
    method = values.get("method", default_value("method"))
    method_values = METHODS.get(method) if method in METHODS else {}
    preset = values.get("preset")
    if preset is not None and preset not in PRESETS:
        problems.append(f"preset: unknown value {preset!r}{closest(preset, PRESETS.names())};"
                        f" allowed: {', '.join(PRESETS.names())}")  # fmt: skip
        preset = None
    preset_values = PRESETS.get(preset) if preset is not None else {}
    # Every problem is reported at once: the valid values are checked too, with defaults
    # standing in for the ones that could not be read.
    config = Config(**{**method_values, **preset_values, **values})
    if config.data_dir is not None:
        # Saved with the run: absolute, so the config works from any working directory.
        config.data_dir = str(Path(config.data_dir).expanduser().absolute())
    try:
        validate(config, given=set(values))
    except UserError as exc:
        problems.append(str(exc))
    if problems:
        raise UserError("\n".join(problems))
    return config


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


def validate(config: Config, given: set[str] | None = None) -> None:
    """Raise :class:`UserError` with one line per bad value: setting, value, what is allowed.

    Each section and each chosen component checks its own options (``check()``, and
    ``check_config`` for its settings together with others'); here are only the checks that
    span sections, and those every setting gets (finite numbers, names among the allowed,
    nothing set that this run would ignore). ``given``: the settings the user set (a method's
    own values for a component the user replaced are not the user's to fix); None: all."""
    c = config
    specs = option_specs()
    problems: list[str] = []
    for name, spec in specs.items():
        value = getattr(c, name)
        if (
            spec.kind is float
            and isinstance(value, float)
            and not (math.isfinite(value) and abs(value) <= FLOAT_MAX)
        ):
            problems.append(not_allowed(
                name, value, f"must be a finite number of at most {FLOAT_MAX:.3g} (float32's range)"
            ))  # fmt: skip
        allowed = spec.allowed()
        if spec.checked and allowed is not None and value not in allowed:
            if not (name in COMPONENTS and str(value).startswith(USER_PREFIX)):
                problems.append(unknown_value(name, value, allowed))
    for section in SECTIONS:
        problems += c.section(section).check()
    for cls in c.chosen().values():
        if cls is not None:
            problems += _options(cls.Options, c._values).check() + cls.check_config(c)
    pruner = c.chosen()["pruner"]
    if pruner is not None and c.scope not in pruner.scopes:
        problems.append(unknown_value("scope", c.scope, list(pruner.scopes)))
    problems += _ignored(c, specs, given) + _target_problems(c, pruner)
    if c.distill != "off" and c.warmup_epochs == 0:
        problems.append(
            f"distill: {c.distill!r} distils from theta*, and warmup_epochs 0 trains none; give"
            " warmup_epochs >= 1"
        )
    elif c.distill == "finetune" and c.finetune_epochs == 0:
        problems.append("distill: 'finetune' would be ignored: finetune_epochs is 0")
    if not problems:
        rewind = c.build_rewind()
        if rewind.mode == "epoch" and rewind.epoch > c.warmup_epochs:
            problems.append(
                f"rewind: {c.rewind!r} rewinds to dense epoch {rewind.epoch}, but warmup_epochs"
                f" is {c.warmup_epochs}; K must be <= warmup_epochs"
            )
    if problems:
        raise UserError("\n".join(_one_per_setting(problems)))


def _one_per_setting(problems: list[str]) -> list[str]:
    """One 'is not allowed' line per setting: a NaN fails every range check after the first."""
    seen: set[str] = set()
    kept = []
    for line in problems:
        name = line.split(":", 1)[0]
        if " is not allowed; " in line:
            if name in seen:
                continue
            seen.add(name)
        kept.append(line)
    return list(dict.fromkeys(kept))


def _ignored(c: Config, specs: dict[str, OptionSpec], given: set[str] | None) -> list[str]:
    """A component's setting given a value of its own where no component using it is chosen."""
    problems = []
    for name, spec in specs.items():
        if not spec.owners or c.used(name) or getattr(c, name) == spec.default():
            continue
        if given is not None and name not in given:
            continue
        users: dict[str, list[str]] = {}
        for kind, component in spec.owners:
            users.setdefault(kind, []).append(component)
        only = " or ".join(f"{kind} {', '.join(names)}" for kind, names in users.items())
        chosen = ", ".join(f"{kind} {getattr(c, kind)!r}" for kind in users)
        problems.append(
            f"{name}: {_shown(getattr(c, name))} would be ignored: only {only} use(s) it,"
            f" and this run has {chosen}"
        )
    return problems


def _target_problems(c: Config, pruner: type | None) -> list[str]:
    """target_remaining, with the schedule and the pruner: it must do something."""
    at_init = pruner is not None and pruner.at_init
    target = c.target_remaining
    if target is None:
        if at_init:
            return [
                f"target_remaining: the {c.pruner} pruner needs it (the fraction of prunable"
                " weights to keep, e.g. 0.1)"
            ]
        return []
    problems = []
    if target == LIMIT_TARGET:
        if at_init or c.warmup_epochs == 0:
            problems.append(
                "target_remaining: limit is not allowed for a method that prunes at"
                " initialisation: the pruning limit is predicted on a trained network (theta*)"
            )
        if pruner is not None and not pruner.by_magnitude and not at_init:
            problems.append(
                "target_remaining: limit predicts how far magnitude pruning can go; the"
                f" {c.pruner} pruner is not magnitude pruning"
            )
    elif not 0 < target < 1:
        problems.append(not_allowed("target_remaining", target, "must be in (0, 1)"))
    if c.scope != "global":
        problems.append(
            f"scope: {c.scope!r} is not allowed with target_remaining; pruning to a target ranks"
            " all weights together (global)"
        )
    if c.levels == 0:
        problems.append("target_remaining: would be ignored: levels is 0, so nothing is pruned")
    elif at_init and c.levels != 1:
        problems.append(
            f"levels: {c.levels} is not allowed with target_remaining, which the {c.pruner}"
            " pruner reaches in one prune; set levels 1"
        )
    return problems


def choices() -> dict[str, list[str]]:
    """The allowed values of every setting that takes names."""
    return {
        name: allowed
        for name, spec in option_specs().items()
        if (allowed := spec.allowed()) is not None
    }


def as_saved(values: dict[str, Any]) -> dict[str, Any]:
    """A run's saved settings (its ``config.yaml``), completed as that run ran. A setting the
    file lacks was added by a later incop, and the run ran as that setting's global default;
    the method's value of this incop may be newer (incop-gf's ``eps_mode`` became noise after
    its first runs), so it does not apply to a setting the file lacks."""
    method = values.get("method", default_value("method"))
    own = METHODS.get(method) if method in METHODS else {}
    return {**{name: default_value(name) for name in own if name not in values}, **values}


def method_defaults(name: str) -> dict[str, Any]:
    """Method -> its own value of setting ``name``, where it differs from the global default."""
    default = default_value(name)
    return {
        method: values[name]
        for method in METHODS.names()
        if name in (values := METHODS.get(method)) and values[name] != default
    }


#: Settings that say where a run reads and writes, not what it computes: a resumed run may
#: change them (data moves between machines, another logger listens), and ``config.yaml``
#: leaves ``out`` out so that ``incop run --config <run>/config.yaml --out NEW`` reproduces
#: the run anywhere.
WHERE_FIELDS = ("out", "data_dir", "download", "log")
#: The loop's own settings that act only after the dense warm-up; with the options of the
#: pruner, stopping rule and score, methods differing in these alone can start from one
#: shared warm-up (``incop compare``).
AFTER_WARMUP_FIELDS = (
    "method", "out", "log", "levels", "max_epochs", "min_epochs", "finetune_epochs", "pruner",
    "score", "scope", "include", "exclude", "target_remaining", "stop", "prune_counts",
    "counts_from", "finetune_from",
)  # fmt: skip


def after_warmup_fields() -> list[str]:
    """Every setting that acts only after the dense warm-up."""
    return [*AFTER_WARMUP_FIELDS, *(
        name for name, spec in option_specs().items()
        if spec.owners and all(kind in AFTER_WARMUP_KINDS for kind, _ in spec.owners)
    )]  # fmt: skip


def dense_phase(config: Config) -> dict[str, Any]:
    """The settings that decide the dense warm-up: two runs whose dense phases are equal
    train the same dense network (same seed, data, schedule and warm-up length)."""
    # EPI ends the warm-up by the first prune's mask: the pruner shapes the dense phase too.
    fixed = config.chosen()["warmup_stop"] is WARMUP_STOPS.get("fixed")
    after = after_warmup_fields() if fixed else ("method", "out", "log")
    return {k: v for k, v in config.to_dict().items() if k not in after}


def to_yaml(config: Config) -> str:
    """``config.yaml``: every setting but ``out``."""
    values = {k: v for k, v in config.to_dict().items() if k != "out"}
    return yaml.safe_dump(values, sort_keys=False)
