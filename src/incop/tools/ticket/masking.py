"""Masks enforced in any training loop (issue 11): :func:`apply_masks` and its handle."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from incop.core.masks import MaskEnforcer, Masks
from incop.errors import UserError


def masked_parameters(model: nn.Module, masks: Masks) -> dict[str, nn.Parameter]:
    """The parameters of ``model`` that ``masks`` names, checked: ``model`` must be a module,
    ``masks`` a dict, every name a parameter of the model and every mask a boolean tensor (or
    one holding only 0 and 1) of its parameter's shape."""
    if not isinstance(model, nn.Module):
        raise UserError(f"model: got a {type(model).__name__}, not a torch.nn.Module")
    if not isinstance(masks, dict):
        raise UserError(
            f"masks: a {type(masks).__name__} is not allowed; give a dict of parameter name ->"
            " boolean tensor"
        )
    params = dict(model.named_parameters())
    problems = []
    for name, mask in masks.items():
        if name not in params:
            problems.append(f"mask {name!r} names no parameter of the model")
        elif not torch.is_tensor(mask) or tuple(mask.shape) != tuple(params[name].shape):
            shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
            problems.append(
                f"mask {name!r} has shape {shape}, its parameter {tuple(params[name].shape)}"
            )
        elif mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
            odd = mask[(mask != 0) & (mask != 1)].flatten()[0].item()
            problems.append(
                f"mask {name!r} holds {odd!r}; a mask is boolean, or holds only 0 and 1"
            )
    if problems:
        raise UserError("masks do not fit the model:\n" + "\n".join(problems))
    return {name: params[name] for name in masks}


class MaskHandle:
    """What :func:`apply_masks` returns: ``remove()`` stops enforcing the masks (the weights
    stay as they are; training then moves pruned weights again)."""

    def __init__(self, enforcer: MaskEnforcer, hooks: list[RemovableHandle]) -> None:
        self.enforcer = enforcer
        self._hooks = hooks

    @property
    def masks(self) -> Masks:
        return self.enforcer.masks

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


@torch.no_grad()
def apply_masks(
    model: nn.Module, masks: Masks, optimizer: torch.optim.Optimizer | None = None
) -> MaskHandle:
    """Prune ``model`` to ``masks`` and keep it pruned through the user's own training loop.

    ``masks`` maps parameter names (as in ``model.named_parameters()``) to boolean tensors
    of the parameter's shape, True where the weight lives. Pruned weights are set to zero at
    once; a hook on each masked parameter zeroes their gradient in every ``backward()``.
    With ``optimizer``, a step post-hook also zeroes them, and the optimiser's state of
    their shape (momentum, Adam's moments), after every ``step()``: needed when that state
    was built before pruning, or when the optimiser moves weights with a zero gradient.
    Masks are moved to each parameter's device. Returns a :class:`MaskHandle`; its
    ``remove()`` undoes the hooks.
    """
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise UserError(f"optimizer: a {type(optimizer).__name__} is not a torch.optim.Optimizer")
    params = masked_parameters(model, masks)
    placed = {name: masks[name].to(device=p.device, dtype=torch.bool) for name, p in params.items()}
    enforcer = MaskEnforcer(params, placed)
    hooks = []
    for name, p in params.items():
        p.mul_(placed[name])
        hooks.append(p.register_hook(lambda grad, mask=placed[name]: grad * mask))
    if optimizer is not None:
        enforcer.after_step(optimizer)
        hooks.append(
            optimizer.register_step_post_hook(lambda opt, args, kwargs: enforcer.after_step(opt))
        )
    return MaskHandle(enforcer, hooks)
