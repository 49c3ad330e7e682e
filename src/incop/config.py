"""The one configuration object of a run: defaults, named methods, YAML, validation, parts.

Precedence, lowest first: the field defaults below, the chosen method's preset
(:data:`METHODS`), the YAML file, command-line flags (or ``incop.prune`` keyword
arguments). The resolved config is saved with every run as ``config.yaml`` and
reproduces it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import yaml

import incop.methods.at_init  # noqa: F401  (registers the synflow and snip pruners)
from incop.engine.metrics import CALLABLE_PREFIX, METRICS
from incop.engine.precision import PRECISIONS
from incop.engine.training import OPTIMIZERS, SCHEDULES
from incop.errors import UserError
from incop.methods.flow_guided import FlowGuidedPruner
from incop.methods.flows import DISTANCES, FLOW_SUMMARIES
from incop.methods.pruning import PRUNERS, SCOPES_FIXED, SCOPES_SAP
from incop.methods.rewind import REWIND_MODES, Rewind
from incop.methods.stopping import STOPPING_RULES, StoppingRule
from incop.methods.warmup_stop import EPI_THRESHOLD, WARMUP_STOPS, EPIStop, WarmupStop
from incop.registry import Registry, closest

#: How the magnitude pruners rank alive weights (docs/flow-guided.md).
SCORES = ("magnitude", "flow-guided")


@dataclass
class Config:
    """Every setting of a run. Units: epochs are passes over the training data;
    accuracies and ``delta`` are fractions in [0, 1]; ``eps`` is in the units of
    the chosen ``distance``."""

    # What to run
    method: str = "incop-gf"
    preset: str | None = None
    model: str = "mlp"
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    out: str | None = None
    # The IMP schedule (METHOD.md section 1)
    levels: int = 5
    warmup_epochs: int = 10
    warmup_stop: str = "fixed"
    epi_window: int = 3
    epi_threshold: float = EPI_THRESHOLD
    min_warmup_epochs: int = 1
    max_epochs: int = 10
    min_epochs: int = 1
    finetune_epochs: int = 0
    # Data splits: validation held out of the training split, the same for every run
    val_fraction: float = 0.1
    split_seed: int = 0
    train_fraction: float = 1.0
    # Training
    precision: str = "fp32"
    channels_last: bool | None = None
    compile: bool = False
    batch_size: int = 64
    eval_batch_size: int = 1000
    metric: str = "accuracy"
    on_divergence: str = "continue"
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    l1: float = 0.0
    schedule: str = "none"
    # Pruning (METHOD.md sections 2, 3, 5)
    pruner: str = "sap"
    scope: str = "global"
    rate: float = 0.2
    p: float = 0.5
    q: float = 1.0
    eta_r: float = 0.0
    gamma: float = 1.0
    beta: float = 0.9
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    rewind: str = "dense"
    score: str = "magnitude"
    # One-shot pruning, e.g. at initialisation (METHOD.md section 8)
    target_remaining: float | str | None = None
    synflow_iterations: int = 100
    snip_batch: int = 128
    # Stopping rule (METHOD.md section 6) and flows (section 4)
    stop: str = "fixed"
    delta: float = 0.0
    eps: float = 0.1
    distance: str = "l2"
    probe_size: int = 2048
    if_summary: str = "mean"
    if_skip: list[str] = field(default_factory=lambda: ["*downsample*", "*shortcut*"])
    gf_normalize: bool = False
    accuracy_clause: bool = True

    # --- parts ----------------------------------------------------------------------------

    def build_pruner(self):
        """The pruner callable ``(weights, masks, generator) -> masks``; those that score with
        the network (synflow, snip) need ``bind(context)`` before use."""
        cls = PRUNERS.get(self.pruner)
        if self.score == "flow-guided":
            base = replace(self, score="magnitude").build_pruner()
            return FlowGuidedPruner(
                base, self.probe_size, self.eval_batch_size, self.if_summary, tuple(self.if_skip)
            )
        if self.pruner == "sap":
            return cls(self.p, self.q, self.eta_r, self.gamma, self.beta, self.scope)
        if self.pruner == "synflow":
            return cls(self.target_remaining, self.synflow_iterations)
        if self.pruner == "snip":
            return cls(self.target_remaining, self.snip_batch)
        # A number with one level: the pruner prunes straight to it. Otherwise (levels > 1, or
        # "limit", known only once theta* is trained) the IMP loop applies the target.
        straight = isinstance(self.target_remaining, float) and self.levels == 1
        return cls(rate=self.rate, scope=self.scope,
                   target=self.target_remaining if straight else None)  # fmt: skip

    def build_stopping_rule(self, pruner=None) -> StoppingRule:
        """The stopping rule; ``pruner``: the run's own (bound) pruner, for the mask rule."""
        cls = STOPPING_RULES.get(self.stop)
        options = {
            "max_epochs": self.max_epochs,
            "min_epochs": self.min_epochs,
            "delta": self.delta,
            "eps": self.eps,
            "distance": self.distance,
            "summary": self.if_summary,
            "skip": tuple(self.if_skip),
            "normalize": self.gf_normalize,
            "accuracy_clause": self.accuracy_clause,
            "pruner": pruner if pruner is not None else self.build_pruner(),
        }
        accepted = {f.name for f in fields(cls) if f.init}
        return cls(**{k: v for k, v in options.items() if k in accepted})

    def build_warmup_stop(self) -> WarmupStop:
        """When the dense warm-up ends (besides its cap, ``warmup_epochs``)."""
        if self.warmup_stop == "epi":
            return EPIStop(self.epi_window, self.epi_threshold, self.min_warmup_epochs)
        return WARMUP_STOPS.get(self.warmup_stop)()

    def build_rewind(self) -> Rewind:
        return Rewind.parse(self.rewind)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- named methods ------------------------------------------------------------------------------

