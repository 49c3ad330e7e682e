"""What the IMP loop reads batches from, checked before any work, and the fixed probe set.

A batch source is any re-iterable of ``(inputs, targets)`` batches: a list, a
``torch.utils.data.DataLoader`` or :class:`incop.workload.data.Batches`. It is iterated once per
epoch, so a one-shot iterator or generator is refused: it would train one epoch and then
silently nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from incop.core import inputs as model_inputs
from incop.core.batches import Batch, BatchSource
from incop.core.inputs import OutputFn
from incop.errors import UserError

#: Losses whose integer targets index the model's outputs, so their range can be checked.
_CLASS_LOSSES = (F.cross_entropy, F.nll_loss)


class MappedSource:
    """``source`` with every batch passed through ``batch_fn(batch) -> (inputs, targets)``:
    how dict batches, or tuples with more than two parts, reach the loop. ``set_epoch`` and
    ``len`` pass through to ``source``."""

    def __init__(self, source: Iterable, batch_fn: Callable[[object], Batch]) -> None:
        self.source = source
        self.batch_fn = batch_fn

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.source:
            yield self.batch_fn(batch)

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)


def _first_batch(name: str, data: BatchSource) -> Batch:
    underlying = data.source if isinstance(data, MappedSource) else data
    if isinstance(underlying, Iterator):
        raise UserError(
            f"{name}: a one-shot {type(underlying).__name__} is used up after one epoch; pass"
            " something iterable once per epoch (a list of batches, a DataLoader, Batches)"
        )
    try:
        batch = next(iter(data))
    except TypeError:
        raise UserError(f"{name}: {type(data).__name__} is not iterable") from None
    except StopIteration:
        raise UserError(f"{name}: is empty (it gives no batch)") from None
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        got = type(batch).__name__
        if isinstance(batch, tuple | list):
            got += f" of length {len(batch)}"
        elif isinstance(batch, dict):
            got += f" with keys {', '.join(map(repr, batch))}"
        raise UserError(
            f"{name}: each batch must be a pair (inputs, targets), got {got}; pass"
            " batch_fn=lambda batch: (inputs, targets) to unpack yours"
        )
    return batch[0], batch[1]


def _whole(data: BatchSource, batch: Batch) -> tuple[Any, Any]:
    """All inputs and targets where the source holds them as tensors (incop.workload.data.Batches),
    so they are checked entirely; else the first batch."""
    x, y = getattr(data, "x", None), getattr(data, "y", None)
    return (x, y) if torch.is_tensor(x) and torch.is_tensor(y) else batch


def _stateless(loss_fn: Callable) -> bool:
    """A loss of torch's own (``torch.nn.functional`` or ``torch.nn`` loss modules), which
    calling once more changes nothing."""
    module = getattr(loss_fn, "__module__", "") or type(loss_fn).__module__
    return module.startswith("torch.nn")


def _classifies(loss_fn: Callable) -> bool:
    return loss_fn in _CLASS_LOSSES or isinstance(loss_fn, nn.CrossEntropyLoss | nn.NLLLoss)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _described(t: object) -> str:
    if torch.is_tensor(t):
        return f"shape {tuple(t.shape)}, {str(t.dtype).removeprefix('torch.')}"
    return type(t).__name__


def trial_step(
    model: nn.Module,
    name: str,
    batch: Batch,
    loss_fn: Callable,
    device: torch.device,
    metric_fn: Callable | None = None,
    output_fn: OutputFn = model_inputs.logits,
) -> list[str]:
    """One forward of ``batch`` in training mode, and its loss where ``loss_fn`` is one of
    torch's own (a user's function is not called before training: it may count its calls),
    leaving no trace: the model's buffers (BatchNorm statistics) and torch's RNG are put back,
    and no gradient is made (shapes, dtypes and classes fail in the forward). Returns the
    problems, each naming what does not fit what."""
    x, y = batch
    try:
        examples = model_inputs.count(x)
    except UserError as exc:
        return [f"{name}: {exc}"]
    if torch.is_tensor(y) and y.dim() and examples != len(y):
        return [f"{name}: a batch has {examples} inputs but {len(y)} targets; they must pair up"]
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        if examples < 2:
            return [
                f"{name}: a batch of {examples} example cannot train BatchNorm (it needs at least"
                " 2 per batch); use a larger batch_size"
            ]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    rng = torch.get_rng_state()
    was_training = model.training
    problems = []
    try:
        model.train()
        x, y = model_inputs.to_device(x, device), y.to(device)
        try:
            with torch.no_grad():
                raw = model_inputs.call(model, x)
        except Exception as exc:
            return [
                f"{name}: the model cannot take these inputs ({_described(x)}): {_first_line(exc)}"
            ]
        try:
            outputs = output_fn(raw)
        except UserError as exc:
            return [f"{name}: {exc}"]
        try:
            if _stateless(loss_fn):
                with torch.no_grad():
                    loss_fn(outputs, y)
        except Exception as exc:
            hint = ""
            if _classifies(loss_fn) and torch.is_tensor(outputs) and outputs.dim() == 3:
                hint = (
                    "; cross-entropy reads the classes along dim 1: for a class per position pass"
                    " loss_fn=lambda out, y: F.cross_entropy(out.flatten(0, 1), y.flatten()),"
                    " for one per sequence pool the positions in the model"
                )
            return [
                f"{name}: loss_fn cannot take the model's outputs ({_described(outputs)}) with"
                f" these targets ({_described(y)}): {_first_line(exc)}{hint}"
            ]
        if metric_fn is not None:
            with torch.no_grad():
                value = metric_fn(outputs, y)
            if not math.isfinite(float(value)):
                metric = getattr(metric_fn, "__name__", "metric")
                problems.append(
                    f"metric: {metric} returned {value} on a batch of {name}; a metric must give"
                    " a finite number"
                )
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        torch.set_rng_state(rng)
        model.train(was_training)
    return problems


def check_sources(
    model: nn.Module,
    sources: dict[str, BatchSource],
    loss_fn: Callable,
    device: torch.device,
    metric_fn: Callable | None = None,
    output_fn: OutputFn = model_inputs.logits,
) -> Any:
    """Refuse, naming every problem, sources the loop cannot use: not re-iterable, empty, not
    made of pairs, inputs and targets of different lengths, inputs the model cannot take,
    outputs and targets the loss cannot take (one :func:`trial_step` of each source's first
    batch), a BatchNorm model with one-example batches, NaN or infinite inputs, a metric that
    is not finite, class targets outside the model's outputs (for cross-entropy and NLL
    losses; checked on every example of :class:`incop.workload.data.Batches`, on the first
    batch of other sources). Returns one example input (one example of the first batch, in
    its structure: a tensor of shape ``(1, ...)``, a tuple or a dict), on ``device``."""
    if not isinstance(model, nn.Module):
        raise UserError(f"model: got a {type(model).__name__}, not a torch.nn.Module")
    problems, example = [], None
    for name, data in sources.items():
        try:
            batch = _first_batch(name, data)
        except UserError as exc:
            problems.append(str(exc))
            continue
        x, y = _whole(data, batch)
        classes = _class_range_problem(model, name, batch, y, loss_fn, device, output_fn)
        tried = [classes] if classes else trial_step(model, name, batch, loss_fn, device,
                                                     metric_fn, output_fn)  # fmt: skip
        if tried:
            problems += tried
            continue
        if example is None:
            example = model_inputs.to_device(model_inputs.take(batch[0], 0, 1), device)
        if not all(_finite(t) for t in model_inputs.tensors(x)):
            problems.append(f"{name}: inputs hold NaN or infinite values")
    if problems:
        raise UserError("\n".join(problems))
    return example


#: Elements checked at a time: ``isfinite`` of a whole training tensor would allocate a
#: transient the size of the data (and more in its reduction).
_FINITE_CHUNK = 1 << 22


def _finite(t: torch.Tensor) -> bool:
    """No NaN or infinity in ``t`` (integer tensors hold none), read in chunks along dim 0."""
    if not t.is_floating_point() or not t.numel():
        return True
    if not t.dim():
        return bool(torch.isfinite(t))
    rows = max(1, _FINITE_CHUNK // t[0].numel())
    return all(bool(torch.isfinite(t[i : i + rows]).all()) for i in range(0, len(t), rows))


def _class_range_problem(model, name, batch, y, loss_fn, device, output_fn) -> str | None:
    """For class losses: targets outside the model's outputs (every example of ``y``)."""
    if not (_classifies(loss_fn) and torch.is_tensor(y) and not y.is_floating_point()):
        return None
    if not y.numel():
        return None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            one = model_inputs.to_device(model_inputs.take(batch[0], 0, 1), device)
            classes = output_fn(model_inputs.call(model, one)).shape[-1]
    except Exception:  # the trial step names what does not fit
        return None
    finally:
        model.train(was_training)
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        return (
            f"{name}: targets span {low}..{high}, but the model has {classes} outputs"
            f" (class targets must be in 0..{classes - 1})"
        )
    return None
