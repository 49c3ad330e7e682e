"""A run's configuration: the sections (:mod:`.sections`), the experiment presets
(:mod:`.presets`), and the :class:`Config` built, checked and saved from them
(:mod:`.settings`)."""

from incop.config.presets import PRESETS
from incop.config.sections import MAX_SEED, max_threads
from incop.config.settings import (
    COMPONENTS,
    LIMIT_TARGET,
    SECTIONS,
    USER_PREFIX,
    WHERE_FIELDS,
    Config,
    as_saved,
    choices,
    default_value,
    dense_phase,
    field_names,
    field_type,
    help_line,
    load_yaml,
    method_defaults,
    option_specs,
    resolve,
    to_yaml,
    unused_by,
    validate,
)
from incop.methods.named import METHODS

__all__ = [
    "COMPONENTS",
    "LIMIT_TARGET",
    "MAX_SEED",
    "METHODS",
    "PRESETS",
    "SECTIONS",
    "USER_PREFIX",
    "WHERE_FIELDS",
    "Config",
    "as_saved",
    "choices",
    "default_value",
    "dense_phase",
    "field_names",
    "field_type",
    "help_line",
    "load_yaml",
    "max_threads",
    "method_defaults",
    "option_specs",
    "resolve",
    "to_yaml",
    "unused_by",
    "validate",
]
