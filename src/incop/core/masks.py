"""Masks over a model's prunable tensors (METHOD.md section 1, "Prunable tensors").

A mask set is a plain ``dict[str, torch.BoolTensor]`` keyed by parameter name
(as in ``model.named_parameters()``), each mask the shape of its parameter,
``True`` where the weight is alive. Order is registry order: the order of
``named_parameters()``, which every per-layer vector in the project follows.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from incop.core import inputs
from incop.core.registry import closest

Masks = dict[str, torch.Tensor]

#: Layers whose ``weight`` is prunable by default.
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Weights of other modules prunable by default: attribute name per module type. Attention's
#: packed q/k/v projection (its out_proj is a Linear, pruned as every Linear).
PRUNABLE_ATTRIBUTES: dict[type[nn.Module], str] = {nn.MultiheadAttention: "in_proj_weight"}


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def prunable_modules(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[str, nn.Module]:
    """Modules whose weight is pruned, keyed by parameter name (``"<module>.weight"``, or
    ``"<module>.in_proj_weight"`` for attention's packed projection).

    By default every Conv/Linear weight and every ``MultiheadAttention.in_proj_weight``
    (:data:`PRUNABLE_ATTRIBUTES`; with separate q/k/v weights, attention is not pruned by
    default). ``include`` (shell-style patterns on the
    parameter name, e.g. ``"features.*"``) replaces the default choice with every
    module weight of dimension > 1 that matches, so layers of any type can be
    pruned; ``exclude`` patterns then remove names (e.g. ``"fc3.weight"``).
    Order: ``model.named_modules()`` order.
    """
    found: dict[str, nn.Module] = {}
    for module_name, module in model.named_modules():
        attribute = PRUNABLE_ATTRIBUTES.get(type(module), "weight")
        weight = getattr(module, attribute, None)
        if not isinstance(weight, nn.Parameter) or weight.dim() <= 1:
            continue
        name = f"{module_name}.{attribute}" if module_name else attribute
        default = isinstance(module, PRUNABLE_TYPES) or type(module) in PRUNABLE_ATTRIBUTES
        chosen = _matches(name, include) if include else default
        if chosen and not (exclude and _matches(name, exclude)):
            found[name] = module
    return found


def _weight_names(model: nn.Module) -> list[str]:
    """Names of every module weight of dimension > 1: what ``include`` patterns can choose."""
    return list(prunable_modules(model, include=["*"]))


def _unmatched(option: str, patterns: Sequence[str], names: list[str], noun: str) -> list[str]:
    return [
        f"{option}: pattern {pattern!r} matches no {noun}{closest(pattern, names)};"
        f" the model's are: {', '.join(names[:8])}"
        + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        for pattern in patterns
        if not any(_matches(name, [pattern]) for name in names)
    ]


def unmatched_patterns(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[str]:
    """One message per ``include`` pattern matching no weight of ``model`` and per ``exclude``
    pattern matching no weight ``include`` chose: a typo there would silently prune (or keep)
    something else, so the loop refuses it."""
    return _unmatched("include", include or [], _weight_names(model), "weight") + _unmatched(
        "exclude", exclude or [], list(prunable_modules(model, include)), "weight"
    )


def unmatched_layer_patterns(
    model: nn.Module,
    skip: Sequence[str],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> list[str]:
    """One message per ``if_skip`` pattern matching no prunable layer's module name."""
    layers = [name.rpartition(".")[0] for name in prunable_modules(model, include, exclude)]
    return _unmatched("if_skip", skip, layers, "prunable layer")


def prunable_parameters(
    model: nn.Module,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
) -> dict[str, nn.Parameter]:
    """The prunable weights themselves, same keys and order as :func:`prunable_modules`."""
    return {name: model.get_parameter(name) for name in prunable_modules(model, include, exclude)}


def full_masks(params: dict[str, nn.Parameter]) -> Masks:
    """All-ones masks (nothing pruned) for ``params``, contiguous whatever the parameters'
    memory layout (pruners index masks through flat views)."""
    return {
        name: torch.ones(p.shape, dtype=torch.bool, device=p.device) for name, p in params.items()
    }


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask as bits, 8 to a byte (uint8, shape (ceil(numel / 8),), on the CPU)."""
    return torch.from_numpy(np.packbits(mask.detach().cpu().flatten().numpy()))


def unpack_mask(bits: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The bool mask of ``shape`` that :func:`pack_mask` packed into ``bits``."""
    numel = int(np.prod(shape))
    return torch.from_numpy(np.unpackbits(bits.cpu().numpy(), count=numel).astype(bool)).view(
        *shape
    )


def count_alive(masks: Masks) -> int:
    return int(sum(int(m.sum()) for m in masks.values()))


def count_total(masks: Masks) -> int:
    return int(sum(m.numel() for m in masks.values()))


def remaining_fraction(masks: Masks) -> float:
    """Alive / prunable weights, in [0, 1]."""
    total = count_total(masks)
    return count_alive(masks) / total if total else 1.0


class MaskEnforcer:
    """Keeps pruned weights exactly zero through training.

    Call :meth:`mask_gradients` after every ``backward()``: one fused multiply of the
    gradients by float masks (cached, rebuilt when a mask tensor is replaced), skipping the
    tensors whose mask is all ones (the whole dense warm-up: nothing to mask). Call
    :meth:`after_step` whenever the masks change (a prune, a rewind, a resume), and as a
    guard once an epoch: it multiplies the weights and every optimiser state tensor of a
    weight's shape (momentum, Adam's moments) by the mask. In between, a masked gradient
    keeps a zero weight with zero state at zero under SGD (momentum, Nesterov, weight decay)
    and Adam/AdamW, so nothing is re-masked per step. Optimisers that move weights with a
    zero gradient need :meth:`after_step` after every step, as :func:`incop.apply_masks`
    does when given the optimiser.
    """

    def __init__(self, params: dict[str, nn.Parameter], masks: Masks) -> None:
        self.params = params
        self.masks = masks
        self._float: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _float_mask(self, name: str) -> torch.Tensor | None:
        """The float mask of ``name``; None where every weight is alive (nothing to mask)."""
        mask = self.masks[name]
        cached = self._float.get(name)
        if cached is None or cached[0] is not mask:
            floats = None if bool(mask.all()) else mask.to(self.params[name].dtype)
            cached = (mask, floats)
            self._float[name] = cached
        return cached[1]

    @torch.no_grad()
    def mask_gradients(self) -> None:
        pairs = [(p.grad, f) for name, p in self.params.items()
                 if p.grad is not None and (f := self._float_mask(name)) is not None]  # fmt: skip
        if pairs:
            grads, floats = zip(*pairs, strict=True)
            torch._foreach_mul_(list(grads), list(floats))

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer) -> None:
        for name, p in self.params.items():
            mask = self.masks[name]
            p.mul_(mask)
            for value in optimizer.state.get(p, {}).values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    value.mul_(mask)