#: Method name -> the config values it sets. Everything stays overridable.
METHODS: Registry[dict[str, Any]] = Registry("method")
#: sap-mask's eps: fraction of alive weights whose next-prune decision may still change. The
#: lower quartile of the distances logged in retraining epochs >= 2 of fixed-E SAP runs
#: (lenet5, Fashion-MNIST, validation split): 0.0602. docs/mask.md has the measurements.
MASK_EPS = 0.06
METHODS.register("lth", "Lottery Ticket IMP: 20% of the alive weights a level, E epochs")(
    {"pruner": "lth", "rate": 0.2, "stop": "fixed"}
)
METHODS.register("random", "random pruning at 20% a level, E epochs (sanity baseline)")(
    {"pruner": "random", "rate": 0.2, "stop": "fixed"}
)
METHODS.register("sap", "SAP: the PQ Index sets how many to prune, E epochs a level")(
    {"pruner": "sap", "stop": "fixed"}
)
METHODS.register("sap-acc", "SAP, a level ends once validation accuracy is back at a*")(
    {"pruner": "sap", "stop": "accuracy", "delta": 0.0}
)
# eps defaults: the lower quartile of the distances logged in retraining epochs >= 2 of
# fixed-E SAP runs (lenet5, Fashion-MNIST, SAP (0.5, 1) and (1, 2)): stop once the flow is
# as close to the dense one as a well retrained network gets. The upper quartile saved more
# epochs but lost a point of accuracy at high sparsity; docs/eps.md has the measurements.
METHODS.register("incop-if", "InCoP-IF: SAP, a level ends once the information flow is back")(
    {"pruner": "sap", "stop": "if", "eps": 0.02, "distance": "l2", "if_summary": "mean"}
)
METHODS.register("incop-gf", "InCoP-GF: SAP, a level ends once the gradient flow is back")(
    {"pruner": "sap", "stop": "gf", "eps": 0.2, "distance": "relative"}
)
# The flow alone decides (no accuracy clause): what the InCoP claim is about.
METHODS.register("incop-if-flow", "incop-if without the accuracy clause: the flow alone")(
    {**METHODS.get("incop-if"), "accuracy_clause": False}
)
METHODS.register("incop-gf-flow", "incop-gf without the accuracy clause: the flow alone")(
    {**METHODS.get("incop-gf"), "accuracy_clause": False}
)
METHODS.register("sap-mask", "SAP, a level ends once the next prune's mask stops changing")(
    {"pruner": "sap", "stop": "mask", "eps": MASK_EPS}
)
#: Pruning at initialisation: no warm-up, one prune of the untrained network to
#: target_remaining, one training phase of max_epochs. 0.1 is the least sparse of the three
#: fractions the frontier benchmark compares (10%, 5%, 2%).
_AT_INIT = {"warmup_epochs": 0, "levels": 1, "stop": "fixed", "target_remaining": 0.1}
METHODS.register("synflow", "SynFlow at init to target_remaining, then one training phase")(
    {**_AT_INIT, "pruner": "synflow"}
)
METHODS.register("snip", "SNIP at init to target_remaining, then one training phase")(
    {**_AT_INIT, "pruner": "snip"}
)
METHODS.register("random-init", "random at init to target_remaining (baseline)")(
    {**_AT_INIT, "pruner": "random"}
)


