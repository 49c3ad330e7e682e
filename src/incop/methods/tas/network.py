"""The network TAS derives, in the model's own architecture: the removed blocks' parameters
zero, and the student initialised afresh at its smaller shapes."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from incop.core.masks import Masks


def removed_parameters(model: nn.Module, removed: list[str]) -> list[str]:
    """Names of every parameter inside the ``removed`` blocks."""
    return [
        name
        for name, _ in model.named_parameters()
        if any(name.startswith(f"{block}.") for block in removed)
    ]


@torch.no_grad()
def apply_architecture(model: nn.Module, masks: Masks, removed: list[str]) -> nn.Module:
    """``model`` with the pruned weights of ``masks`` and every parameter of the ``removed``
    blocks zero: the derived network in the model's own architecture (a block whose
    parameters are all zero adds nothing to its shortcut)."""
    for name, mask in masks.items():
        model.get_parameter(name).mul_(mask)
    for name in removed_parameters(model, removed):
        model.get_parameter(name).zero_()
    return model


@torch.no_grad()
def scratch_init(model: nn.Module, masks: Masks, init_fn: Callable[[nn.Module], None]) -> None:
    """Initialise ``model`` afresh as the network ``masks`` keeps (TAS's student): each
    prunable layer as ``init_fn`` initialises a layer of its alive shape (its alive output
    units and inputs, a prefix of each), so fan-in and fan-out are the smaller network's;
    every other module with parameters as ``init_fn`` initialises it."""
    layers = {name.removesuffix(".weight"): mask for name, mask in masks.items()}
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        mask = layers.get(name)
        if mask is None:
            init_fn(module)
            continue
        rows = int(mask.flatten(1).any(1).sum())
        cols = int(mask.transpose(0, 1).flatten(1).any(1).sum())
        if not rows or not cols:
            continue  # dead: a removed block's, zero from here on
        small = copy.deepcopy(module)
        small.weight = nn.Parameter(module.weight.new_empty((rows, cols, *mask.shape[2:])))
        if getattr(module, "bias", None) is not None:
            small.bias = nn.Parameter(module.bias.new_empty(rows))
        init_fn(small)
        module.weight.zero_()
        module.weight[:rows, :cols] = small.weight
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()
            module.bias[:rows] = small.bias
