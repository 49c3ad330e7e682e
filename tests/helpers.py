"""Small models and data shared by the tests."""

import os
from pathlib import Path

import torch
from torch import nn

#: The shared real datasets (../shared/datasets beside the repository), where present.
SHARED = Path(
    os.environ.get("INCOP_SHARED_DATA", Path(__file__).parents[2] / "shared" / "datasets")
)


class TinyNet(nn.Module):
    """A user-defined model that is not in the registry."""

    def __init__(self, n_in=10, n_out=3):
        super().__init__()
        self.hidden = nn.Linear(n_in, 32)
        self.out = nn.Linear(32, n_out)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(x)))


def blobs(n=384, seed=0, n_in=10, n_out=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_out, (n,), generator=g)
    centres = torch.randn(n_out, n_in, generator=torch.Generator().manual_seed(99)) * 2
    return centres[y] + torch.randn(n, n_in, generator=g), y