#: LOMP (Zhang et al. 2024, LIMIT.md B4): dense training with an l1 term (5e-5, the official
#: value for fully connected nets) and no weight decay, one global magnitude prune to the
#: predicted pruning limit, no retraining and no fine-tune (the official procedure).
METHODS.register("lomp", "l1-trained dense network, one magnitude prune to the pruning limit")(
    {"pruner": "lth", "levels": 1, "stop": "fixed", "max_epochs": 0, "min_epochs": 0,
     "finetune_epochs": 0, "target_remaining": "limit", "l1": 5e-5, "weight_decay": 0.0}
)  # fmt: skip


#: The cheap baselines an efficient-IMP claim is judged against (issue 26). One-shot: the dense
#: warm-up, one global magnitude prune straight to target_remaining (0.1, as the at-init
#: methods), then one fine-tune as long as a level's default retraining (10 epochs).
METHODS.register("oneshot", "dense warm-up, one magnitude prune to target_remaining, fine-tune")(
    {"pruner": "lth", "levels": 1, "stop": "fixed", "max_epochs": 0, "min_epochs": 0,
     "finetune_epochs": 10, "target_remaining": 0.1}
)  # fmt: skip
#: Learning-rate rewinding (Renda et al. 2020): SAP's rate, the weights kept after each prune
#: and a fresh optimiser whose schedule restarts each level: what ``rewind: lr`` already does.
METHODS.register("lr-rewind", "SAP, the weights kept after each prune, the schedule restarted")(
    {"pruner": "sap", "stop": "fixed", "rewind": "lr"}
)


#: Named settings for whole experiments (``--preset``): the published protocol (METHOD.md
#: section 7) for each network and dataset of the paper, for users with a GPU, and one sized
#: for a 2-core CPU. They sit above the method's preset and below the user's file and flags.
PRESETS: Registry[dict[str, Any]] = Registry("preset")
_PAPER = {
    "optimizer": "sgd",
    "lr": 0.01,
    "weight_decay": 5e-4,
    "batch_size": 64,
    "warmup_epochs": 10,
    "levels": 15,
    "max_epochs": 20,
    # The same final fine-tune for every method, so early stopping is not penalised at the
    # sparsest level: E epochs, as a level of the fixed schedule.
    "finetune_epochs": 20,
    "p": 0.5,
    "q": 1.0,
    "rewind": "dense",
}
for _model in ("vgg16", "resnet18", "resnet50"):
    for _dataset in ("mnist", "fashion-mnist", "cifar10"):
        PRESETS.register(f"paper-{_model}-{_dataset}")(
            {**_PAPER, "model": _model, "dataset": _dataset}
        )
PRESETS.register("cpu-small")(
    {
        **_PAPER,
        "model": "lenet5",
        "dataset": "fashion-mnist",
        "warmup_epochs": 5,
        "levels": 5,
        "max_epochs": 5,
        "finetune_epochs": 5,
    }
)


# --- building and checking ----------------------------------------------------------------------

FIELD_NAMES = [f.name for f in fields(Config)]

