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
from typing import TYPE_CHECKING

from incop.core import inputs as model_inputs
from incop.core.batches import Batch, LossFn
from incop.core.inputs import OutputFn
from incop.core.lazy import no_grad
from incop.core.registry import closest
from incop.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from incop.core.masks import Masks


#: Residual projections, left out by default: the information flow follows the main path
#: (METHOD.md section 4).
IF_SKIP = ["*downsample*", "*shortcut*"]

FLOW_SUMMARIES = ("mean", "abs-mean", "frobenius")
#: Sums a tensor over the processes that share a measurement (data parallel), e.g. World.sum.
Reduce = Callable[["torch.Tensor"], "torch.Tensor"]

DISTANCES = ("l2", "relative", "cosine")


@dataclass(frozen=True)
class Flow:
    """The information flow of a network on a probe set.

    ``layers``: the L measured module names, in forward execution order.
    ``matrices``: the L-1 correlation matrices C_l of consecutive layers, float64,
    shape ``(C_l, C_{l+1})`` (channels / output features), entries in [-1, 1].
    ``vector``: float64 of shape ``(L-1,)``, one summary s(C_l) per pair (with the
    ``frobenius`` summary: every entry of every C_l, flattened in order).
    """

    matrices: list[torch.Tensor]
    vector: torch.Tensor
    layers: list[str]


