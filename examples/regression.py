"""A regression MLP under InCoP-GF with its own loss: every decision reads the validation
loss, and the gradient flow is the gradient of the mean squared error.

    python examples/regression.py [OUT]           (OUT: default runs/example-regression)
"""

import sys

import torch
import torch.nn.functional as F
from torch import nn

import incop


def build() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 1))  # fmt: skip


def data(n: int, seed: int) -> incop.Batches:
    """y = sin of a fixed projection of x, plus noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    w = torch.linspace(-1, 1, 8)
    y = torch.sin(x @ w)[:, None] + 0.05 * torch.randn(n, 1, generator=g)
    return incop.Batches(x, y, batch_size=64, shuffle=True, seed=seed)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/example-regression"
    torch.manual_seed(0)
    # eps 0.5: the relative GF distance a retrained level gets back under (flow alone decides).
    result = incop.prune(build(), data(2048, 0), data(512, 1), method="incop-gf-flow",
                         loss_fn=F.mse_loss, metric="loss", levels=3, warmup_epochs=5,
                         max_epochs=6, eps=0.5, out=out,
                         model_factory="regression:build")  # fmt: skip
    print(result.table())
    print("stopped by:", [level.stop_reason for level in result.levels[1:]])