#: One line per field for ``--help`` and the docs (units as in :class:`Config`).
FIELD_HELP = {
    "method": "named method: sets pruner, stop and their options (see `incop list`)",
    "preset": "named settings for a whole experiment (the published protocol, cpu-small)",
    "model": "registered model, or torchvision:<name> where torchvision is installed",
    "dataset": "dataset; digits is embedded, the others read their standard files",
    "data_dir": "folder with the dataset files (else $INCOP_DATA_DIR, else ~/.cache/incop/data)",
    "download": "fetch missing dataset files and check their MD5 sums",
    "seed": "fixes initial weights, data order, probe set and random pruning",
    "device": "where to train",
    "out": "run folder (default runs/<time>-<token>-<method>-<dataset>-<model>)",
    "levels": "pruning rounds K after the dense warm-up",
    "warmup_epochs": "dense training epochs before the first prune",
    "warmup_stop": "when the warm-up ends: fixed (all warmup_epochs) or epi (once the first"
    " prune's mask stops changing; theta* is that epoch's weights)",
    "epi_window": "epi: the mask of each epoch is compared with those of this many before it",
    "epi_threshold": "epi: end the warm-up once the smallest intersection over union in the"
    " window is at least this (docs/epi.md)",
    "min_warmup_epochs": "epi: never end the warm-up before this many epochs",
    "max_epochs": "cap E on the retraining epochs of a level",
    "finetune_epochs": "after the last level, train the final ticket this many more epochs"
    " (masks kept, fresh optimiser and schedule), keeping the best validation epoch",
    "min_epochs": "a stopping rule never stops a level before this many epochs (0: may stop "
    "on the measurement right after rewinding)",
    "val_fraction": "share of each class of the training split held out for validation"
    " (built-in datasets; every decision reads validation, the test split is only reported)",
    "split_seed": "seed of the validation split, apart from the run's seed so that every"
    " method and seed of a comparison shares one validation set",
    "train_fraction": "share of each class of the rest of the training split that trains"
    " (drawn with split_seed); below 1 for quick studies on a CPU",
    "threads": "CPU threads torch may use (none: torch's own choice, one per core); 1 on a"
    " machine other jobs share, where more threads wait on each other",
    "precision": "arithmetic of training and evaluation: fp32, or bf16 / fp16 autocast (fp16"
    " on CUDA only, with a gradient scaler); flows are always measured in fp32",
    "channels_last": "train convolutions in the channels_last memory layout (unset: on for"
    " models with a Conv2d, about 0.8x the time on CPU; the numbers computed are the same"
    " up to rounding)",
    "compile": "train the model compiled with torch.compile (the first epochs pay the compilation)",
    "batch_size": "training batch size (the global batch when data parallel)",
    "eval_batch_size": "batch size for evaluation and flow measurements",
    "metric": "the validation number every decision reads (best dense epoch, accuracy rule,"
    " flow rules' accuracy clause); loss suits any task, accuracy classification",
    "on_divergence": "after a level whose loss became NaN or infinite: go on, or stop the run",
    "optimizer": "training optimiser",
    "lr": "learning rate",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum for SGD",
    "weight_decay": "L2 weight decay",
    "l1": "coefficient of the l1 term added to the training loss, over every weight and bias"
    " (LOMP; 0: none)",
    "schedule": "learning-rate schedule of each phase (warm-up, every retraining level)",
    "pruner": "which weights to remove and how many",
    "scope": "where weights compete: all together, per tensor, (SAP) per output unit, or"
    " channel: whole output units by their L2 norm, the classifier kept (docs/channel.md)",
    "rate": "fraction of the alive weights removed per level (lth, random)",
    "p": "SAP's p (0 < p < q)",
    "q": "SAP's q",
    "eta_r": "SAP's eta_r >= 0 (larger prunes more)",
    "gamma": "SAP's gamma > 0 (scales the pruned fraction)",
    "beta": "SAP's beta in (0, 1): most it prunes in one level",
    "include": "shell patterns of weights to prune instead of every Conv/Linear weight",
    "exclude": "shell patterns of weights never to prune, e.g. fc3.weight",
    "rewind": "where surviving weights go after a prune",
    "score": "how the magnitude pruners (lth, sap; global scope) rank weights: magnitude |w|,"
    " or flow-guided: |w| times its layer's information-flow fragility (docs/flow-guided.md)",
    "target_remaining": "where pruning ends, as a fraction of the prunable weights (global"
    " scope), or limit: the pruning limit predicted on theta* after the warm-up. With levels 1,"
    " prune once, straight to it (synflow and snip need it, lth and random take it instead of"
    " rate); with more levels each prune is capped at it and the run ends there",
    "synflow_iterations": "synflow: rounds of scoring and pruning, on the exponential schedule",
    "snip_batch": "snip: training examples in the one batch the sensitivities are taken on",
    "stop": "stopping rule of a retraining phase",
    "delta": "accuracy rule: stop once validation accuracy >= a* - delta (a fraction)",
    "eps": "flow rules: stop once the flow distance < eps (units of the distance)",
    "distance": "flow rules: how the flow is compared with the dense one",
    "probe_size": "examples in the fixed probe set the flows are measured on",
    "if_summary": "information flow: how each correlation matrix is summarised",
    "if_skip": "information flow: module-name patterns left out (residual projections)",
    "gf_normalize": "gradient flow: divide each layer's norm by its alive weights",
    "accuracy_clause": "flow rules also stop once the validation metric reaches a* (the"
    " research code's behaviour); off: the flow distance alone decides",
}


