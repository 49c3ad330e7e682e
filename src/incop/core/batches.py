"""The types batches travel as, and the fixed probe set drawn from them.

A batch source is any re-iterable of ``(inputs, targets)`` batches: a list, a
``torch.utils.data.DataLoader`` or :class:`incop.Batches`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from incop.core import inputs
from incop.core.architecture import convolves

if TYPE_CHECKING:
    import torch


#: One batch: ``(inputs, targets)``, the first dimension of each being the examples; inputs a
#: tensor, a tuple or a dict of them (:mod:`incop.core.inputs`).
Batch = tuple[Any, "torch.Tensor"]
#: Any re-iterable source of ``(inputs, targets)`` batches: a DataLoader, a list, data.Batches.
BatchSource = Iterable[Batch]
#: ``loss_fn(outputs, targets) -> scalar``: the mean loss over the batch.
LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]


def make_probe(data: BatchSource, size: int, seed: int, batch_size: int) -> list[Batch]:
    """The fixed probe set (METHOD.md section 4): ``size`` training examples drawn once with
    ``seed``, as a list of batches. Data with a ``sample(n, seed, batch_size)`` method (the
    built-in datasets) is sampled at random; any other iterable gives its first ``size``
    examples in iteration order."""
    import torch

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


#: The word ``probe_size`` and ``eval_batch_size`` take for a size chosen from the data.
AUTO = "auto"
#: ``probe_size: auto``: this share of the training examples, within these bounds.
PROBE_SHARE, PROBE_MIN, PROBE_MAX = 0.05, 256, 2048
PROBE_HELP = (
    "examples in the fixed probe set the flows are measured on (auto: 5% of the training"
    " examples, within 256..2048, the number chosen recorded in summary.json)"
)
#: ``eval_batch_size: auto`` for models with a convolution, and for the rest; measured with
#: ``benchmarks/eval_batch.py`` (README, "Speed"): larger batches evaluate slower on CPU.
EVAL_BATCH_CONV, EVAL_BATCH_DENSE = 128, 256


def count_examples(data: BatchSource) -> int:
    """The examples in ``data``: held (:class:`incop.Batches`), in a DataLoader's dataset, or
    counted over one pass."""
    if hasattr(data, "num_examples"):
        return int(data.num_examples)
    dataset = getattr(data, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    return sum(inputs.count(x) for x, _ in data)


def probe_examples(probe_size: int | str, train_examples: int) -> int:
    """The probe set's size: ``probe_size``, or for ``auto`` 5% of the ``train_examples``
    within 256..2048 (the flows are measured on it at every epoch, so on a small training
    split a fixed 2048 would cost a large share of the epoch)."""
    if probe_size != AUTO:
        return int(probe_size)
    return min(PROBE_MAX, max(PROBE_MIN, int(PROBE_SHARE * train_examples)))


def eval_batch(eval_batch_size: int | str, model: torch.nn.Module) -> int:
    """The evaluation batch size: ``eval_batch_size``, or for ``auto`` 128 for a model with a
    convolution and 256 for the rest."""
    if eval_batch_size != AUTO:
        return int(eval_batch_size)
    return EVAL_BATCH_CONV if convolves(model) else EVAL_BATCH_DENSE