@dataclass(frozen=True)
class LayerSparsity:
    """One prunable tensor: sizes in weights, cost in multiply-accumulates per example."""

    name: str
    shape: tuple[int, ...]
    total: int
    alive: int
    macs_dense: int
    macs_pruned: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.alive / self.total if self.total else 0.0


@dataclass(frozen=True)
class SparsityReport:
    """Per-layer sparsity and what pruning buys.

    ``compression`` is prunable weights / alive weights (e.g. 10.0 = 10x fewer);
    ``macs_fraction`` is the pruned network's multiply-accumulates over the dense
    one's, counted over the prunable layers from the nonzero weights (a pruned
    weight saves its MAC at every output position it is applied at).
    """

    layers: list[LayerSparsity]

    @property
    def total(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def alive(self) -> int:
        return sum(layer.alive for layer in self.layers)

    @property
    def remaining_fraction(self) -> float:
        return self.alive / self.total if self.total else 1.0

    @property
    def compression(self) -> float:
        return self.total / self.alive if self.alive else float("inf")

    @property
    def macs_dense(self) -> int:
        return sum(layer.macs_dense for layer in self.layers)

    @property
    def macs_pruned(self) -> int:
        return sum(layer.macs_pruned for layer in self.layers)

    @property
    def macs_fraction(self) -> float:
        return self.macs_pruned / self.macs_dense if self.macs_dense else 1.0

    def format(self) -> str:
        """A plain-text table, one row per layer and a total row."""
        rows = [f"{'layer':<32} {'shape':<18} {'alive':>10} {'total':>10} {'sparsity':>9}"]
        for layer in self.layers:
            shape = "x".join(map(str, layer.shape))
            rows.append(
                f"{layer.name:<32} {shape:<18} {layer.alive:>10} {layer.total:>10}"
                f" {layer.sparsity:>8.1%}"
            )
        rows.append(
            f"{'total':<32} {'':<18} {self.alive:>10} {self.total:>10}"
            f" {1 - self.remaining_fraction:>8.1%}"
        )
        rows.append(
            f"compression {self.compression:.2f}x, MACs {self.macs_fraction:.1%} of dense"
            f" ({self.macs_pruned:,} / {self.macs_dense:,} per example)"
        )
        return "\n".join(rows)


@contextmanager
def attention_unfused() -> Iterator[None]:
    """Within it, transformer layers run their modules one by one: their fused inference fast
    path (eval mode, no gradient) would skip every hook on the layers inside them."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    enabled = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(enabled)


@torch.no_grad()
def sparsity_report(model: nn.Module, masks: Masks, example_input: Any) -> SparsityReport:
    """Sparsity and MACs of ``model`` under ``masks``.

    ``example_input`` is one batch's inputs (any batch size, shape ``(B, ...)``; a tuple or
    dict of them as :mod:`incop.core.inputs` says) used only
    to learn each layer's number of output positions; MACs are per example.
    """
    modules = {name: module for name, module in model.named_modules()}
    owners = {name: modules[name.rsplit(".", 1)[0]] if "." in name else model for name in masks}
    examples = inputs.count(example_input)
    positions: dict[str, int] = {}
    watched: dict[nn.Module, tuple[list[str], int]] = {}
    for name, module in owners.items():
        parent = modules.get(name.rsplit(".", 2)[0]) if name.count(".") >= 2 else None
        if isinstance(parent, nn.MultiheadAttention) and module is parent.out_proj:
            # Attention computes out_proj functionally (its forward never runs): counted with
            # the attention's own call, one position per token as the packed projection.
            module = parent
        width = module.embed_dim if isinstance(module, nn.MultiheadAttention) else None
        names, _ = watched.get(module, ([], 0))
        watched[module] = ([*names, name], width or model.get_parameter(name).shape[0])

    def hook(names: list[str], width: int):
        def record(_module, _inputs, output):
            output = output[0] if isinstance(output, tuple | list) else output
            per_example = output.numel() // max(examples, 1) if output.dim() > 0 else 1
            for name in names:
                # A module called several times per forward pass costs its MACs every time.
                positions[name] = positions.get(name, 0) + max(per_example // width, 1)

        return record

    handles = [m.register_forward_hook(hook(*held)) for m, held in watched.items()]
    was_training = model.training
    model.eval()
    try:
        with attention_unfused():
            inputs.call(model, example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    layers = []
    for name, mask in masks.items():
        pos = positions.get(name, 1)
        alive = int(mask.sum())
        layers.append(
            LayerSparsity(
                name=name,
                shape=tuple(mask.shape),
                total=mask.numel(),
                alive=alive,
                macs_dense=mask.numel() * pos,
                macs_pruned=alive * pos,
            )
        )
    return SparsityReport(layers)
