"""The types batches travel as, and the fixed probe set drawn from them.

A batch source is any re-iterable of ``(inputs, targets)`` batches: a list, a
``torch.utils.data.DataLoader`` or :class:`incop.Batches`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from incop.core import inputs

#: One batch: ``(inputs, targets)``, the first dimension of each being the examples; inputs a
#: tensor, a tuple or a dict of them (:mod:`incop.core.inputs`).
Batch = tuple[Any, torch.Tensor]
#: Any re-iterable source of ``(inputs, targets)`` batches: a DataLoader, a list, data.Batches.
BatchSource = Iterable[Batch]
#: ``loss_fn(outputs, targets) -> scalar``: the mean loss over the batch.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
    x, y = inputs.take(inputs.cat(xs), 0, size), torch.cat(ys)[:size]
    return list(zip(inputs.split(x, batch_size), y.split(batch_size), strict=True))
