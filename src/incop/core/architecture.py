"""What the defaults read off a model's architecture (``auto`` settings)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


def convolves(model: nn.Module) -> bool:
    """Whether ``model`` has a convolution of any dimension (1-d, 2-d, 3-d, transposed)."""
    from torch import nn

    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
