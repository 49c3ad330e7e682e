"""Training and evaluation: one epoch of SGD/Adam on masked weights, accuracy on held-out data."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from incop.core import inputs
from incop.core.batches import Batch, LossFn
from incop.core.distill import Teacher
from incop.core.inputs import OutputFn
from incop.core.masks import MaskEnforcer
from incop.core.precision import FP32, Precision
from incop.errors import UserError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "cosine", "step")


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class EpochStats:
    """Mean loss (per example) and accuracy (fraction in [0, 1]; None unless every batch was
    classification) over ``examples`` examples; ``custom``: a metric callable's weighted mean."""

    loss: float
    accuracy: float | None
    examples: int
    custom: float | None = None


def classifies(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """Whether a batch is classification: outputs (B, classes) and integer targets (B,)."""
    return outputs.dim() == 2 and targets.dim() == 1 and not targets.is_floating_point()


def _to_device(batch: Batch, device: torch.device | None) -> Batch:
    x, y = batch
    return inputs.to_device(x, device), inputs.to_device(y, device)


def train_epoch(
    model: nn.Module,
    batches: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    enforcer: MaskEnforcer | None = None,
    loss_fn: LossFn = F.cross_entropy,
    device: torch.device | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    precision: Precision = FP32,
    after_backward: Callable[[], None] | None = None,
    output_fn: OutputFn = inputs.logits,
    teacher: Teacher | None = None,
) -> EpochStats:
    """One pass over ``batches`` of ``(inputs (B, ...), targets (B,))``, updating ``model``.

    ``precision``: autocast for the forward pass and loss (and fp16's gradient scaler).
    ``output_fn``: the tensor of the model's output that the loss reads
    (:func:`incop.core.inputs.logits`).
    ``after_backward``: called after every backward pass, before the gradients are masked and
    the optimiser steps (the training-time hook of pruners that score by gradients or move
    the masks, as dynamic sparse training does). ``teacher``: distil from it
    (:mod:`incop.core.distill`; the hard-label part is ``loss_fn``).

    Pruned weights stay exactly zero: ``enforcer`` masks the gradients of every step and,
    as a guard, the weights and optimiser state once at the end of the epoch. ``scheduler``
    (if any) is stepped once per epoch, at the end. Raises :class:`DivergenceError` on a
    non-finite loss.
    """
    model.train()
    # Summed on the device into two accumulators: no host sync per step, and nothing kept
    # per step (a list of small per-step tensors fragments the heap: +130 MB of RSS over a
    # lenet5 Fashion-MNIST epoch, benchmarks/memory.py).
    loss_sum: torch.Tensor | None = None  # float64, sum over batches of mean loss x size
    correct: torch.Tensor | None = None  # int64
    seen = 0
    all_classify = True
    for batch in batches:
        x, y = _to_device(batch, device)
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            out = output_fn(inputs.call(model, x))
            loss = loss_fn(out, y) if teacher is None else teacher.loss(x, out, y)
        precision.backward(loss)
        if after_backward is not None:  # it sees the dense gradient; it may change the masks
            after_backward()
        if enforcer is not None:
            enforcer.mask_gradients()  # scaled or not: a zero stays zero
        precision.step(optimizer)
        size = y.shape[0]
        if loss_sum is None:
            loss_sum = torch.zeros((), dtype=torch.float64, device=loss.device)
        loss_sum.add_(loss.detach(), alpha=size)
        if all_classify and classifies(out, y):
            hits = (out.detach().argmax(1) == y).sum()
            correct = hits if correct is None else correct.add_(hits)
        else:
            all_classify = False
        seen += size
    if enforcer is not None:
        enforcer.after_step(optimizer)
    if scheduler is not None:
        scheduler.step()
    mean_loss = float(loss_sum) / seen if loss_sum is not None else 0.0
    if not math.isfinite(mean_loss):
        raise DivergenceError(f"training loss became {mean_loss}")
    accuracy = int(correct if correct is not None else 0) / max(seen, 1) if all_classify else None
    return EpochStats(mean_loss, accuracy, seen)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    *,
    loss_fn: LossFn = F.cross_entropy,
    device: torch.device | None = None,
    metric_fn: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    precision: Precision = FP32,
    output_fn: OutputFn = inputs.logits,
) -> EpochStats:
    """Mean loss, accuracy (classification only) and ``metric_fn`` (a per-batch mean,
    averaged weighted by batch size) of ``model`` in eval mode over ``batches``, the forward
    pass under ``precision``'s autocast."""
    was_training = model.training
    model.eval()
    total_loss = total_custom = 0.0
    correct = seen = 0
    all_classify = True
    for batch in batches:
        x, y = _to_device(batch, device)
        with precision.autocast():
            out = output_fn(inputs.call(model, x))
        if out.dtype in (torch.float16, torch.bfloat16):  # losses and argmax in fp32
            out = out.float()
        total_loss += float(loss_fn(out, y)) * y.shape[0]
        if classifies(out, y):
            correct += int((out.argmax(1) == y).sum())
        else:
            all_classify = False
        if metric_fn is not None:
            total_custom += float(metric_fn(out, y)) * y.shape[0]
        seen += y.shape[0]
    model.train(was_training)
    n = max(seen, 1)
    accuracy = correct / n if all_classify else None
    return EpochStats(total_loss / n, accuracy, seen, total_custom / n if metric_fn else None)


def make_optimizer(
    params: Iterable[nn.Parameter],
    name: str,
    *,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """``sgd`` (momentum, optional Nesterov) or ``adam``; weight decay is L2 (coupled) for both.

    The fused implementation where the parameters allow it (floating point, on CPU or CUDA):
    one pass over each weight per step instead of one per operation, 0.89x the time of a
    plain mlp epoch on this CPU (``benchmarks/throughput.py``); the same update rule."""
    params = list(params)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            fused=fused or None,
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    raise UserError(f"optimizer: unknown value {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, name: str, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch learning-rate schedule over ``epochs`` epochs: ``none``, ``cosine`` or
    ``step`` (x0.1 at 50% and 75% of the epochs).

    The schedule starts from each group's base learning rate, also when ``optimizer`` was used
    by an earlier phase (rewind ``none``): every phase runs a whole schedule of its own."""
    for group in optimizer.param_groups:
        group["lr"] = group.get("initial_lr", group["lr"])
    if name == "none":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if name == "step":
        milestones = [max(1, epochs // 2), max(1, (3 * epochs) // 4)]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    raise UserError(f"schedule: unknown value {name!r}; allowed: {', '.join(SCHEDULES)}")
