"""``incop.tas_search``: TAS's architecture search alone (TAS.md A9), for users who want the
searched widths, depths and the smaller network without a run."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from incop.core import inputs
from incop.core.batches import BatchSource
from incop.methods.tas import TASResult, apply_architecture
from incop.methods.tas import tas_search as search
from incop.tools.ticket.compact import compact


def tas_search(
    model: nn.Module,
    train_batches: BatchSource,
    *,
    flop_ratio: float,
    epochs: int,
    example_input: Any = None,
    **options: Any,
) -> TASResult:
    """Search the widths (and depths) of ``model`` under ``flop_ratio`` (in (0, 1]) of its
    MACs for ``epochs`` epochs on ``train_batches`` (``(inputs (B, ...), targets (B,))``);
    ``model`` is not changed. The other keywords are
    :func:`incop.methods.tas.tas_search`'s (``tau``, ``flop_weight``, ``tolerance``,
    ``search_depth``, ``search_init``, ``arch_lr``, ``seed``...).

    Returns its :class:`~incop.methods.tas.TASResult` (widths per group, depths per stage,
    the MACs fractions, the history, the masks), with ``compact_model``: the searched weights
    as a smaller dense network (Torch-Pruning), whose MACs are ``macs_fraction`` of the dense
    model's exactly (``incop.sparsity_report`` counts them)."""
    result = search(model, train_batches, flop_ratio=flop_ratio, epochs=epochs,
                    example_input=example_input, **options)  # fmt: skip
    if example_input is None:
        x, _ = next(iter(train_batches))
        example_input = inputs.take(x, 0, 2)
    device = next(result.model.parameters()).device
    ticket = apply_architecture(copy.deepcopy(result.model), result.masks, result.removed)
    result.compact_model = compact(ticket, inputs.to_device(example_input, device)).model
    return result
