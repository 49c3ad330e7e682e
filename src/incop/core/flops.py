"""The compute a run spends, in FLOPs counted from the alive weights (METHOD.md section 10).

Convention: a prunable layer's forward pass costs 2 FLOPs per multiply-accumulate over its
alive weights (its dense MACs times its alive fraction, as :func:`incop.sparsity_report`
counts them); a training example costs 3 forward passes (the forward, and a backward of twice
its cost), an evaluation or information-flow probe example 1, a gradient-flow probe example
3. Biases, normalisation and activations are not counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

    from incop.core.masks import Masks


#: FLOPs per multiply-accumulate.
FLOPS_PER_MAC = 2
#: Forward passes one example costs: trained (forward and a backward of twice its cost),
#: evaluated, or measured for a flow.
TRAIN_PASSES = 3
EVAL_PASSES = 1
#: The categories of a run's cost; ``search`` sums all but ``eval``: what finding and
#: training the ticket cost.
CATEGORIES = ("warmup", "retrain", "finetune", "flows", "eval")


class FlopCounter:
    """FLOPs of one example's forward pass through ``model`` under any masks of its prunable
    tensors. Each layer's output positions per example are learnt once, from one forward
    pass of ``example_input`` (shape ``(B, ...)``); after that a count costs a sum per mask."""

    def __init__(self, model: nn.Module, masks: Masks, example_input: torch.Tensor) -> None:
        from incop.core.masks import sparsity_report

        report = sparsity_report(model, masks, example_input)
        self.positions = {layer.name: layer.macs_dense // layer.total for layer in report.layers}

    def forward(self, masks: Masks) -> int:
        """Forward FLOPs per example: 2 x the MACs over the alive weights."""
        return FLOPS_PER_MAC * sum(int(masks[n].sum()) * pos for n, pos in self.positions.items())

    def dense(self, masks: Masks) -> int:
        """Forward FLOPs per example of the dense network (every weight of ``masks`` alive)."""
        return FLOPS_PER_MAC * sum(masks[n].numel() * pos for n, pos in self.positions.items())


def with_search(cost: dict[str, float]) -> dict[str, float]:
    """``cost`` (one number per category) with ``search``: warm-up, retraining, fine-tune and
    flows together."""
    return {**cost, "search": sum(cost[k] for k in CATEGORIES if k != "eval")}