def default_value(name: str) -> Any:
    """The global default of field ``name`` (before any method or preset)."""
    spec = Config.__dataclass_fields__[name]
    return (
        spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
    )


def choices() -> dict[str, list[str]]:
    """The allowed values of every enumerated field (``scope``: ``neuron`` is for SAP only)."""
    from incop.workload.data import DATASETS
    from incop.workload.models import MODELS

    return {
        "method": METHODS.names(),
        "preset": PRESETS.names(),
        "model": [*MODELS.names(), "torchvision:<name>"],
        "dataset": DATASETS.names(),
        "device": ["auto", "cpu", "cuda", "cuda:N", "mps"],
        "metric": list(METRICS),
        "on_divergence": ["continue", "stop"],
        "precision": list(PRECISIONS),
        "optimizer": list(OPTIMIZERS),
        "schedule": list(SCHEDULES),
        "pruner": PRUNERS.names(),
        "warmup_stop": WARMUP_STOPS.names(),
        "score": list(SCORES),
        "scope": list(SCOPES_SAP),
        "rewind": list(REWIND_MODES),
        "stop": STOPPING_RULES.names(),
        "distance": list(DISTANCES),
        "if_summary": list(FLOW_SUMMARIES),
    }


def method_defaults(name: str) -> dict[str, Any]:
    """Method -> its own value of field ``name``, where it differs from the global default."""
    default = default_value(name)
    return {
        method: values[name]
        for method in METHODS.names()
        if name in (values := METHODS.get(method)) and values[name] != default
    }


#: Seeds seed torch's generators and, mixed with the epoch, the data order; kept to 32 bits.
MAX_SEED = 2**32 - 1
#: Sane bounds for counts: beyond them a value is a typo, and would only exhaust memory.
MAX_EPOCHS = 100_000
MAX_COUNT = 10**8
INT_BOUNDS = {"levels": 1000}


def max_threads() -> int:
    """The most CPU threads a run may ask for: 4 per core of this machine."""
    return 4 * (os.cpu_count() or 1)


#: Training runs in float32: a larger learning rate or coefficient cannot even be represented.
FLOAT_MAX = float(torch.finfo(torch.float32).max)


