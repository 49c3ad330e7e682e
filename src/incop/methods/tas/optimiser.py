"""How the search trains (TAS.md A5, A11.8): the supernet's weights by TAS's SGD, the
architecture by Adam at :data:`ARCH_LR`. Torch-free: the tas pruner's options read it while
a config is checked."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: Adam's learning rate for the architecture. TAS uses 1e-3 over ~59k steps; over incop's
#: reduced budgets (hundreds of steps) the logits barely move and the argmax network never
#: settles in the cost band: lenet5 on digits, 165 steps, seeds 0-3, share of the last 20% of
#: steps in the band: 0% at 1e-3, 0-3% at 1e-2, 85-91% at 5e-2 (benchmarks/tas.py --arch-lr).
ARCH_LR = 0.05


@dataclass(frozen=True)
class WeightOptimiser:
    """How the supernet's weights train: TAS's SGD (0.1 at batch 256, Nesterov, momentum 0.9,
    weight decay 5e-4, cosine to 0) for BatchNorm nets, its rate scaled linearly to the
    search's batch (:func:`tas_sgd`); a BN-free net takes the run's settings (TAS.md A11.8)."""

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4


TAS_SGD = WeightOptimiser()
#: The batch TAS's rate 0.1 is for (256 train + 256 valid examples a step).
TAS_BATCH = 256


def tas_sgd(batch_size: int) -> WeightOptimiser:
    """TAS's SGD at ``batch_size`` examples a step: lr 0.1 x batch_size / 256 (the linear
    scaling rule). At 0.1 with batch 64 a resnet20 search on 1,350 Fashion-MNIST images
    diverged in its sixth epoch (docs/tas.md)."""
    return dataclasses.replace(TAS_SGD, lr=TAS_SGD.lr * batch_size / TAS_BATCH)
