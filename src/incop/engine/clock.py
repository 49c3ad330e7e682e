"""Wall-clock seconds per category of a phase (train, eval, flow)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Clock:
    """Wall-clock seconds per category; synchronises CUDA so GPU time is not misattributed."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.seconds: dict[str, float] = {"train": 0.0, "eval": 0.0, "flow": 0.0}

    @contextmanager
    def __call__(self, category: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.seconds[category] += time.perf_counter() - start
