"""What the IMP loop reads batches from, checked before any work, and the fixed probe set.

A batch source is any re-iterable of ``(inputs, targets)`` batches: a list, a
``torch.utils.data.DataLoader`` or :class:`incop.workload.data.Batches`. It is iterated once per
epoch, so a one-shot iterator or generator is refused: it would train one epoch and then
silently nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from incop.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]
#: Any re-iterable source of ``(inputs, targets)`` batches: a DataLoader, a list, data.Batches.
BatchSource = Iterable[Batch]

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


def _whole(data: BatchSource, batch: Batch) -> Batch:
    """All inputs and targets where the source holds them as tensors (incop.workload.data.Batches),
    so they are checked entirely; else the first batch."""
    x, y = getattr(data, "x", None), getattr(data, "y", None)
    return (x, y) if torch.is_tensor(x) and torch.is_tensor(y) else batch


def _classifies(loss_fn: Callable) -> bool:
    return loss_fn in _CLASS_LOSSES or isinstance(loss_fn, nn.CrossEntropyLoss | nn.NLLLoss)


@torch.no_grad()
def check_sources(
    model: nn.Module,
    sources: dict[str, BatchSource],
    loss_fn: Callable,
    device: torch.device,
) -> torch.Tensor:
    """Refuse, naming every problem, sources the loop cannot use: not re-iterable, empty, not
    made of pairs, NaN or infinite inputs, class targets outside the model's outputs (for
    cross-entropy and NLL losses; checked on every example of
    :class:`incop.workload.data.Batches`, on the first batch of other sources). Returns one
    example input, shape ``(1, ...)``, on ``device``."""
    problems, example = [], None
    for name, data in sources.items():
        try:
            batch = _first_batch(name, data)
        except UserError as exc:
            problems.append(str(exc))
            continue
        x, y = _whole(data, batch)
        if example is None:
            example = batch[0][:1].to(device)
        if x.is_floating_point() and not torch.isfinite(x).all():
            problems.append(f"{name}: inputs hold NaN or infinite values")
        if _classifies(loss_fn) and not y.is_floating_point() and y.numel():
            was_training = model.training
            model.eval()
            classes = model(batch[0][:1].to(device)).shape[-1]
            model.train(was_training)
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= classes:
                problems.append(
                    f"{name}: targets span {low}..{high}, but the model has {classes} outputs"
                    f" (class targets must be in 0..{classes - 1})"
                )
    if problems:
        raise UserError("\n".join(problems))
    return example


def make_probe(data: BatchSource, size: int, seed: int, batch_size: int) -> list[Batch]:
    """The fixed probe set (METHOD.md section 4): ``size`` training examples drawn once with
    ``seed``, as a list of batches. Data with a ``sample(n, seed, batch_size)`` method (the
    built-in datasets) is sampled at random; any other iterable gives its first ``size``
    examples in iteration order."""
    if hasattr(data, "sample"):
        return list(data.sample(size, seed, batch_size))
    xs, ys, count = [], [], 0
    for x, y in data:
        xs.append(x)
        ys.append(y)
        count += y.shape[0]
        if count >= size:
            break
    x, y = torch.cat(xs)[:size], torch.cat(ys)[:size]
    return list(zip(x.split(batch_size), y.split(batch_size), strict=True))