def _model_device(model: nn.Module) -> torch.device:
    import torch

    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _check_choice(option: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise UserError(f"{option}: unknown value {value!r}; allowed: {', '.join(allowed)}")


def _measured_modules(
    model: nn.Module, layers: Sequence[str] | None, skip: Sequence[str]
) -> dict[str, nn.Module]:
    from incop.core.masks import prunable_modules

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


def _reading(
    output: object, module: nn.Module, channel_dim: int | None, examples: int, name: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A layer's output as ``(rows (R, C), per_example (B, C) or None)``, float64.

    Convolutions (and 2-D outputs), by default: channels along dim 1, positions averaged, one
    row per example. Other layers, or any with ``channel_dim`` given: channels along the last
    dim (or ``channel_dim``), every other position a sample, so a ``(B, T, D)`` or
    ``(T, B, D)`` activation gives ``B*T`` rows of ``D`` channels; ``per_example`` averages the
    positions of each example (the batch dim: the first of ``examples`` entries), for a pair
    whose other layer has one row per example (a classifier after a sequence)."""
    import torch
    from torch import nn

    if isinstance(output, tuple | list) and output:
        output = output[0]
    if not torch.is_tensor(output) or output.dim() < 2:
        raise UserError(f"layer {name!r}: output is not a batched (B, C, ...) tensor")
    conv = isinstance(module, nn.modules.conv._ConvNd)
    if channel_dim is None and (conv or output.dim() == 2):
        # float64 reduction: a constant (dead) channel stays exactly constant.
        per = (
            output.flatten(2).mean(2, dtype=torch.float64) if output.dim() > 2 else output.double()
        )
        return per, per
    k = -1 if channel_dim is None else channel_dim
    if not -output.dim() <= k < output.dim():
        raise UserError(
            f"if_channel_dim: {channel_dim} is out of range for layer {name!r}, whose output has"
            f" {output.dim()} dims (shape {tuple(output.shape)})"
        )
    t = output.movedim(k, -1)
    rows = t.reshape(-1, t.shape[-1]).double()
    batch = next((d for d in range(t.dim() - 1) if t.shape[d] == examples), None)
    if batch is None:
        return rows, None
    per = t.movedim(batch, 0).reshape(examples, -1, t.shape[-1]).mean(1, dtype=torch.float64)
    return rows, per


def _correlation(
    s1: tuple[torch.Tensor, torch.Tensor],
    s2: tuple[torch.Tensor, torch.Tensor],
    cross: torch.Tensor,
    n: int,
) -> torch.Tensor:
    """Pearson correlation (population statistics) from the sums of two layers."""
    import torch

    mean_a, mean_b = s1[0] / n, s2[0] / n
    # Clamp: cancellation can leave a tiny negative variance.
    std_a = (s1[1] / n - mean_a**2).clamp_min(0).sqrt()
    std_b = (s2[1] / n - mean_b**2).clamp_min(0).sqrt()
    cov = cross / n - torch.outer(mean_a, mean_b)
    denom = torch.outer(std_a, std_b)
    return torch.where(denom > 0, cov / denom.where(denom > 0, 1.0), 0.0)


@dataclass
class _Pair:
    """Running sums of one pair of consecutive layers, centred on ``shift``."""

    form: int  # 0: rows (every position a sample), 1: one row per example
    shift: tuple[torch.Tensor, torch.Tensor]
    sums: list[torch.Tensor]  # sum a, sum a^2, sum b, sum b^2, sum a^T b
    n: int = 0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a - self.shift[0], b - self.shift[1]
        for total, value in zip(self.sums, (a.sum(0), (a * a).sum(0), b.sum(0), (b * b).sum(0),
                                            a.T @ b), strict=True):  # fmt: skip
            total += value
        self.n += a.shape[0]


def _attention_hook(
    record: Callable[[str, object, object], None], name: str, module: nn.MultiheadAttention,
    wanted: set[str],
) -> Callable[..., None]:  # fmt: skip
    """Attention runs its projections functionally: the packed q/k/v projection (the module's
    own name) is recomputed from the query, ``out_proj`` is the attention's output."""
    import torch.nn.functional as F

    out_name = f"{name}.out_proj" if name else "out_proj"

    def hook(_module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        query = args[0] if args else kwargs.get("query")
        if name in wanted and module.in_proj_weight is not None:
            record(name, query, F.linear(query, module.in_proj_weight, module.in_proj_bias))
        if out_name in wanted:
            record(out_name, None, output)

    return hook


@no_grad
def information_flow(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    layers: Sequence[str] | None = None,
    summary: str = "mean",
    skip: Sequence[str] = ("*downsample*", "*shortcut*"),
    device: torch.device | str | None = None,
    origin: object | None = None,
    reduce: Reduce | None = None,
    channel_dim: int | None = None,
) -> Flow:
    """IF of ``model`` over ``batches`` of ``(inputs, targets)`` (targets unused).

    Layers: by default the prunable modules (Conv/Linear, attention's packed projection)
    whose name matches no ``skip`` pattern (shell-style, on the module name; ``skip=()``
    keeps residual projections); or the modules named in ``layers`` (``skip`` not applied).
    Either way they are ordered by when they first run on the first batch, so residual
    networks pair layers as they execute; a module called twice in a forward counts once,
    at its first call. Consecutive layers that read the same input tensor (the query, key
    and value projections of an attention) are parallel, not a chain: they are one layer,
    their channels side by side (METHOD.md section 4).

    Each layer's output becomes rows of channels (:func:`_reading`: convolutions average
    their positions, one row per example; other layers, sequences included, take the last
    dim as channels and every other position as a sample; ``channel_dim`` names the channel
    dim instead). Consecutive layers are correlated, C_l = (1/N) Z_l^T Z_{l+1}, Z the
    per-channel standardised rows (population std), N the rows they share (a pair of a
    sequence layer and a per-example one, a classifier, averages the sequence over its
    positions). A zero-variance (dead) channel correlates 0 with everything. ``summary``:
    ``"mean"`` of C_l's entries (the paper's), ``"abs-mean"``, or ``"frobenius"``: the vector
    is every entry of every C_l, so that a ``relative`` distance between two flows is
    ||C - C*||_F / ||C*||_F over all the pairs.

    One pass, memory independent of N: float64 running sums per pair, on ``device``
    (default: the model's). The model's train/eval mode is restored afterwards. Results are
    on the CPU. Sharded over processes (data parallel): each passes its part of the probe set
    as ``batches``, the same ``origin`` (one example's inputs, whose activations centre the
    running sums; default: the first example of ``batches``) and ``reduce``, which sums a
    tensor over the processes (e.g. ``World.sum``); every process gets the whole set's IF.
    """
    import torch
    from torch import nn

    from incop.core.masks import attention_unfused

    _check_choice("summary", summary, FLOW_SUMMARIES)
    device = torch.device(device) if device is not None else _model_device(model)
    modules = _measured_modules(model, layers, skip)
    current: dict[str, tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]] = {}
    examples = 0

    def record(name: str, source: object, output: object) -> None:
        if name not in current:
            reading = _reading(output, modules[name], channel_dim, examples, name)
            # The input itself, not its id: a freed tensor's id is reused by the next one.
            current[name] = (source if torch.is_tensor(source) else None, *reading)

    def hook(name: str) -> Callable[..., None]:
        def fire(_module: nn.Module, args: tuple, output: object) -> None:
            record(name, args[0] if args else None, output)

        return fire

    handles = []
    wanted = set(modules)
    for name, module in dict(model.named_modules()).items():
        if isinstance(module, nn.MultiheadAttention) and wanted & {name, f"{name}.out_proj"}:
            handles.append(module.register_forward_hook(
                _attention_hook(record, name, module, wanted), with_kwargs=True))  # fmt: skip
    handles += [module.register_forward_hook(hook(name)) for name, module in modules.items()
                if not isinstance(module, nn.MultiheadAttention)]  # fmt: skip
    groups: list[list[str]] = []
    pairs_: list[_Pair] = []
    was_training = model.training
    try:
        model.eval()
        inputs = (x for x, _ in batches)
        if origin is not None:
            inputs = itertools.chain([origin], inputs)
        with attention_unfused():
            for i, x in enumerate(inputs):
                current.clear()
                examples = model_inputs.count(x)
                model_inputs.call(model, model_inputs.to_device(x, device))
                if not groups:
                    missing = [name for name in modules if name not in current]
                    if layers is not None and missing:
                        raise UserError(f"layers: {missing[0]!r} did not run in the forward pass")
                    groups = _parallel_groups(current)
                readings = [_joined(current, group) for group in groups]
                if not pairs_:
                    pairs_ = [_start_pair(a, b, groups[j], groups[j + 1])
                              for j, (a, b) in enumerate(pairs(readings))]  # fmt: skip
                if i == 0 and origin is not None:
                    continue  # the origin only centres the sums
                for pair, (a, b) in zip(pairs_, pairs(readings), strict=True):
                    pair.add(a[pair.form], b[pair.form])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if reduce is not None:
        for pair in pairs_:
            pair.sums = [reduce(t) for t in pair.sums]
            pair.n = int(reduce(torch.tensor(float(pair.n))))
    if not pairs_ or pairs_[0].n == 0:
        if not pairs_ and groups:
            names = ", ".join("+".join(g) for g in groups)
            raise UserError(
                f"information_flow: {len(groups)} measured layer(s) ({names}): it needs two"
                " consecutive layers"
            )
        raise UserError("information_flow: the probe set is empty")
    matrices = [
        _correlation((p.sums[0], p.sums[1]), (p.sums[2], p.sums[3]), p.sums[4], p.n).cpu()
        for p in pairs_
    ]
    if summary == "frobenius":  # the matrices themselves: a distance compares them entry-wise
        vector = torch.cat([c.flatten() for c in matrices])
    else:
        reduce = torch.mean if summary == "mean" else lambda c: c.abs().mean()
        vector = torch.tensor([float(reduce(c)) for c in matrices], dtype=torch.float64)
    return Flow(matrices=matrices, vector=vector, layers=["+".join(g) for g in groups])


def _parallel_groups(current: dict[str, tuple]) -> list[list[str]]:
    """The measured layers in firing order, those run one after another on the same input
    tensor (with outputs of as many rows) joined into one."""
    groups: list[list[str]] = []
    for name, (source, rows, _) in current.items():
        last = groups[-1][-1] if groups else None
        if last is not None and source is not None and current[last][0] is source:
            if current[last][1].shape[0] == rows.shape[0]:
                groups[-1].append(name)
                continue
        groups.append([name])
    return groups


def _joined(current: dict[str, tuple], group: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """A group's rows and per-example readings, its members' channels side by side."""
    import torch

    if len(group) == 1:
        return current[group[0]][1], current[group[0]][2]
    rows = torch.cat([current[n][1] for n in group], dim=1)
    per = [current[n][2] for n in group]
    return rows, None if any(p is None for p in per) else torch.cat(per, dim=1)


def _start_pair(a: tuple, b: tuple, group_a: list[str], group_b: list[str]) -> _Pair:
    """A pair's sums, reading rows where both layers have as many, else one row per example."""
    import torch

    form = 0 if a[0].shape[0] == b[0].shape[0] else 1
    if form == 1 and (a[1] is None or b[1] is None):
        raise UserError(
            f"information flow: layers {'+'.join(group_a)} and {'+'.join(group_b)} give"
            f" {a[0].shape[0]} and {b[0].shape[0]} rows and no batch dim to average them over;"
            " set if_channel_dim or leave one of them out (if_skip)"
        )
    x, y = a[form], b[form]
    shift = (x[0].clone(), y[0].clone())
    zeros = [torch.zeros_like(x[0]), torch.zeros_like(x[0]), torch.zeros_like(y[0]),
             torch.zeros_like(y[0]), torch.zeros_like(torch.outer(x[0], y[0]))]  # fmt: skip
    return _Pair(form, shift, zeros)


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
    import torch
    import torch.nn.functional as F

    from incop.core.masks import prunable_modules

    if params is None:
        params = {name: model.get_parameter(name) for name in prunable_modules(model)}
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
