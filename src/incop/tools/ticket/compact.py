"""Remove dead units (issue 11): a smaller dense model with the ticket's outputs.

A unit (Conv output channel, Linear output neuron) with no alive weight outputs a constant,
its bias passed through whatever follows (BatchNorm, ReLU, pooling). Torch-Pruning's
dependency graph says which layers share the unit's channel (BatchNorm, the next layers'
inputs, the layers tied to it by residual additions); the unit is removed where that is
exact: every layer producing the channel is dead in it, and each layer reading it sees zero,
or a constant it can fold into its bias (a Linear layer, or a Conv without padding), or reads
it with zero weights. A residual block whose parameters are all zero (TAS's removed depth) is
replaced by what it computes, relu(x) or x. The result is checked against the ticket on
random inputs before it is returned.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from incop.core import inputs
from incop.errors import UserError

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        raise UserError(
            'removing dead units needs Torch-Pruning: pip install "incop[compact]"'
        ) from None
    return torch_pruning


@dataclass(frozen=True)
class Compacted:
    """A compacted model, how many units each layer lost (module name -> count), and the
    residual blocks it skips (every parameter zero: replaced by what they compute)."""

    model: nn.Module
    removed: dict[str, int]
    skipped: list[str] = field(default_factory=list)


def _dead_rows(layer: nn.Module) -> torch.Tensor:
    return (layer.weight.detach().flatten(1) == 0).all(dim=1)


def _layer_inputs(model: nn.Module, example: Any) -> dict[nn.Module, torch.Tensor]:
    """What every Conv/Linear layer reads, on ``example``."""
    seen: dict[nn.Module, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: seen.setdefault(mod, args[0].detach()))
        for m in model.modules()
        if isinstance(m, LAYERS)
    ]
    try:
        with torch.no_grad():
            inputs.call(model, example)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def random_like(example: Any, n: int, seed: int = 1) -> Any:
    """``n`` random examples shaped as ``example``'s: normal floats, integers 0 or 1 (token
    ids every vocabulary has, attention masks)."""
    g = torch.Generator().manual_seed(seed)

    def draw(t: torch.Tensor) -> torch.Tensor:
        shape = (n, *t.shape[1:])
        if t.is_floating_point():
            return torch.randn(shape, generator=g, dtype=t.dtype)
        return torch.randint(0, 2, shape, generator=g, dtype=t.dtype)

    return inputs.apply(example, draw)


def _constants(x: torch.Tensor, idxs: list[int]) -> torch.Tensor | None:
    """The constant each of the channels ``idxs`` of ``x`` (B, C, ...) holds, or None where
    one of them varies over the batch or the positions."""
    values = x[:, idxs].transpose(0, 1).flatten(1)
    if not torch.equal(values.amax(dim=1), values.amin(dim=1)):
        return None
    return values[:, 0]


def _foldable(layer: nn.Module) -> bool:
    return (
        isinstance(layer, nn.Linear)
        or (all(p == 0 for p in layer.padding) if not isinstance(layer.padding, str) else False)
        and layer.groups == 1
    )


@torch.no_grad()
def _fold(layer: nn.Module, idxs: list[int], constants: torch.Tensor) -> None:
    """Add what the constant inputs ``idxs`` contribute to ``layer``'s bias."""
    weight = (
        layer.weight[:, idxs].flatten(2).sum(dim=2)
        if layer.weight.dim() > 2
        else layer.weight[:, idxs]
    )
    shift = weight @ constants.to(weight.dtype)
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros_like(shift))
    layer.bias += shift


@dataclass(frozen=True)
class _Trace:
    """One look at the model: Torch-Pruning, the layers to keep, what each layer reads on the
    probe, and which of its rows are dead."""

    tp: Any
    kept: list[nn.Module]
    inputs: dict[nn.Module, torch.Tensor]
    dead: dict[nn.Module, torch.Tensor]


def _removable(group, trace: _Trace) -> list[tuple[nn.Module, list[int], torch.Tensor]] | None:
    """The folds removing ``group`` needs (layer, input idxs, constants), or None if removing
    it would change the outputs."""
    tp = trace.tp
    folds = []
    for item in group:
        module, handler, idxs = item.dep.target.module, item.dep.handler, list(item.idxs)
        if not isinstance(module, LAYERS):
            continue
        if handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
            if module in trace.kept or not trace.dead[module][idxs].all():
                return None
        elif handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
            if not module.weight[:, idxs].any():
                continue  # it reads them with zero weights: whatever they hold adds nothing
            constants = _constants(trace.inputs[module], idxs)
            if constants is None:
                return None
            if constants.any():
                if not _foldable(module):
                    return None
                folds.append((module, idxs, constants))
    return folds


