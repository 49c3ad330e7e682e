"""Model inputs and outputs as users have them.

A batch is ``(inputs, targets)``. ``inputs`` is a tensor (``model(x)``), a tuple or list of
positional arguments (``model(*inputs)``), or a dict of keyword arguments
(``model(**inputs)``, as Hugging Face models take ``input_ids`` and ``attention_mask``);
every tensor in it has the examples along its first dimension. A model's output is reduced
to the tensor the loss reads by ``output_fn``; the default, :func:`logits`, takes a tensor as
it is, a ``ModelOutput``'s (or any object's) ``.logits``, a dict's ``"logits"``, or a tuple's
first element.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from incop.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn


#: What a batch's inputs may be: a tensor, a tuple/list of them, or a dict of them.
Inputs = Any
#: ``output_fn(model output) -> tensor``: what the loss and the metric read.
OutputFn = Callable[[Any], "torch.Tensor"]


def call(model: nn.Module, inputs: Inputs) -> Any:
    """``model`` applied to ``inputs``: positional for a tuple or list, keywords for a dict."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def logits(output: Any) -> torch.Tensor:
    """The tensor of a model's output that the loss reads (the default ``output_fn``)."""
    import torch

    if torch.is_tensor(output):
        return output
    held = getattr(output, "logits", None)
    if torch.is_tensor(held):
        return held
    if isinstance(output, dict):
        for value in [output["logits"]] if "logits" in output else output.values():
            if torch.is_tensor(value):
                return value
    if isinstance(output, tuple | list) and output:
        return logits(output[0])
    raise UserError(
        f"the model's output ({type(output).__name__}) holds no tensor for the loss; pass"
        " output_fn=lambda output: <the tensor>"
    )


def apply(inputs: Inputs, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
    """``inputs`` with ``fn`` applied to every tensor in it (same structure)."""
    import torch

    if torch.is_tensor(inputs):
        return fn(inputs)
    if isinstance(inputs, dict):
        return {k: apply(v, fn) for k, v in inputs.items()}
    if isinstance(inputs, tuple | list):
        return type(inputs)(apply(v, fn) for v in inputs)
    return inputs


def to_device(inputs: Inputs, device: torch.device | None) -> Inputs:
    if device is None:
        return inputs
    return apply(inputs, lambda t: t if t.device == device else t.to(device, non_blocking=True))


def tensors(inputs: Inputs) -> list[torch.Tensor]:
    """Every tensor in ``inputs``, in order."""
    import torch

    if torch.is_tensor(inputs):
        return [inputs]
    values = inputs.values() if isinstance(inputs, dict) else inputs
    if isinstance(inputs, dict | tuple | list):
        return [t for value in values for t in tensors(value)]
    return []


def count(inputs: Inputs) -> int:
    """Examples in ``inputs``: the first dimension of its first tensor."""
    found = tensors(inputs)
    if not found or not found[0].dim():
        raise UserError(
            f"inputs: {type(inputs).__name__} holds no batched tensor (examples along dim 0)"
        )
    return found[0].shape[0]


def cat(parts: list[Inputs]) -> Inputs:
    """The inputs of several batches as one (same structure, tensors concatenated)."""
    import torch

    first = parts[0]
    if torch.is_tensor(first):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: cat([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple | list):
        return type(first)(cat([p[i] for p in parts]) for i in range(len(first)))
    return first


def take(inputs: Inputs, start: int, stop: int) -> Inputs:
    """Examples ``start:stop`` of ``inputs``."""
    return apply(inputs, lambda t: t[start:stop])


def split(inputs: Inputs, size: int) -> list[Inputs]:
    """``inputs`` cut into batches of ``size`` examples (the last one fewer)."""
    n = count(inputs)
    return [take(inputs, i, i + size) for i in range(0, n, size)]


def part(inputs: Inputs, rank: int, ranks: int) -> Inputs:
    """Rank ``rank``'s contiguous part of ``inputs`` out of ``ranks`` (sizes within one)."""
    return apply(inputs, lambda t: t.tensor_split(ranks)[rank])


def describe(inputs: Inputs) -> Any:
    """The shapes and dtypes of ``inputs``, as JSON: ``{"shape": [...], "dtype": "int64"}`` per
    tensor, in a list (tuple inputs) or a dict (keyword inputs) as they come."""
    import torch

    if torch.is_tensor(inputs):
        return {"shape": list(inputs.shape), "dtype": str(inputs.dtype).removeprefix("torch.")}
    if isinstance(inputs, dict):
        return {"kwargs": {k: describe(v) for k, v in inputs.items()}}
    if isinstance(inputs, tuple | list):
        return {"args": [describe(v) for v in inputs]}
    raise UserError(f"inputs: a {type(inputs).__name__} cannot be recorded; give tensors")


def example(spec: Any) -> Inputs:
    """Inputs of the shapes and dtypes :func:`describe` recorded: zeros for floating point,
    ones for integers (a token id every vocabulary has, an attention mask that attends)."""
    import torch

    if not isinstance(spec, dict):
        raise UserError(f"example input: {spec!r} is not a recorded input")
    if "kwargs" in spec:
        return {k: example(v) for k, v in spec["kwargs"].items()}
    if "args" in spec:
        return tuple(example(v) for v in spec["args"])
    dtype = getattr(torch, str(spec.get("dtype")), None)
    shape = spec.get("shape")
    if not isinstance(dtype, torch.dtype) or not (
        isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
    ):
        raise UserError(f"example input: {spec!r} is not a recorded shape and dtype")
    fill = torch.zeros if dtype.is_floating_point else torch.ones
    return fill(shape, dtype=dtype)
