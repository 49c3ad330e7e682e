"""Information flow and gradient flow on a fixed probe set (METHOD.md section 4).

Both are measured with the network in eval mode and no parameter update, in
one pass over the probe batches. Unlike the research code, IF never stores
activations nor re-reads the training set, and GF runs its own backward pass
on the probe set (no stale ``.grad`` from the last training step).
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise as pairs

import torch
import torch.nn.functional as F
from torch import nn

from incop.core import inputs as model_inputs
from incop.core.batches import Batch, LossFn
from incop.core.inputs import OutputFn
from incop.core.masks import Masks, prunable_modules
from incop.core.registry import closest
from incop.errors import UserError

#: Residual projections, left out by default: the information flow follows the main path
#: (METHOD.md section 4).
IF_SKIP = ["*downsample*", "*shortcut*"]

FLOW_SUMMARIES = ("mean", "abs-mean")
#: Sums a tensor over the processes that share a measurement (data parallel), e.g. World.sum.
Reduce = Callable[[torch.Tensor], torch.Tensor]

DISTANCES = ("l2", "relative", "cosine")


@dataclass(frozen=True)
class Flow:
    """The information flow of a network on a probe set.

    ``layers``: the L measured module names, in forward execution order.
    ``matrices``: the L-1 correlation matrices C_l of consecutive layers, float64,
    shape ``(C_l, C_{l+1})`` (channels / output features), entries in [-1, 1].
    ``vector``: float64 of shape ``(L-1,)``, one summary s(C_l) per pair.
    """

    matrices: list[torch.Tensor]
    vector: torch.Tensor
    layers: list[str]


def _model_device(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _check_choice(option: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise UserError(f"{option}: unknown value {value!r}; allowed: {', '.join(allowed)}")


def _measured_modules(
    model: nn.Module, layers: Sequence[str] | None, skip: Sequence[str]
) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    if layers is None:
        names = [param_name.rpartition(".")[0] for param_name in prunable_modules(model)]
        return {
            n: modules[n]
            for n in names
            if not any(fnmatch.fnmatchcase(n, pattern) for pattern in skip)
        }
    unknown = [n for n in layers if n not in modules]
    if unknown:
        raise UserError(
            f"layers: no module named {unknown[0]!r}{closest(unknown[0], list(modules))}"
        )
    return {n: modules[n] for n in layers}


def _per_channel(output: torch.Tensor, name: str) -> torch.Tensor:
    """(B, C, *) layer output -> (B, C) float64, averaging the positions ``*``."""
    if not torch.is_tensor(output) or output.dim() < 2:
        raise UserError(f"layer {name!r}: output is not a batched (B, C, ...) tensor")
    # float64 reduction: a constant (dead) channel stays exactly constant.
    return output.flatten(2).mean(2, dtype=torch.float64) if output.dim() > 2 else output.double()


def _correlation(
    s1: tuple[torch.Tensor, torch.Tensor],
    s2: tuple[torch.Tensor, torch.Tensor],
    cross: torch.Tensor,
    n: int,
) -> torch.Tensor:
    """Pearson correlation (population statistics) from the sums of two layers."""
    mean_a, mean_b = s1[0] / n, s2[0] / n
    # Clamp: cancellation can leave a tiny negative variance.
    std_a = (s1[1] / n - mean_a**2).clamp_min(0).sqrt()
    std_b = (s2[1] / n - mean_b**2).clamp_min(0).sqrt()
    cov = cross / n - torch.outer(mean_a, mean_b)
    denom = torch.outer(std_a, std_b)
    return torch.where(denom > 0, cov / denom.where(denom > 0, 1.0), 0.0)


@torch.no_grad()
def information_flow(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    layers: Sequence[str] | None = None,
    summary: str = "mean",
    skip: Sequence[str] = ("*downsample*", "*shortcut*"),
    device: torch.device | str | None = None,
    origin: torch.Tensor | None = None,
    reduce: Reduce | None = None,
) -> Flow:
    """IF of ``model`` over ``batches`` of ``(inputs (B, ...), targets)`` (targets unused).

    Layers: by default the prunable (Conv/Linear) modules whose name matches no
    ``skip`` pattern (shell-style, on the module name; ``skip=()`` keeps residual
    projections); or the modules named in ``layers`` (``skip`` not applied).
    Either way they are ordered by when their forward hooks first fire on the
    first batch, so residual networks pair layers as they execute; a module
    called twice in a forward counts once, at its first call.

    Each layer's output is reduced to (N, C) by averaging every dim after the
    channel dim 1, then consecutive layers are correlated:
    C_l = (1/N) Z_l^T Z_{l+1} with Z the per-channel standardised outputs
    (population std). A zero-variance (dead) channel correlates 0 with everything.
    ``summary``: ``"mean"`` of C_l's entries (the paper's) or ``"abs-mean"``.

    One pass, memory independent of N: float64 running sums per layer and per
    pair, on ``device`` (default: the model's). The model's train/eval mode is
    restored afterwards. Results are on the CPU.

    Sharded over processes (data parallel): each passes its part of the probe set as
    ``batches``, the same ``origin`` (one input, shape (1, ...), whose activations centre the
    running sums; default: the first example of ``batches``) and ``reduce``, which sums a
    tensor over the processes (e.g. ``World.sum``); every process gets the whole set's IF.
    """
    _check_choice("summary", summary, FLOW_SUMMARIES)
    device = torch.device(device) if device is not None else _model_device(model)
    modules = _measured_modules(model, layers, skip)
    current: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            if name not in current:
                current[name] = _per_channel(output, name)

        return record

    order: list[str] = []
    shift: dict[str, torch.Tensor] = {}
    sums: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    cross: list[torch.Tensor] = []
    n = 0
    was_training = model.training
    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        model.eval()
        inputs = (x for x, _ in batches)
        if origin is not None:
            inputs = itertools.chain([origin], inputs)
        for i, x in enumerate(inputs):
            current.clear()
            model_inputs.call(model, model_inputs.to_device(x, device))
            if not order:
                order = list(current)  # dict insertion order = firing order
                missing = [name for name in modules if name not in current]
                if layers is not None and missing:
                    raise UserError(f"layers: {missing[0]!r} did not run in the forward pass")
                # Shifting by one example's activations keeps the one-pass variance
                # accurate (no catastrophic cancellation) and constant channels exactly 0.
                shift = {name: current[name][0].clone() for name in order}
                sums = {k: (torch.zeros_like(v), torch.zeros_like(v)) for k, v in shift.items()}
                cross = [torch.zeros_like(torch.outer(shift[a], shift[b])) for a, b in pairs(order)]
            if i == 0 and origin is not None:
                continue  # the origin only centres the sums
            centred = [current[name] - shift[name] for name in order]
            for name, a in zip(order, centred, strict=True):
                sums[name][0].add_(a.sum(0))
                sums[name][1].add_((a * a).sum(0))
            for i, (a, b) in enumerate(pairs(centred)):
                cross[i] += a.T @ b
            n += model_inputs.count(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if reduce is not None:
        sums = {k: (reduce(a), reduce(b)) for k, (a, b) in sums.items()}
        cross = [reduce(c) for c in cross]
        n = int(reduce(torch.tensor(float(n))))
    if n == 0:
        raise UserError("information_flow: the probe set is empty")
    matrices = [
        _correlation(sums[a], sums[b], c, n).cpu()
        for (a, b), c in zip(pairs(order), cross, strict=True)
    ]
    reduce = torch.mean if summary == "mean" else lambda c: c.abs().mean()
    vector = torch.tensor([float(reduce(c)) for c in matrices], dtype=torch.float64)
    return Flow(matrices=matrices, vector=vector, layers=order)


def gradient_flow(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    loss_fn: LossFn | None = None,
    masks: Masks | None = None,
    normalize: bool = False,
    params: dict[str, nn.Parameter] | None = None,
    device: torch.device | str | None = None,
    reduce: Reduce | None = None,
    output_fn: OutputFn = model_inputs.logits,
) -> torch.Tensor:
    """GF of ``model``: per layer ``||g_l * m_l||_2``, float64 of shape ``(L,)``, on the CPU.

    ``g_l`` is the gradient, w.r.t. weight l, of the MEAN loss over all examples of
    ``batches`` (``(inputs (B, ...), targets (B,))``), from a real backward pass in
    eval mode. ``loss_fn(outputs, targets)`` must return the batch mean (default
    cross entropy). ``params``: name -> weight (default: the prunable weights, in
    registry order); ``masks``: their masks (default all ones); ``normalize``
    divides layer l by its number of alive weights (at least 1), the "effective
    gradient flow". Nothing is updated: ``.grad``, ``requires_grad``, the
    train/eval mode and BatchNorm statistics are left as found. Sharded over processes,
    each passes its part of the probe set and ``reduce`` (sums a tensor over them).
    """
    if params is None:
        params = {name: module.weight for name, module in prunable_modules(model).items()}
    if masks is not None and (missing := [name for name in params if name not in masks]):
        raise UserError(f"masks: no mask for parameter {missing[0]!r}")
    device = torch.device(device) if device is not None else _model_device(model)
    weights = list(params.values())
    totals = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
    n = 0
    was_training = model.training
    frozen = [w for w in weights if not w.requires_grad]
    try:
        model.eval()
        for w in frozen:
            w.requires_grad_(True)
        with torch.enable_grad():
            for x, y in batches:
                x, y = model_inputs.to_device(x, device), y.to(device)
                out = output_fn(model_inputs.call(model, x))
                if loss_fn is None:
                    loss = F.cross_entropy(out, y, reduction="sum")
                else:
                    loss = loss_fn(out, y) * y.shape[0]
                # autograd.grad, not backward(): the parameters' .grad stay untouched.
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
                for total, g in zip(totals, grads, strict=True):
                    if g is not None:
                        total += g
                n += y.shape[0]
    finally:
        for w in frozen:
            w.requires_grad_(False)
        model.train(was_training)
    if reduce is not None:
        totals = [reduce(total).to(total.device) for total in totals]
        n = int(reduce(torch.tensor(float(n))))
    if n == 0:
        raise UserError("gradient_flow: the probe set is empty")
    values = []
    for name, total in zip(params, totals, strict=True):
        mask = masks[name].to(total.device) if masks is not None else None
        g = total / n if mask is None else total * mask / n
        alive = int(mask.sum()) if mask is not None else g.numel()
        values.append(float(g.norm()) / (max(alive, 1) if normalize else 1))
    return torch.tensor(values, dtype=torch.float64)


def flow_distance(
    current: torch.Tensor | Flow, reference: torch.Tensor | Flow, kind: str = "l2"
) -> float:
    """Distance between two flow vectors of the same shape (a :class:`Flow` stands for its vector).

    ``"l2"``: ``||F - F*||_2``. ``"relative"``: ``||F - F*||_2 / ||F*||_2``, or the l2
    value when ``F* = 0``. ``"cosine"``: ``1 - cos(F, F*)`` in [0, 2]; 0 when both
    are all zero (identical), 1 when exactly one is (no shared direction, as if
    orthogonal), so a vanished flow never looks like a match.
    """
    _check_choice("distance", kind, DISTANCES)
    a, b = (f.vector if isinstance(f, Flow) else f for f in (current, reference))
    if a.shape != b.shape:
        raise ValueError(f"flow shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    l2 = float((a - b).norm())
    if kind == "l2":
        return l2
    norm_a, norm_b = float(a.norm()), float(b.norm())
    if kind == "relative":
        return l2 / norm_b if norm_b > 0 else l2
    if norm_a == 0 or norm_b == 0:
        return 0.0 if norm_a == norm_b else 1.0
    return 1.0 - float(a.flatten() @ b.flatten()) / (norm_a * norm_b)
