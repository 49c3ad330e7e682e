"""The optimisers and learning-rate schedules a run trains with.

torch's optimisers import ``torch._dynamo`` (1.9 s on this CPU: the default job took
4.8-5.2 s with it, 3.3-3.6 s without) on their first construction and first step, from
decorators that matter only when the step is traced by ``torch.compile``; incop never
compiles a step, so :func:`make_optimizer` builds them with torch's own methods unwrapped
from those decorators: the same update, bit for bit (tested against torch's classes).
Torch-free at import: a config reads the names.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from incop.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("none", "cosine", "step")
#: The methods of ``torch.optim.Optimizer`` whose decorators import ``torch._dynamo``.
_TRACED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


@functools.cache
def eager(base: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """``base`` (a ``torch.optim`` class) whose methods are torch's own, without the
    ``torch._dynamo`` import of their decorators: its ``step`` runs under ``no_grad`` as
    torch's does for a non-differentiable optimiser. A subclass, so ``isinstance`` and
    ``state_dict`` are unchanged."""
    import torch

    members: dict[str, Any] = {name: inspect.unwrap(getattr(base, name)) for name in _TRACED}
    step = inspect.unwrap(base.step)

    def no_grad_step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
        with torch.no_grad():
            return step(self, closure)

    members["step"] = no_grad_step
    return type(base.__name__, (base,), {**members, "__module__": __name__})


def make_optimizer(
    params: Iterable[nn.Parameter],
    name: str,
    *,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """``sgd`` (momentum, optional Nesterov) or ``adam``; weight decay is L2 (coupled) for both.

    The fused implementation where the parameters allow it (floating point, on CPU or CUDA):
    one pass over each weight per step instead of one per operation, the same update rule. On
    this CPU its epoch took 0.86-1.07x the per-parameter step's, from run to run
    (``benchmarks/throughput.py``, incop/unfused)."""
    import torch

    params = list(params)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if name == "sgd":
        return eager(torch.optim.SGD)(
            params,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            fused=fused or None,
        )
    if name == "adam":
        return eager(torch.optim.Adam)(
            params, lr=lr, weight_decay=weight_decay, fused=fused or None
        )
    raise UserError(f"optimizer: unknown value {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, name: str, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-epoch learning-rate schedule over ``epochs`` epochs: ``none``, ``cosine`` or
    ``step`` (x0.1 at 50% and 75% of the epochs).

    The schedule starts from each group's base learning rate, also when ``optimizer`` was used
    by an earlier phase (rewind ``none``): every phase runs a whole schedule of its own."""
    import torch

    for group in optimizer.param_groups:
        group["lr"] = group.get("initial_lr", group["lr"])
    if name == "none":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if name == "step":
        milestones = [max(1, epochs // 2), max(1, (3 * epochs) // 4)]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    raise UserError(f"schedule: unknown value {name!r}; allowed: {', '.join(SCHEDULES)}")