def _removable_units(idxs: list[int], group_of, trace: _Trace) -> list[int]:
    """The units of ``idxs`` that can go: all of them if their group can, else those of each
    half (bisection: few groups are traced when most units can go, or none)."""
    if not idxs or _removable(group_of(idxs), trace) is not None:
        return idxs
    if len(idxs) == 1:
        return []
    half = len(idxs) // 2
    return _removable_units(idxs[:half], group_of, trace) + _removable_units(
        idxs[half:], group_of, trace
    )


def compact(model: nn.Module, example_input: Any, *, keep: list[str] | None = None) -> Compacted:
    """A copy of ``model`` (a ticket: pruned weights zero) without its dead units.

    ``example_input``: a batch like the model's inputs (B, ...; a tuple or dict of tensors
    as :mod:`incop.core.inputs` says), to trace the graph; the constants dead units produce
    are read on random inputs of its shapes. ``keep``: names of
    the layers whose outputs must stay (default: the last Conv/Linear layer, the
    classifier). A layer always keeps at least one unit. Raises :class:`UserError` if
    Torch-Pruning is missing, and RuntimeError if the result's outputs differ from the
    ticket's by more than 1e-5 (relative to their scale) on random inputs.
    """
    tp = _torch_pruning()
    compacted = copy.deepcopy(model).eval()
    probe = random_like(example_input, 4)
    skipped = _skip_dead_blocks(compacted, probe)
    layers = {name: m for name, m in compacted.named_modules() if isinstance(m, LAYERS)}
    if not layers:
        raise UserError("compact: the model has no Conv or Linear layer")
    keep = keep if keep is not None else [list(layers)[-1]]
    unknown = [name for name in keep if name not in layers]
    if unknown:
        raise UserError(f"compact: keep names no Conv/Linear layer: {', '.join(unknown)}")
    kept = [layers[name] for name in keep]
    removed: dict[str, int] = {}
    # One layer at a time: removing units reshapes the graph, so it is traced again after.
    while (step := _compact_one(compacted, layers, kept, example_input, probe, tp)) is not None:
        name, count = step
        removed[name] = removed.get(name, 0) + count
    _check_same(model, compacted, probe)
    return Compacted(compacted, removed, skipped)


def _skip_dead_blocks(model: nn.Module, probe: Any) -> list[str]:
    """Replace every residual block with an identity shortcut (``downsample`` None) whose
    parameters are all zero by what it then computes: ``relu(x + 0)`` (``nn.ReLU``) or
    ``x + 0`` (``nn.Identity``), whichever gives its outputs exactly on the probe (a block
    past the depth TAS searched). Returns their names."""
    dead = [
        (name, module)
        for name, module in model.named_modules()
        if name
        and getattr(module, "downsample", 1) is None
        and any(True for _ in module.parameters())
        and not any(p.any() for p in module.parameters())
    ]
    if not dead:
        return []
    seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module, args, output):
        seen.setdefault(module, (args[0].detach(), output.detach()))

    hooks = [module.register_forward_hook(record) for _, module in dead]
    try:
        with torch.no_grad():
            inputs.call(model, probe)
    finally:
        for hook in hooks:
            hook.remove()
    skipped = []
    for name, module in dead:
        if module not in seen:
            continue
        x, out = seen[module]
        for replacement in (nn.ReLU(), nn.Identity()):
            if torch.equal(replacement(x), out):
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, replacement)
                skipped.append(name)
                break
    return skipped


def _compact_one(model, layers, kept, example_input, probe, tp) -> tuple[str, int] | None:
    """Remove the removable dead units of the first layer that has some: (its name, how
    many), or None when no layer has any."""
    graph = tp.DependencyGraph().build_dependency(
        model, example_inputs=example_input, verbose=False
    )
    dead = {m: _dead_rows(m) for m in model.modules() if isinstance(m, LAYERS)}
    trace = _Trace(tp, kept, _layer_inputs(model, probe), dead)
    for name, layer in layers.items():
        if layer in kept:
            continue
        rows = dead[layer].nonzero().squeeze(1).tolist()
        if len(rows) == layer.weight.shape[0]:
            rows = rows[1:]
        linear = isinstance(layer, nn.Linear)
        prune_out = tp.prune_linear_out_channels if linear else tp.prune_conv_out_channels
        ok = _removable_units(
            rows,
            lambda idxs, layer=layer, fn=prune_out: graph.get_pruning_group(layer, fn, idxs),
            trace,
        )
        if ok:
            group = graph.get_pruning_group(layer, prune_out, ok)
            for module, idxs, constants in _removable(group, trace):
                _fold(module, idxs, constants)
            group.prune()
            return name, len(ok)
    return None


@torch.no_grad()
def _check_same(original: nn.Module, compacted: nn.Module, probe: Any) -> None:
    was_training = original.training
    expected = inputs.logits(inputs.call(original.eval(), probe))
    original.train(was_training)
    got = inputs.logits(inputs.call(compacted, probe))
    scale = expected.abs().max().clamp_min(1.0)
    if (got - expected).abs().max() > 1e-5 * scale:
        raise RuntimeError("compact: the compacted model's outputs differ from the ticket's")
