"""Pruning at initialisation (METHOD.md section 8): the scores of SynFlow and SNIP, and the
context every pruner that scores with the network is bound to (the pruners:
:mod:`incop.methods.pruners.synflow`, :mod:`incop.methods.pruners.snip`).

Both score every alive weight with the network itself, so unlike the magnitude pruners
(``(weights, masks, generator) -> masks``) they need the model and, for SNIP, a batch of
training data: the run hands them a :class:`PruneContext` through ``bind`` before the first
prune. Both prune, in global scope, straight to ``target`` (a fraction of the prunable
weights), keep at least one weight per tensor, and leave the model, its gradients and the
run's random state as they found them (they score a copy).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from incop.core import inputs as model_inputs
from incop.core.batches import AUTO, EVAL_BATCH_DENSE, PROBE_MAX, Batch, BatchSource
from incop.core.inputs import OutputFn
from incop.core.world import World, shared_probe
from incop.errors import UserError
from incop.methods.pruning import Weights

if TYPE_CHECKING:
    import torch
    from torch import nn

    from incop.core.masks import Masks


@dataclass(frozen=True)
class PruneContext:
    """What a pruner that scores with the network needs: the ``model`` being pruned (its
    prunable parameters are named as in the masks), the training data with the run's
    ``seed`` (SNIP draws its batch from it), the loss, the device, the ranks of a
    data-parallel run (``world``), which must all draw the same examples, the model's own
    initialisation and the run's log."""

    model: nn.Module
    train_data: BatchSource
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    seed: int
    device: torch.device
    example_input: Any
    world: World = World()
    output_fn: OutputFn = model_inputs.logits
    #: How the model's modules are initialised afresh (None: each one's reset_parameters).
    init_fn: Callable[[nn.Module], None] | None = None
    #: Where a pruner that trains (TAS's search) logs its epoch records (metrics.jsonl).
    log: Callable[[dict[str, Any]], None] | None = None
    #: The run's probe size and evaluation batch size, what ``auto`` stands for here.
    probe_size: int = PROBE_MAX
    eval_batch_size: int = EVAL_BATCH_DENSE

    def probe(self, size: int | str, batch_size: int | str) -> list[Batch]:
        """``size`` training examples drawn with the run's seed, in batches of
        ``batch_size`` on the device (``auto``: the run's sizes)."""
        size = self.probe_size if size == AUTO else int(size)
        batch_size = self.eval_batch_size if batch_size == AUTO else int(batch_size)
        return shared_probe(self.train_data, size, self.seed, batch_size, self.world, self.device)


def _scoring_copy(model: nn.Module, masks: Masks) -> nn.Module:
    """A copy of ``model`` with the masks applied, whose gradients are its own."""
    import torch

    net = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in masks.items():
            net.get_parameter(name).mul_(mask)
    net.zero_grad(set_to_none=True)
    return net


def synflow_scores(model: nn.Module, masks: Masks, example_input: torch.Tensor) -> Weights:
    """SynFlow's ``|theta * dR/dtheta|`` per masked parameter (same shapes, float64).

    ``R`` is the sum of the outputs of the linearised network: every parameter and floating
    buffer replaced by its absolute value (BatchNorm in eval mode, so its running statistics
    are used, as absolute values too), the pruned weights zero, fed one all-ones example
    shaped like ``example_input[0]``. Computed in float64 on a copy: R grows with the
    product of the layers' weight sums and overflows float32 in deep networks.
    """
    import torch

    net = _scoring_copy(model, masks).double().eval()
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            if tensor.is_floating_point():
                tensor.abs_()
    ones = torch.ones(
        (1, *example_input.shape[1:]), dtype=torch.float64, device=example_input.device
    )
    net(ones).sum().backward()
    scores = {}
    for name in masks:
        weight = net.get_parameter(name)
        scores[name] = (weight.grad * weight).detach().abs()
    if not all(torch.isfinite(s).all() for s in scores.values()):
        raise UserError("synflow: the scores overflowed float64; the network is too deep for it")
    return scores


def snip_scores(
    model: nn.Module,
    masks: Masks,
    batch: tuple[Any, torch.Tensor],
    loss_fn: Callable,
    output_fn: OutputFn = model_inputs.logits,
    *,
    train: bool = True,
) -> Weights:
    """SNIP's connection sensitivity ``|theta * dL/dtheta|`` per masked parameter (same shapes):
    the loss of one batch ``(inputs, targets)``, the network in training mode (as Lee et al.;
    ``train=False``: eval mode, BatchNorm on its running statistics, as the Synaptic-Flow
    reference code scores), computed on a copy so the model's BatchNorm statistics do not
    move."""
    import torch

    net = _scoring_copy(model, masks).train(train)
    inputs, targets = batch
    with torch.random.fork_rng(devices=[]):  # dropout must not advance the run's generator
        loss_fn(output_fn(model_inputs.call(net, inputs)), targets).backward()
    scores = {}
    for name in masks:
        weight = net.get_parameter(name)
        grad = weight.grad if weight.grad is not None else torch.zeros_like(weight)
        scores[name] = (grad * weight).detach().abs()
    return scores


class NetworkScored:
    """A pruner that scores with the network: it holds a :class:`PruneContext`, given by
    ``bind`` (the run calls it before the first prune)."""

    context: PruneContext | None

    def bind(self, context: PruneContext):
        """This pruner, scoring with ``context``'s network and data."""
        return replace(self, context=context)

    def _context(self) -> PruneContext:
        if self.context is None:
            raise RuntimeError(f"{type(self).__name__} needs bind(context) before pruning")
        return self.context
