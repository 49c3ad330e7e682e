"""The sections of a run's settings that belong to the loop itself (what to run, the schedule,
the data splits, training, pruning in general). Each chosen component (pruner, stopping rule,
warm-up stop, score, rewind) brings its own section, declared in its file; together they make
the flat namespace of :class:`incop.config.Config`: the YAML keys, the ``--flags`` and the
``incop.prune`` keywords. Units: epochs are passes over the training data; fractions in [0, 1].
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import incop.methods.flow_guided  # noqa: F401  (registers the flow-guided score)
import incop.methods.pruners  # noqa: F401  (registers the built-in pruners)
from incop.config.presets import PRESETS
from incop.core.batches import AUTO
from incop.core.callbacks import LOGGERS
from incop.core.metrics import CALLABLE_PREFIX, METRICS
from incop.core.optimizers import OPTIMIZERS, SCHEDULES
from incop.core.options import (
    MAX_COUNT,
    MAX_EPOCHS,
    NoOptions,
    in_range,
    not_allowed,
    option,
    unknown_value,
)
from incop.core.precision import AUTO_PRECISION, PRECISIONS
from incop.methods.named import METHODS
from incop.methods.pruning import PRUNERS, SCORES
from incop.methods.stopping import STOPPING_RULES
from incop.methods.warmup_stop import WARMUP_STOPS
from incop.workload.data import DATASETS
from incop.workload.models import FACTORY, MODELS, USER_MODEL

#: Seeds seed torch's generators and, mixed with the epoch, the data order; kept to 32 bits.
MAX_SEED = 2**32 - 1
#: At most this many pruning rounds: beyond, a value is a typo.
MAX_LEVELS = 1000
#: Training runs in float32: a larger learning rate or coefficient cannot even be represented.
#: float32's largest finite value (``torch.finfo(torch.float32).max``, which a test checks),
#: written out so that checking a config never imports torch.
FLOAT_MAX = 3.4028234663852886e38
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
FINETUNE_STARTS = ("last", "dense")
#: When a run distils from theta* (:mod:`incop.core.distill`): never, in the fine-tune only,
#: or in every retraining level and the fine-tune.
DISTILL_PHASES = ("off", "finetune", "all")
PRUNE_COUNTS = ("adaptive", "frozen")
#: The one word target_remaining takes besides a number.
LIMIT_TARGET = "limit"


def max_threads() -> int:
    """The most CPU threads a run may ask for: 4 per core of this machine."""
    return 4 * (os.cpu_count() or 1)


def _model_names() -> list[str]:
    return [*MODELS.names(), "torchvision:<name>"]


@dataclass(frozen=True)
class RunOptions(NoOptions):
    """What to run, and where."""

    method: str = option(
        "incop-gf",
        "named method: sets pruner, stop and their options (see `incop list`)",
        choices=METHODS.names,
    )
    preset: str | None = option(
        None,
        "named settings for a whole experiment (the published protocol, cpu-small)",
        choices=PRESETS.names,
        checked=False,
    )
    model: str = option(
        "mlp",
        "registered model, torchvision:<name> where torchvision is installed, or your own as"
        " pkg.module:callable (called with no arguments)",
        choices=_model_names,
        checked=False,
    )
    dataset: str = option(
        "digits",
        "dataset; digits is embedded, the others read their standard files",
        choices=DATASETS.names,
    )
    data_dir: str | None = option(
        None, "folder with the dataset files (else $INCOP_DATA_DIR, else ~/.cache/incop/data)"
    )
    download: bool = option(False, "fetch missing dataset files and check their MD5 sums")
    seed: int = option(0, "fixes initial weights, data order, probe set and random pruning")
    device: str = option("auto", "where to train", choices=DEVICES, checked=False)
    threads: int | None = option(
        None,
        "CPU threads torch may use (none: torch's own choice, one per core); 1 on a"
        " machine other jobs share, where more threads wait on each other",
    )
    out: str | None = option(
        None, "run folder (default runs/<time>-<token>-<method>-<dataset>-<model>)"
    )
    log: list[str] = option(
        [],
        "loggers writing into the run folder besides metrics.jsonl: tensorboard (event files"
        " in tensorboard/, needs incop[tensorboard]), csv (metrics.csv)",
        choices=LOGGERS.names,
        checked=False,
    )

    def check(self) -> list[str]:
        problems = in_range("seed", self.seed, 0, MAX_SEED)
        threads = max_threads()
        if self.threads is not None and self.threads < 1:
            problems.append(
                not_allowed("threads", self.threads, "must be >= 1 (or none: torch's own choice)")
            )
        elif self.threads is not None and self.threads > threads:
            allowed = f"must be at most {threads} (4 per core of this machine)"
            problems.append(not_allowed("threads", self.threads, allowed))
        for name in ("out", "data_dir"):
            value = getattr(self, name)
            if isinstance(value, str) and "\x00" in value:
                problems.append(not_allowed(name, value, "a path cannot hold a NUL character"))
        named = self.model.startswith(("torchvision:", USER_MODEL)) or FACTORY.fullmatch(self.model)
        if not named and self.model not in MODELS:
            problems.append(unknown_value("model", self.model, MODELS.names()))
        device_problem = check_device(self.device)
        if device_problem:
            problems.append(not_allowed("device", self.device, device_problem))
        unknown = [name for name in self.log if name not in LOGGERS]
        if unknown:
            problems.append(
                f"log: unknown logger {', '.join(map(repr, unknown))}; allowed: "
                + ", ".join(LOGGERS.names())
            )
        if len(set(self.log)) < len(self.log):
            problems.append(not_allowed("log", self.log, "name each logger once"))
        return problems


@dataclass(frozen=True)
class ScheduleOptions(NoOptions):
    """The IMP schedule (METHOD.md section 1)."""

    levels: int = option(5, "pruning rounds K after the dense warm-up")
    warmup_epochs: int = option(10, "dense training epochs before the first prune")
    warmup_stop: str = option(
        "fixed",
        "when the warm-up ends: fixed (all warmup_epochs) or epi (once the first prune's mask"
        " stops changing; theta* is that epoch's weights)",
        choices=WARMUP_STOPS.names,
    )
    max_epochs: int = option(10, "cap E on the retraining epochs of a level")
    min_epochs: int = option(
        1,
        "a stopping rule never stops a level before this many epochs (0: may stop on the"
        " measurement right after rewinding)",
    )
    finetune_epochs: int = option(
        0,
        "after the last level, train the final ticket this many more epochs (masks kept,"
        " fresh optimiser and schedule), keeping the best validation epoch",
    )
    finetune_from: str = option(
        "last",
        "where the fine-tune starts: last (the last level's weights) or dense (the final"
        " mask applied to theta*, so that the final networks of two methods differ only by"
        " their masks)",
        choices=FINETUNE_STARTS,
    )
    stop: str = option("fixed", "stopping rule of a retraining phase", choices=STOPPING_RULES.names)

    def check(self) -> list[str]:
        problems = in_range("levels", self.levels, 0, MAX_LEVELS)
        for name in ("warmup_epochs", "max_epochs", "min_epochs", "finetune_epochs"):
            problems += in_range(name, getattr(self, name), 0, MAX_EPOCHS)
        if not problems and self.min_epochs > self.max_epochs:
            problems.append(f"min_epochs: {self.min_epochs} exceeds max_epochs {self.max_epochs}")
        if self.finetune_from != "last" and self.finetune_epochs == 0:
            problems.append(
                f"finetune_from: {self.finetune_from!r} would be ignored: finetune_epochs is 0"
            )
        return problems


@dataclass(frozen=True)
class DataOptions(NoOptions):
    """The data splits: validation is held out of the training split, the same for every run."""

    val_fraction: float = option(
        0.1,
        "share of each class of the training split held out for validation (built-in"
        " datasets; every decision reads validation, the test split is only reported)",
    )
    split_seed: int = option(
        0,
        "seed of the validation split, apart from the run's seed so that every method and"
        " seed of a comparison shares one validation set",
    )
    train_fraction: float = option(
        1.0,
        "share of each class of the rest of the training split that trains (drawn with"
        " split_seed); below 1 for quick studies on a CPU",
    )

    def check(self) -> list[str]:
        problems = in_range("split_seed", self.split_seed, 0, MAX_SEED)
        if not 0 < self.val_fraction < 1:
            problems.append(not_allowed("val_fraction", self.val_fraction, "must be in (0, 1)"))
        if not 0 < self.train_fraction <= 1:
            problems.append(not_allowed("train_fraction", self.train_fraction, "must be in (0, 1]"))
        return problems


@dataclass(frozen=True)
class TrainingOptions(NoOptions):
    """How every phase trains and evaluates."""

    precision: str = option(
        AUTO_PRECISION,
        "arithmetic of training and evaluation: fp32, or bf16 / fp16 autocast (fp16 on CUDA"
        " only, with a gradient scaler); auto: bf16 for a conv net on a CPU with native bf16"
        " (measured 0.7-0.8x the time, accuracy within the seed spread), else fp32; the"
        " choice is recorded in summary.json; flows are always measured in fp32",
        choices=(AUTO_PRECISION, *PRECISIONS),
    )
    channels_last: bool | None = option(
        None,
        "train convolutions in the channels_last memory layout (unset: on for models with a"
        " Conv2d, about 0.8x the time on CPU; the numbers computed are the same up to"
        " rounding)",
    )
    compile: bool = option(
        False, "train the model compiled with torch.compile (the first epochs pay the compilation)"
    )
    batch_size: int = option(64, "training batch size (the global batch when data parallel)")
    eval_batch_size: int | str = option(
        AUTO,
        "batch size for evaluation and flow measurements (auto: 128 for a model with a"
        " convolution, 256 for the rest, within about 15% of the fastest measured on CPU;"
        " recorded in summary.json)",
        words=(AUTO,),
    )
    metric: str = option(
        "accuracy",
        "the validation number every decision reads (best dense epoch, accuracy rule, flow"
        " rules' accuracy clause); loss suits any task, accuracy classification",
        choices=METRICS,
        checked=False,
    )
    on_divergence: str = option(
        "continue",
        "after a level whose loss became NaN or infinite: go on, or stop the run",
        choices=("continue", "stop"),
    )
    optimizer: str = option("sgd", "training optimiser", choices=OPTIMIZERS)
    lr: float = option(0.01, "learning rate")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(False, "Nesterov momentum for SGD")
    weight_decay: float = option(5e-4, "L2 weight decay")
    l1: float = option(
        0.0,
        "coefficient of the l1 term added to the training loss, over every weight and bias"
        " (LOMP; 0: none)",
    )
    schedule: str = option(
        "none",
        "learning-rate schedule of each phase (warm-up, every retraining level)",
        choices=SCHEDULES,
    )
    distill: str = option(
        "off",
        "knowledge distillation from theta* (the dense network, frozen): off, in the"
        " fine-tune, or in every retraining level and the fine-tune (all; TAS's student)",
        choices=DISTILL_PHASES,
    )
    distill_alpha: float = option(
        0.9, "distill: weight of the teacher's softened outputs against the labels (TAS: 0.9)"
    )
    distill_temperature: float = option(
        4.0, "distill: temperature T softening both networks' outputs (TAS: 4)"
    )

    def check(self) -> list[str]:
        problems = []
        if not 0 <= self.distill_alpha <= 1:
            problems.append(not_allowed("distill_alpha", self.distill_alpha, "must be in [0, 1]"))
        if not self.distill_temperature > 0:
            problems.append(
                not_allowed("distill_temperature", self.distill_temperature, "must be > 0")
            )
        if self.distill == "off":
            for name, default in (("distill_alpha", 0.9), ("distill_temperature", 4.0)):
                if getattr(self, name) != default:
                    problems.append(f"{name}: {getattr(self, name)!r} would be ignored: distill"
                                    " is 'off' (set distill finetune or all)")  # fmt: skip
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) != AUTO:
                problems += in_range(name, getattr(self, name), 1, MAX_COUNT)
        if self.lr <= 0:
            problems.append(not_allowed("lr", self.lr, "must be > 0"))
        for name in ("weight_decay", "l1"):
            if getattr(self, name) < 0:
                problems.append(not_allowed(name, getattr(self, name), "must be >= 0"))
        if self.l1 > 0 and self.weight_decay > 0:
            problems.append(
                f"weight_decay: {self.weight_decay!r} is not allowed with l1 {self.l1!r}: the l1"
                " term replaces weight decay (LOMP trains with weight decay 0); set"
                " weight_decay 0"
            )
        if not 0 <= self.momentum < 1:
            problems.append(not_allowed("momentum", self.momentum, "must be in [0, 1)"))
        if not self.metric.startswith(CALLABLE_PREFIX) and self.metric not in METRICS:
            problems.append(unknown_value("metric", self.metric, METRICS))
        return problems


@dataclass(frozen=True)
class PruningOptions(NoOptions):
    """What every pruner shares: which weights, in what scope, how ranked, to what target."""

    pruner: str = option("sap", "which weights to remove and how many", choices=PRUNERS.names)
    scope: str = option(
        "global",
        "where weights compete: all together, per tensor, (SAP) per output unit, or channel:"
        " whole output units by their L2 norm, the classifier kept (docs/channel.md)",
        choices=("global", "layer", "neuron", "channel"),
        checked=False,
    )
    include: list[str] = option(
        [], "shell patterns of weights to prune instead of every Conv/Linear weight"
    )
    exclude: list[str] = option([], "shell patterns of weights never to prune, e.g. fc3.weight")
    score: str = option(
        "magnitude",
        "how the magnitude pruners (lth, sap; global scope) rank weights: magnitude |w|, or"
        " flow-guided: |w| times its layer's information-flow fragility (docs/flow-guided.md)",
        choices=SCORES.names,
    )
    target_remaining: float | str | None = option(
        None,
        "where pruning ends, as a fraction of the prunable weights (global scope), or limit:"
        " the pruning limit predicted on theta* after the warm-up. With levels 1, prune once,"
        " straight to it (synflow and snip need it, lth and random take it instead of rate);"
        " with more levels each prune is capped at it and the run ends there",
        words=(LIMIT_TARGET,),
    )
    prune_counts: str = option(
        "adaptive",
        "how many weights each level keeps: adaptive (as the pruner decides) or frozen (each"
        " tensor keeps as many as the run counts_from did at that level, so every method"
        " reaches the same sparsity at every level; the pruner still chooses which)",
        choices=PRUNE_COUNTS,
    )
    counts_from: str | None = option(
        None, "prune_counts frozen: the finished run folder whose per-level counts are kept"
    )

    def check(self) -> list[str]:
        if self.prune_counts == "frozen" and self.counts_from is None:
            return ["prune_counts: 'frozen' needs counts_from (--counts-from RUN), the run"
                    " whose counts every level keeps"]  # fmt: skip
        if self.prune_counts != "frozen" and self.counts_from is not None:
            return [f"counts_from: {self.counts_from!r} would be ignored: prune_counts is"
                    f" {self.prune_counts!r} (set prune_counts frozen)"]  # fmt: skip
        if isinstance(self.counts_from, str) and "\x00" in self.counts_from:
            return [not_allowed("counts_from", self.counts_from, "a path cannot hold a NUL")]
        return []


def check_device(name: str) -> str | None:
    """Why ``name`` is not a device this machine can run on, or None if it is."""
    allowed = "allowed: auto, cpu, cuda, cuda:N, mps"
    if name in ("auto", "cpu"):
        return None
    # Only here: asking the hardware needs torch, checking the other settings does not.
    import torch

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
