"""``tas``: the one prune of TAS (Dong & Yang 2019; TAS.md A9, docs/tas.md): search the widths
and depths of the network under a MACs target, then start its student.

Run as method ``tas``: the dense warm-up is the teacher theta*; this pruner's one prune runs
the search (:func:`incop.methods.tas.tas_search`) on a fresh copy of the model, returns the
argmax architecture as masks (whole channels of every group, every layer of the blocks past
their stage's depth) and initialises the student in the model: afresh at its smaller shapes
(``tas_init: scratch``, TAS) or from the searched weights (``searched``). Level 1 then trains
it, distilling from theta* (``distill: all``). The parameters of removed blocks stay zero, so
the network computes exactly what ``incop export --format compact`` makes of it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from incop.core.options import MAX_COUNT, NoOptions, in_range, not_allowed, option
from incop.errors import UserError
from incop.methods import tas
from incop.methods.at_init import NetworkScored, PruneContext
from incop.methods.pruning import PRUNERS, PrunerComponent, Weights
from incop.methods.tas.optimiser import ARCH_LR, WeightOptimiser

if TYPE_CHECKING:
    import torch
    from torch import nn

    from incop.core.masks import Masks


@dataclass(frozen=True)
class TASOptions(NoOptions):
    flop_ratio: float = option(
        0.5, "tas: the target MACs of the pruned network over the dense one's, in (0, 1]"
    )
    tas_epochs: int = option(30, "tas: epochs of the architecture search")
    tas_init: str = option(
        "scratch",
        "tas: the student's initial weights: scratch (a fresh init at its smaller shapes, as"
        " TAS) or searched (the search's weights)",
        choices=("scratch", "searched"),
    )
    tas_search_init: str = option(
        "scratch",
        "tas: the supernet's initial weights: scratch (a fresh init, as TAS) or dense (theta*)",
        choices=("scratch", "dense"),
    )
    tas_arch_lr: float = option(
        ARCH_LR,
        "tas: Adam's learning rate for the architecture logits (TAS: 1e-3 over ~59k steps;"
        " 0.05 settles in the cost band within incop's budgets, docs/tas.md)",
    )
    tas_tolerance: float = option(
        0.05, "tas: the cost band's width below the target, as a fraction of the dense MACs"
    )
    tas_flop_weight: float = option(2.0, "tas: weight of the cost loss in the architecture loss")
    tas_search_depth: bool = option(
        True, "tas: search the depth of every stage of residual blocks as well as the widths"
    )

    def check(self) -> list[str]:
        problems = []
        if not (math.isfinite(self.flop_ratio) and 0 < self.flop_ratio <= 1):
            problems.append(not_allowed("flop_ratio", self.flop_ratio, "must be in (0, 1]"))
        problems += in_range("tas_epochs", self.tas_epochs, 1, MAX_COUNT)
        if not self.tas_arch_lr > 0:
            problems.append(not_allowed("tas_arch_lr", self.tas_arch_lr, "must be > 0"))
        if not 0 <= self.tas_tolerance < 1:
            problems.append(not_allowed("tas_tolerance", self.tas_tolerance, "must be in [0, 1)"))
        if not self.tas_flop_weight >= 0:
            problems.append(not_allowed("tas_flop_weight", self.tas_flop_weight, "must be >= 0"))
        return problems


#: What the loop must do around the one prune for TAS: (setting, allowed, why).
_AROUND = (
    ("levels", (1,), "tas searches once"),
    ("stop", ("fixed",), "level 1 trains the student for max_epochs"),
    ("target_remaining", (None,), "tas reaches flop_ratio of the MACs instead"),
    ("prune_counts", ("adaptive",), "tas chooses whole channels, not counts"),
    ("score", ("magnitude",), "tas searches instead of scoring weights"),
    ("warmup_stop", ("fixed",), "the teacher is the whole warm-up's theta*"),
    ("rewind", ("lr", "none"), "the student starts as tas_init says"),
)


@dataclass
class TASPruner(NetworkScored, PrunerComponent):
    """TAS's search as one prune (``levels: 1``); its ``state_dict`` is what it found."""

    Options = TASOptions
    by_magnitude = False
    scopes = ("global",)

    options: TASOptions = field(default_factory=TASOptions)
    optimiser: WeightOptimiser = field(default_factory=WeightOptimiser)
    batch_size: int = 64
    seed: int = 0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    context: PruneContext | None = None
    record: dict[str, Any] = field(default_factory=dict)
    #: FLOPs the search spent (the loop counts them with the level's training).
    search_flops: float = 0.0
    #: The removed blocks' parameters (found from ``record`` on first use).
    frozen: list[str] | None = field(default=None, repr=False)

    @classmethod
    def from_options(cls, options: TASOptions, config: Any) -> TASPruner:
        optimiser = WeightOptimiser(config.optimizer, config.lr, config.momentum,
                                        config.nesterov, config.weight_decay)  # fmt: skip
        return cls(options, optimiser, config.batch_size, config.seed,
                   tuple(config.include), tuple(config.exclude))  # fmt: skip

    @classmethod
    def check_config(cls, config: Any) -> list[str]:
        problems = []
        for name, allowed, why in _AROUND:
            value = getattr(config, name, allowed[0])
            if value not in allowed:
                shown = " or ".join(repr(a) if a is not None else "unset" for a in allowed)
                problems.append(f"{name}: {value!r} is not allowed with the tas pruner ({why});"
                                f" allowed: {shown}")  # fmt: skip
        if config.max_epochs < 1:
            problems.append(f"max_epochs: {config.max_epochs} is not allowed with the tas pruner:"
                            " level 1 trains the student for max_epochs; give >= 1")  # fmt: skip
        return problems

    def _layers(self, model: nn.Module) -> list[str]:
        from incop.core.masks import PRUNABLE_TYPES, prunable_modules

        chosen = prunable_modules(model, list(self.include) or None, list(self.exclude) or None)
        return [n.rpartition(".")[0] for n, m in chosen.items() if isinstance(m, PRUNABLE_TYPES)]

    def bind(self, context: PruneContext) -> TASPruner:
        """Bound to the run's network; refuses one with nothing to search, before training."""
        if context.world.size > 1:
            raise UserError("tas: a data-parallel run is not supported: the search runs in one"
                            " process; run it without torchrun")  # fmt: skip
        tas.search_space(context.model, context.example_input, self._layers(context.model),
                         depth=self.options.tas_search_depth)  # fmt: skip
        return replace(self, context=context)

    def __call__(self, weights: Weights, masks: Masks, generator: torch.Generator) -> Masks:
        import torch

        context, o = self._context(), self.options
        model = context.model
        init_fn = context.init_fn or tas.default_init
        result = tas.tas_search(
            model, context.train_data, flop_ratio=o.flop_ratio, epochs=o.tas_epochs,
            example_input=context.example_input, batch_size=self.batch_size,
            flop_weight=o.tas_flop_weight, tolerance=o.tas_tolerance,
            search_depth=o.tas_search_depth, search_init=o.tas_search_init,
            arch_lr=o.tas_arch_lr, optimiser=None if self._has_norm(model) else self.optimiser,
            init_fn=init_fn, loss_fn=context.loss_fn, output_fn=context.output_fn,
            layers=self._layers(model), seed=self.seed, log=context.log,
        )  # fmt: skip
        found = {name: masks[name] & result.masks[name] if name in result.masks else masks[name]
                 for name in masks}  # fmt: skip
        with torch.no_grad():
            if o.tas_init == "scratch":
                tas.scratch_init(model, found, init_fn)
            else:
                model.load_state_dict(result.model.state_dict())
        tas.apply_architecture(model, found, result.removed)
        self.search_flops += result.flops
        self.frozen = None
        self.record.update(
            flop_ratio=o.flop_ratio, widths=result.widths, depths=result.depths,
            macs_fraction=result.macs_fraction,
            expected_macs_fraction=result.expected_macs_fraction, derived=result.derived,
            converged=result.converged, removed=result.removed, history=result.history,
            alphas=result.alphas, betas=result.betas, search_flops=result.flops,
        )  # fmt: skip
        if not result.converged:
            warnings.warn(
                "tas: the search ended unconverged (most distributions' largest probability"
                " within 0.1 of the next): the argmax widths are close to a draw; more"
                " tas_epochs or a larger tas_arch_lr concentrate them",
                RuntimeWarning,
                stacklevel=2,
            )
        return found

    @staticmethod
    def _has_norm(model: nn.Module) -> bool:
        return any(isinstance(m, tas.NORMS) for m in model.modules())

    def after_backward(self, model: nn.Module, masks: Masks, state: Any) -> None:
        """The removed blocks' parameters stay zero: no gradient, so no update or decay."""
        if self.frozen is None:
            self.frozen = tas.removed_parameters(model, self.record.get("removed", []))
        for name in self.frozen:
            model.get_parameter(name).grad = None

    def state_dict(self) -> dict[str, Any]:
        return dict(self.record)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.record, self.frozen = dict(state), None
        self.search_flops = float(state.get("search_flops", 0.0))


PRUNERS.register("tas", "TAS: search widths and depths under a MACs target (Dong & Yang 2019)")(
    TASPruner
)
