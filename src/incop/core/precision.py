"""Mixed precision for training and evaluation: ``fp32``, ``bf16`` or ``fp16`` autocast.

Flows are measured outside autocast, in fp32, whatever the precision: their distances are
compared across epochs and with the dense reference, and must not move with rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from incop.core.architecture import convolves
from incop.errors import UserError

if TYPE_CHECKING:
    import torch


PRECISIONS = ("fp32", "bf16", "fp16")
#: ``precision: auto``: :func:`auto_precision` chooses.
AUTO_PRECISION = "auto"
#: The autocast dtype of each reduced precision (the name of its ``torch`` attribute).
_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX)."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def auto_precision(model: torch.nn.Module, device: torch.device) -> str:
    """``bf16`` for a model with a convolution trained on a CPU with native bf16, else
    ``fp32``. Chosen from ``benchmarks/precision_study.py`` (README, "bf16 on CPU"): on an
    AVX512-BF16 CPU, lenet5's and resnet20's steps took 0.81x and 0.70x the fp32 time, their
    dense and ticket accuracies within the seed spread of fp32's. Not measured elsewhere (a
    dense net, a GPU, a CPU without bf16): fp32."""
    return "bf16" if device.type == "cpu" and convolves(model) and native_bf16() else "fp32"


class Precision:
    """Autocast for one device and, for ``fp16``, a gradient scaler (fp16's narrow range
    would flush small gradients to zero without it)."""

    def __init__(self, name: str, device: torch.device) -> None:
        import torch

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
        import torch

        with torch.autocast(self.device_type, dtype=getattr(torch, _DTYPES[self.name])):
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
