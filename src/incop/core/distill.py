"""Knowledge distillation (Hinton et al. 2015; TAS.md A6): a phase trains against a frozen
teacher's softened outputs as well as the labels.

``L_KD = (1 - alpha) * loss(z, y) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z / T))``

with ``z`` the student's logits (B, classes), ``z_t`` the teacher's on the same inputs (in
eval mode, without gradient), the KL divergence averaged over the batch ("batchmean") and
``loss`` the run's own loss (cross-entropy by default). TAS trains its pruned network so,
with alpha 0.9 and T 4.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from incop.core import inputs
from incop.core.batches import LossFn
from incop.core.inputs import OutputFn


def kd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
    loss_fn: LossFn = F.cross_entropy,
) -> torch.Tensor:
    """The distillation loss of logits ``student`` against ``teacher`` (both (B, classes))
    and the labels ``targets`` (what ``loss_fn`` takes); alpha 0 gives ``loss_fn`` alone."""
    hard = loss_fn(student, targets)
    if alpha == 0:
        return hard
    t = temperature
    # In float64: at a high temperature both distributions are near uniform, and float32's
    # log-ratios lose the divergence's sixth digit (TAS.md A6's hand value).
    soft = F.kl_div(
        F.log_softmax(student.double() / t, dim=-1),
        F.log_softmax(teacher.double() / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - alpha) * hard + (alpha * t * t * soft).to(hard.dtype)


@dataclass
class Teacher:
    """A frozen copy of a network (theta*) that a phase distils from: ``loss(x, z, y)`` is
    :func:`kd_loss` of the student's logits ``z`` on inputs ``x``."""

    model: nn.Module
    alpha: float
    temperature: float
    loss_fn: LossFn = F.cross_entropy
    output_fn: OutputFn = inputs.logits

    @classmethod
    def of(
        cls, model: nn.Module, weights: dict[str, torch.Tensor], alpha: float, temperature: float,
        loss_fn: LossFn = F.cross_entropy, output_fn: OutputFn = inputs.logits,
    ) -> Teacher:  # fmt: skip
        """A teacher: ``model``'s architecture with ``weights``, in eval mode, no gradients."""
        net = copy.deepcopy(model)
        net.load_state_dict(weights)
        net.eval().requires_grad_(False)
        return cls(net, alpha, temperature, loss_fn, output_fn)

    def loss(self, x: Any, student: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher = self.output_fn(inputs.call(self.model, x))
        return kd_loss(student, teacher, targets, alpha=self.alpha,
                       temperature=self.temperature, loss_fn=self.loss_fn)  # fmt: skip