def field_type(name: str) -> type:
    """The plain type of a config field: int, float, bool, str or list (Optional unwrapped)."""
    hint = typing.get_type_hints(Config)[name]
    if isinstance(hint, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.get_origin(hint) or hint


#: The one word target_remaining takes besides a number.
LIMIT_TARGET = "limit"


def _coerce(name: str, value: Any) -> Any:
    kind = field_type(name)
    if value is None:
        return None
    if name == "target_remaining" and value == LIMIT_TARGET:
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
    if name not in FIELD_NAMES or value is None:
        return None
    if name == "target_remaining" and value == LIMIT_TARGET:
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
    merged: dict[str, Any] = {}
    problems: list[str] = []
    for layer in layers:
        for key, value in layer.items():
            if not isinstance(key, str):
                problems.append(f"setting names must be text, got {key!r}")
            elif value is not None:
                merged[key.replace("-", "_")] = value
    problems += [
        f"unknown setting {key!r}{closest(key, FIELD_NAMES)}"
        for key in merged
        if key not in FIELD_NAMES
    ]
    values: dict[str, Any] = {}
    for key, value in merged.items():
        if key not in FIELD_NAMES:
            continue
        try:
            values[key] = _coerce(key, value)
        except UserError as exc:
            problems.append(str(exc))
    method = values.get("method", Config.method)
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
        validate(config)
    except UserError as exc:
        problems.append(str(exc))
    if problems:
        raise UserError("\n".join(problems))
    return config


def validate(config: Config) -> None:
    """Raise :class:`UserError` with one line per bad value: field, value, what is allowed."""
    c = config
    problems: list[str] = []

    reported: set[str] = set()

    def bad(name: str, allowed: str) -> None:
        # One line per field: a NaN fails every range check after the first.
        if name not in reported:
            reported.add(name)
            problems.append(f"{name}: {getattr(c, name)!r} is not allowed; {allowed}")

    def name_in(name: str, valid: list[str] | tuple[str, ...]) -> None:
        value = getattr(c, name)
        if value not in valid:
            problems.append(
                f"{name}: unknown value {value!r}{closest(str(value), list(valid))};"
                f" allowed: {', '.join(valid)}"
            )

    from incop.workload.models import MODELS

    for f in fields(Config):
        value = getattr(c, f.name)
        if field_type(f.name) is not float or value is None or value == LIMIT_TARGET:
            continue
        if not (math.isfinite(value) and abs(value) <= FLOAT_MAX):
            bad(f.name, f"must be a finite number of at most {FLOAT_MAX:.3g} (float32's range)")

    allowed = choices()
    for name in ("method", "dataset", "pruner", "stop", "optimizer", "schedule", "distance",
                 "if_summary", "on_divergence", "precision", "warmup_stop", "score"):  # fmt: skip
        name_in(name, allowed[name])
    if not str(c.model).startswith("torchvision:"):
        name_in("model", MODELS.names())
    name_in("scope", SCOPES_SAP if c.pruner == "sap" else SCOPES_FIXED)
    if not str(c.metric).startswith(CALLABLE_PREFIX):
        name_in("metric", METRICS)
    if not c.accuracy_clause and c.stop not in ("if", "gf"):
        problems.append(
            f"accuracy_clause: false would be ignored: only the flow rules (stop: if, gf) have"
            f" it, and this run stops with {c.stop!r}"
        )
    if c.if_skip != default_value("if_skip") and c.stop != "if" and c.score != "flow-guided":
        problems.append(
            f"if_skip: {c.if_skip!r} would be ignored: only the information flow (stop: if, or"
            f" score: flow-guided) uses it, and this run stops with {c.stop!r}"
        )
    if c.score == "flow-guided" and (c.pruner not in ("lth", "sap") or c.scope != "global"):
        problems.append(
            f"score: flow-guided ranks the weights of the magnitude pruners (lth, sap) in global"
            f" scope; within one tensor it ranks as magnitude does, so with pruner {c.pruner!r}"
            f" and scope {c.scope!r} it would do nothing"
        )
    problems += _one_shot_problems(c) + _warmup_stop_problems(c)
    for name in ("levels", "warmup_epochs", "max_epochs", "min_epochs", "finetune_epochs"):
        if not 0 <= getattr(c, name) <= INT_BOUNDS.get(name, MAX_EPOCHS):
            bad(name, f"must be in 0..{INT_BOUNDS.get(name, MAX_EPOCHS)}")
    for name in ("seed", "split_seed"):
        if not 0 <= getattr(c, name) <= MAX_SEED:
            bad(name, f"must be in 0..{MAX_SEED}")
    if not 0 < c.val_fraction < 1:
        bad("val_fraction", "must be in (0, 1)")
    if not 0 < c.train_fraction <= 1:
        bad("train_fraction", "must be in (0, 1]")
    threads = max_threads()
    if c.threads is not None and c.threads < 1:
        bad("threads", "must be >= 1 (or none: torch's own choice)")
    elif c.threads is not None and c.threads > threads:
        bad("threads", f"must be at most {threads} (4 per core of this machine)")
    for name in ("batch_size", "eval_batch_size", "probe_size", "synflow_iterations",
                 "snip_batch", "epi_window"):  # fmt: skip
        if not 1 <= getattr(c, name) <= MAX_COUNT:
            bad(name, f"must be in 1..{MAX_COUNT}")
    if not 0 <= c.min_warmup_epochs <= MAX_EPOCHS:
        bad("min_warmup_epochs", f"must be in 0..{MAX_EPOCHS}")
    for name in ("out", "data_dir"):
        value = getattr(c, name, None)
        if isinstance(value, str) and "\x00" in value:
            bad(name, "a path cannot hold a NUL character")
    if c.min_epochs > c.max_epochs:
        problems.append(f"min_epochs: {c.min_epochs} exceeds max_epochs {c.max_epochs}")
    if c.p <= 0:
        bad("p", "must be > 0")
    if c.p >= c.q:
        problems.append(f"p: {c.p} must be smaller than q ({c.q}): SAP needs 0 < p < q")
    if not 0 < c.beta < 1:
        bad("beta", "must be in (0, 1)")
    for name in ("gamma", "eps", "lr"):
        if getattr(c, name) <= 0:
            bad(name, "must be > 0")
    for name in ("eta_r", "weight_decay", "delta", "l1"):
        if getattr(c, name) < 0:
            bad(name, "must be >= 0")
    if c.l1 > 0 and c.weight_decay > 0:
        problems.append(
            f"weight_decay: {c.weight_decay!r} is not allowed with l1 {c.l1!r}: the l1 term"
            " replaces weight decay (LOMP trains with weight decay 0); set weight_decay 0"
        )
    if not 0 <= c.momentum < 1:
        bad("momentum", "must be in [0, 1)")
    if not 0 <= c.rate < 1:
        bad("rate", "must be in [0, 1)")
    device_problem = check_device(c.device)
    if device_problem:
        bad("device", device_problem)
    try:
        rewind = c.build_rewind()
    except UserError as exc:
        problems.append(str(exc))
    else:
        if rewind.mode == "epoch" and rewind.epoch > c.warmup_epochs:
            problems.append(
                f"rewind: {c.rewind!r} rewinds to dense epoch {rewind.epoch}, but warmup_epochs"
                f" is {c.warmup_epochs}; K must be <= warmup_epochs"
            )
    if problems:
        raise UserError("\n".join(problems))


def _warmup_stop_problems(c: Config) -> list[str]:
    """The EPI options: in range, and set only where the warm-up stop uses them."""
    problems = []
    names = ("epi_window", "epi_threshold", "min_warmup_epochs")
    if c.warmup_stop != "epi":
        problems += [
            f"{name}: {getattr(c, name)!r} would be ignored: only warmup_stop epi uses it, and"
            f" this run has warmup_stop {c.warmup_stop!r}"
            for name in names
            if getattr(c, name) != default_value(name)
        ]
        return problems
    if c.epi_window < 1:
        problems.append(f"epi_window: {c.epi_window!r} is not allowed; must be >= 1")
    if not 0 < c.epi_threshold <= 1:
        problems.append(f"epi_threshold: {c.epi_threshold!r} is not allowed; must be in (0, 1]")
    if not 0 <= c.min_warmup_epochs <= c.warmup_epochs:
        problems.append(
            f"min_warmup_epochs: {c.min_warmup_epochs!r} is not allowed; must be in"
            f" 0..warmup_epochs ({c.warmup_epochs})"
        )
    if c.warmup_epochs <= c.epi_window:
        problems.append(
            f"warmup_stop: epi can never end a warm-up of {c.warmup_epochs} epochs early: it"
            f" compares each epoch with the {c.epi_window} before it (epi_window); raise"
            " warmup_epochs, the cap"
        )
    if c.rewind.startswith("epoch:"):
        k = c.rewind.split(":", 1)[1]
        if not k.isdigit() or int(k) > c.min_warmup_epochs:
            problems.append(
                f"rewind: {c.rewind!r} needs dense epoch {k}, which an EPI warm-up may end"
                f" before; set min_warmup_epochs >= {k}"
            )
    return problems


#: Pruners that prune once, straight to target_remaining, and the pruner-only options.
AT_INIT_PRUNERS = ("synflow", "snip")
PRUNER_OPTIONS = {"synflow_iterations": "synflow", "snip_batch": "snip"}


def _one_shot_problems(c: Config) -> list[str]:
    """target_remaining and the options of the at-init pruners: each must do something."""
    problems = []
    for name, pruner in PRUNER_OPTIONS.items():
        if getattr(c, name) < 1:
            problems.append(f"{name}: {getattr(c, name)!r} is not allowed; must be >= 1")
        elif getattr(c, name) != default_value(name) and c.pruner != pruner:
            problems.append(
                f"{name}: {getattr(c, name)!r} would be ignored: only the {pruner} pruner uses"
                f" it, and this run prunes with {c.pruner!r}"
            )
    target = c.target_remaining
    if target is None:
        if c.pruner in AT_INIT_PRUNERS:
            problems.append(
                f"target_remaining: the {c.pruner} pruner needs it (the fraction of prunable"
                " weights to keep, e.g. 0.1)"
            )
        return problems
    if target == LIMIT_TARGET:
        if c.pruner in AT_INIT_PRUNERS or c.warmup_epochs == 0:
            problems.append(
                "target_remaining: limit is not allowed for a method that prunes at"
                " initialisation: the pruning limit is predicted on a trained network (theta*)"
            )
        if c.pruner == "random":
            problems.append(
                "target_remaining: limit predicts how far magnitude pruning can go; the random"
                " pruner is not magnitude pruning"
            )
    elif not 0 < target < 1:
        problems.append(f"target_remaining: {target!r} is not allowed; must be in (0, 1)")
    if c.scope != "global":
        problems.append(
            f"scope: {c.scope!r} is not allowed with target_remaining; pruning to a target ranks"
            " all weights together (global)"
        )
    if c.levels == 0:
        problems.append("target_remaining: would be ignored: levels is 0, so nothing is pruned")
    elif c.pruner in AT_INIT_PRUNERS and c.levels != 1:
        problems.append(
            f"levels: {c.levels} is not allowed with target_remaining, which the {c.pruner}"
            " pruner reaches in one prune; set levels 1"
        )
    if c.levels == 1 and c.pruner in ("lth", "random") and c.rate != default_value("rate"):
        problems.append(
            f"rate: {c.rate!r} would be ignored: target_remaining ({target!r}) sets how many"
            " weights go"
        )
    return problems


def check_device(name: str) -> str | None:
    """Why ``name`` is not a device this machine can run on, or None if it is."""
    allowed = "allowed: auto, cpu, cuda, cuda:N, mps"
    if name in ("auto", "cpu"):
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        return allowed
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available on this machine (use auto or cpu)"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s)"
        return None
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            return "MPS is not available on this machine (use auto or cpu)"
        return None
    return allowed


#: Fields that say where a run reads and writes, not what it computes: a resumed run may
#: change them (data moves between machines), and ``config.yaml`` leaves ``out`` out so
#: that ``incop run --config <run>/config.yaml --out NEW`` reproduces the run anywhere.
WHERE_FIELDS = ("out", "data_dir", "download")


#: Fields that only act after the dense warm-up: methods differing in these alone can start
#: from one shared warm-up (``incop compare``).
AFTER_WARMUP_FIELDS = (
    "method", "out", "levels", "max_epochs", "min_epochs", "finetune_epochs", "pruner", "score",
    "scope", "rate", "p", "q", "eta_r", "gamma", "beta", "include", "exclude",
    "target_remaining", "synflow_iterations", "snip_batch", "stop", "delta", "eps",
    "distance", "probe_size", "if_summary", "if_skip", "gf_normalize", "accuracy_clause",
)  # fmt: skip


def dense_phase(config: Config) -> dict[str, Any]:
    """The settings that decide the dense warm-up: two runs whose dense phases are equal
    train the same dense network (same seed, data, schedule and warm-up length)."""
    # EPI ends the warm-up by the first prune's mask: the pruner shapes the dense phase too.
    after = AFTER_WARMUP_FIELDS if config.warmup_stop == "fixed" else ("method", "out")
    return {k: v for k, v in config.to_dict().items() if k not in after}


def to_yaml(config: Config) -> str:
    """``config.yaml``: every field but ``out``."""
    values = {k: v for k, v in config.to_dict().items() if k != "out"}
    return yaml.safe_dump(values, sort_keys=False)
