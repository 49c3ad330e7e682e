"""The search (TAS.md A5, A9): alternating weight and architecture steps on the two halves
of the training data, and what it found."""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from incop.core import inputs as model_inputs
from incop.core.batches import Batch, BatchSource, LossFn
from incop.core.inputs import OutputFn
from incop.core.masks import PRUNABLE_TYPES, Masks
from incop.core.optimizers import eager
from incop.errors import UserError
from incop.methods.tas.optimiser import ARCH_LR, WeightOptimiser, tas_sgd
from incop.methods.tas.sampling import TAU, cost_loss, tau_at
from incop.methods.tas.space import NORMS, Space, hard_masks, macs_of, removed_blocks, search_space
from incop.methods.tas.supernet import Supernet


@dataclass
class TASResult:
    """What a search found: ``widths`` (group name -> C*), ``depths`` (stage name -> d*),
    ``macs_fraction`` (F(A) / F_max) and ``expected_macs_fraction`` (E_F / F_max) at the end,
    ``history`` (per epoch: tau, both fractions, the mean discrepancy, the weight and
    architecture losses), ``step_macs_fraction`` (F(A) / F_max after every architecture step),
    ``masks`` (the argmax architecture over the model's prunable weights), ``removed``
    (blocks past their stage's depth), ``alphas``/``betas`` (the logits), ``model`` (the
    searched supernet's weights in the model's architecture), ``space``, ``flops`` (what the
    search cost: 2 x MACs x 3 passes per example of each of its two steps), ``converged``
    (false when most distributions end with a discrepancy below 0.1, TAS.md A11.9),
    ``derived`` (``last``: the last step's argmax; ``last-in-band``: it had left the cost
    band, so the last argmax inside the band was taken), and
    ``compact_model``: the searched network as a smaller dense model, where
    :func:`incop.tas_search` made it (its MACs exactly ``macs_fraction`` of the dense ones)."""

    widths: dict[str, int]
    depths: dict[str, int]
    macs_fraction: float
    expected_macs_fraction: float
    history: list[dict[str, Any]]
    step_macs_fraction: list[float]
    masks: Masks
    removed: list[str]
    alphas: dict[str, list[float]]
    betas: dict[str, list[float]]
    model: nn.Module
    space: Space
    flops: float = 0.0
    converged: bool = True
    derived: str = "last"
    compact_model: nn.Module | None = field(default=None, repr=False)


def _all_examples(data: BatchSource) -> tuple[Any, torch.Tensor]:
    held_x, held_y = getattr(data, "x", None), getattr(data, "y", None)
    if torch.is_tensor(held_x) and torch.is_tensor(held_y):
        # Batches may hold pixels and yield them normalised: take what its batches give.
        normalize = getattr(data, "normalize", None)
        return (normalize(held_x) if normalize is not None else held_x), held_y
    xs, ys = [], []
    for x, y in data:
        xs.append(x)
        ys.append(y)
    return model_inputs.cat(xs), torch.cat(ys)


