"""TAS: Network Pruning via Transformable Architecture Search (Dong & Yang, NeurIPS 2019),
on any model whose channels Torch-Pruning can group (TAS.md A8, A9; docs/tas.md).

The search space is one width per coupled channel group (the candidates ``C(N)`` of
:data:`RATIOS`) and one depth per stage of skippable residual blocks (:func:`depth_choices`).
A supernet (a copy of the model) multiplies each group's channels by a soft prefix mask
``m[c] = sum_{i in I} w_i 1[c < C_i]`` (two candidates ``I`` drawn from the Gumbel-softmax of
the group's logits alpha, :func:`gumbel_pair`), which equals TAS's zero-padded aggregate
exactly, and mixes each stage's block outputs by the Gumbel-softmax of its depth logits
beta. Weights and architecture are trained by alternating steps on the two halves of the
training data, the architecture against cross-entropy plus the FLOP-cost loss
(:func:`cost_loss`) that holds the argmax network's MACs in ``[R - t F_max, R]``. The argmax
shape is the result: hard masks over the model's prunable weights (channels ``>= C*`` of
every group, every layer of the blocks past ``d*``), which the ``compact`` export turns into
the smaller network whose MACs are the searched cost exactly.

"MACs" are incop's (alive weights x output positions, Conv/Linear only), so the expected
cost, the argmax cost and the compacted network's MACs are one count.
"""

from incop.core.lazy import exports

# Imported on first use: the tas pruner reads ARCH_LR and WeightOptimiser while a config is
# checked, which must not import torch.
__getattr__, __dir__ = exports(
    __name__,
    {
        "incop.methods.tas.network": (
            "apply_architecture",
            "removed_parameters",
            "scratch_init",
        ),
        "incop.methods.tas.sampling": (
            "PAIR",
            "RATIOS",
            "TAU",
            "cost_loss",
            "cwi",
            "depth_choices",
            "expected_width",
            "gumbel_pair",
            "keep_probabilities",
            "prefix_mask",
            "tau_at",
            "width_choices",
        ),
        "incop.methods.tas.optimiser": ("ARCH_LR", "TAS_SGD", "WeightOptimiser", "tas_sgd"),
        "incop.methods.tas.search": (
            "TASResult",
            "default_init",
            "halves",
            "tas_search",
        ),
        "incop.methods.tas.space": (
            "NORMS",
            "Group",
            "Space",
            "Stage",
            "architecture_macs",
            "expected_macs",
            "hard_masks",
            "macs_of",
            "removed_blocks",
            "search_space",
        ),
        "incop.methods.tas.supernet": ("Supernet",),
    },
)

__all__ = [
    "ARCH_LR",
    "NORMS",
    "PAIR",
    "RATIOS",
    "TAS_SGD",
    "TAU",
    "Group",
    "Space",
    "Stage",
    "architecture_macs",
    "Supernet",
    "TASResult",
    "WeightOptimiser",
    "apply_architecture",
    "cost_loss",
    "cwi",
    "default_init",
    "depth_choices",
    "expected_macs",
    "expected_width",
    "gumbel_pair",
    "halves",
    "hard_masks",
    "keep_probabilities",
    "macs_of",
    "prefix_mask",
    "removed_blocks",
    "removed_parameters",
    "scratch_init",
    "search_space",
    "tas_search",
    "tas_sgd",
    "tau_at",
    "width_choices",
]
