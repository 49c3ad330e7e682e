"""Mixed precision for training and evaluation: ``fp32``, ``bf16`` or ``fp16`` autocast.

Flows are measured outside autocast, in fp32, whatever the precision: their distances are
compared across epochs and with the dense reference, and must not move with rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from incop.errors import UserError

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast for one device and, for ``fp16``, a gradient scaler (fp16's narrow range
    would flush small gradients to zero without it)."""

    def __init__(self, name: str, device: torch.device) -> None:
        if name not in PRECISIONS:
            raise UserError(f"precision: {name!r} is not allowed; allowed: {', '.join(PRECISIONS)}")
        if name == "fp16" and device.type != "cuda":
            raise UserError(
                f"precision: fp16 needs a CUDA device, and this run is on {device}; use bf16"
            )
        self.name = name
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The forward pass and loss in the chosen precision (a no-op for fp32)."""
        if self.name == "fp32":
            yield
            return
        with torch.autocast(self.device_type, dtype=_DTYPES[self.name]):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()``; with fp16, unscaled and skipped when a gradient overflowed."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state is not None:
            self.scaler.load_state_dict(state)


#: Plain fp32 training: no autocast, no scaler.
FP32 = Precision("fp32", torch.device("cpu"))
