"""How the model trains fast, without changing what it computes: memory layout, compilation,
and the data-parallel wrapper.

Measured on this 2-core CPU (``benchmarks/throughput.py``): convolutions in ``channels_last``
layout take about 0.8x the time of the default NCHW layout for lenet5 and resnet20, so it is on
by default for models with a 2-d convolution. Converting the model is enough: a convolution
whose weight is channels_last computes in that layout whatever the input's.
"""

from __future__ import annotations

import torch
from torch import nn

from incop.core.world import World
from incop.errors import UserError


def has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def channels_last_applies(model: nn.Module, setting: bool | None) -> bool:
    """Whether ``model`` trains in channels_last: ``setting`` None means wherever it has a 2-d
    convolution; True on a model without one is refused (it would do nothing)."""
    conv = has_conv2d(model)
    if setting and not conv:
        raise UserError(
            f"channels_last: true would do nothing: {type(model).__name__} has no Conv2d layer"
            " (leave it unset, or false)"
        )
    return conv if setting is None else setting


def training_module(
    model: nn.Module, *, channels_last: bool | None, compile: bool, world: World
) -> nn.Module:
    """Lay ``model`` out in channels_last where it applies (in place: its parameters keep their
    names, shapes and values), and return what trains it: ``model`` itself, in
    DistributedDataParallel on several ranks, compiled with ``torch.compile`` if asked."""
    if channels_last_applies(model, channels_last):
        model.to(memory_format=torch.channels_last)
    trained = world.wrap(model)
    return torch.compile(trained) if compile else trained
