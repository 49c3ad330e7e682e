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
from incop.core.precision import Precision

#: Plain fp32 training: no autocast, no scaler.
FP32 = Precision("fp32", torch.device("cpu"))


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