def halves(targets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a 50/50 split of the examples, per class for integer ``targets`` (TAS's
    ``prepare.py``), else at random: (weight half, architecture half)."""
    if targets.dim() == 1 and not targets.is_floating_point():
        first, second = [], []
        for label in targets.unique():
            idx = (targets == label).nonzero().squeeze(1)
            idx = idx[torch.randperm(len(idx), generator=generator)]
            first.append(idx[: len(idx) // 2])
            second.append(idx[len(idx) // 2 :])
        return torch.cat(first).sort().values, torch.cat(second).sort().values
    idx = torch.randperm(len(targets), generator=generator)
    return idx[: len(idx) // 2].sort().values, idx[len(idx) // 2 :].sort().values


def _gather(x: Any, y: torch.Tensor, idx: torch.Tensor, device: torch.device) -> Batch:
    xb = model_inputs.apply(x, lambda t: t.index_select(0, idx.to(t.device)))
    return model_inputs.to_device(xb, device), y.index_select(0, idx.to(y.device)).to(device)


def tas_search(
    model: nn.Module,
    train_batches: BatchSource,
    *,
    flop_ratio: float,
    epochs: int,
    example_input: Any = None,
    batch_size: int | None = None,
    tau: tuple[float, float] = TAU,
    flop_weight: float = 2.0,
    tolerance: float = 0.05,
    search_depth: bool = True,
    search_init: str = "scratch",
    arch_lr: float = ARCH_LR,
    optimiser: WeightOptimiser | None = None,
    init_fn: Callable[[nn.Module], None] | None = None,
    loss_fn: LossFn = F.cross_entropy,
    output_fn: OutputFn = model_inputs.logits,
    layers: list[str] | None = None,
    seed: int = 0,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> TASResult:
    """Search the widths (and depths) of ``model`` under a MACs target of ``flop_ratio``
    (in (0, 1]) of its own, for ``epochs`` epochs over the weight half of ``train_batches``
    (``(inputs (B, ...), targets (B,))``; split 50/50 per class with ``seed``).

    ``model`` is not changed: the supernet is a copy, re-initialised by ``init_fn``
    (default: every module's ``reset_parameters``) with ``search_init="scratch"`` (TAS), or
    ``model``'s own weights with ``"dense"``. ``batch_size``: examples per step of each half
    (default: the first batch's size). ``optimiser``: the weights' (default: TAS's SGD for
    BatchNorm nets at its rate scaled to ``batch_size``, :func:`tas_sgd`; else SGD 0.01 with
    momentum 0.9 and weight decay 5e-4). ``layers``: the
    prunable layers (default: every Conv/Linear; the last one is the classifier). ``log``:
    called with each epoch's record. The architecture trains with Adam (``arch_lr``, betas
    (0.5, 0.999), weight decay 1e-3); the cost loss weighs ``flop_weight`` with the band
    ``tolerance`` (TAS.md A4). Raises :class:`UserError` on a bad ratio or a model with
    nothing to search."""
    if not (isinstance(flop_ratio, int | float) and math.isfinite(flop_ratio)
            and 0 < flop_ratio <= 1):  # fmt: skip
        raise UserError(f"flop_ratio: {flop_ratio!r} is not allowed; must be in (0, 1]")
    x_all, y_all = _all_examples(train_batches)
    if batch_size is None:
        batch_size = next(iter(train_batches))[1].shape[0]
    device = next(model.parameters()).device
    if example_input is None:
        example_input = model_inputs.take(model_inputs.to_device(x_all, device), 0, 2)
    layers = layers or [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    net = copy.deepcopy(model).train()
    if search_init == "scratch":
        (init_fn or default_init)(net)
    elif search_init != "dense":
        raise UserError(f"search_init: unknown value {search_init!r}; allowed: scratch, dense")
    space = search_space(net, example_input, layers, depth=search_depth)
    generator = torch.Generator().manual_seed(seed)
    supernet = Supernet(net, space, generator)
    has_norm = any(isinstance(m, NORMS) for m in net.modules())
    opt = optimiser or (
        tas_sgd(batch_size) if has_norm else WeightOptimiser("sgd", 0.01, 0.9, False, 5e-4)
    )
    weights = [p for p in net.parameters() if p.requires_grad]
    if opt.name == "adam":
        w_opt = eager(torch.optim.Adam)(weights, lr=opt.lr, weight_decay=opt.weight_decay)
    else:
        w_opt = eager(torch.optim.SGD)(weights, lr=opt.lr, momentum=opt.momentum,
                                       nesterov=opt.nesterov and opt.momentum > 0,
                                       weight_decay=opt.weight_decay)  # fmt: skip
    w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=max(epochs, 1))
    a_opt = eager(torch.optim.Adam)(
        supernet.parameters, lr=arch_lr, betas=(0.5, 0.999), weight_decay=1e-3
    )
    first, second = halves(y_all, generator)
    dense = space.dense_macs
    target = flop_ratio * dense
    history, steps = [], []
    in_band: tuple[dict[str, int], dict[str, int]] | None = None
    step_flops = 2 * 3 * 2 * dense  # per example pair: two steps, 3 passes, 2 FLOPs a MAC
    spent = 0.0
    for epoch in range(epochs):
        t = tau_at(epoch, epochs, tau)
        order = first[torch.randperm(len(first), generator=generator)]
        w_losses, a_losses = [], []
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x, y = _gather(x_all, y_all, idx, device)
            other = second[torch.randint(len(second), (len(idx),), generator=generator)]
            xv, yv = _gather(x_all, y_all, other, device)
            supernet.sample(t)
            w_opt.zero_grad(set_to_none=True)
            loss = loss_fn(output_fn(model_inputs.call(net, x)), y)
            _check_finite("weights'", loss, epoch)
            loss.backward()
            for a in supernet.parameters:
                a.grad = None  # first order: the weight step's gradients on alpha go
            w_opt.step()
            supernet.sample(t)
            w_opt.zero_grad(set_to_none=True)
            ce = loss_fn(output_fn(model_inputs.call(net, xv)), yv)
            cost = cost_loss(supernet.expected(), supernet.argmax_macs(), target, tolerance, dense)
            arch = ce + flop_weight * cost.to(ce.dtype)
            _check_finite("architecture's", arch, epoch)
            arch.backward()
            a_opt.step()
            w_losses.append(float(loss.detach()))
            a_losses.append(float(arch.detach()))
            macs = supernet.argmax_macs()
            steps.append(macs / dense)
            if target - tolerance * dense <= macs <= target:
                in_band = (supernet.widths(), supernet.depths())
            spent += step_flops * len(idx)
        w_sched.step()
        record = {
            "phase": "search",
            "epoch": epoch + 1,
            "tau": t,
            "expected_macs_fraction": float(supernet.expected().detach()) / dense,
            "argmax_macs_fraction": supernet.argmax_macs() / dense,
            "discrepancy": statistics.fmean(supernet.discrepancy() or [1.0]),
            "search_loss": sum(w_losses) / max(len(w_losses), 1),
            "arch_loss": sum(a_losses) / max(len(a_losses), 1),
        }
        history.append(record)
        if log is not None:
            log(record)
    widths, depths = supernet.widths(), supernet.depths()
    derived = "last"
    if not target - tolerance * dense <= supernet.argmax_macs() <= target and in_band is not None:
        # The last epoch's argmax left the band on its last steps: take the last one inside.
        (widths, depths), derived = in_band, "last-in-band"
    discrepancy = supernet.discrepancy()
    supernet.remove()
    net.requires_grad_(False)
    masks = hard_masks(net, space, widths, depths)
    return TASResult(
        widths=widths,
        depths=depths,
        macs_fraction=macs_of(space, masks) / dense,
        expected_macs_fraction=float(supernet.expected().detach()) / dense,
        history=history,
        step_macs_fraction=steps,
        masks=masks,
        removed=removed_blocks(space, depths),
        alphas={
            g.name: a.detach().tolist() for g, a in zip(space.groups, supernet.alphas, strict=True)
        },
        betas={
            s.name: b.detach().tolist() for s, b in zip(space.stages, supernet.betas, strict=True)
        },
        model=net.requires_grad_(True),
        space=space,
        flops=spent,
        converged=sum(d < 0.1 for d in discrepancy) <= len(discrepancy) / 2,
        derived=derived,
    )


def _check_finite(which: str, loss: torch.Tensor, epoch: int) -> None:
    if not torch.isfinite(loss.detach()).all():
        raise UserError(
            f"tas: the search diverged: the {which} loss became {float(loss.detach())} in search"
            f" epoch {epoch + 1}; try tas_search_init dense (start from theta*) or a larger"
            " batch_size"
        )


def default_init(model: nn.Module) -> None:
    """A fresh initialisation: every module's ``reset_parameters`` (PyTorch's defaults)."""
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
