"""Your own CNN, pruned by InCoP-GF on synthetic images, its ticket exported and loaded back.

python examples/own_cnn.py [OUT]      (OUT: the run folder, default runs/example-cnn)
"""

import sys

import torch
from torch import nn

import incop


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


def build() -> nn.Module:
    """The factory the run records, so that load_ticket rebuilds the model by itself."""
    return SmallCNN()


def stripes(n: int, seed: int) -> incop.Batches:
    """Images whose class is the orientation of a faint stripe pattern under noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    grid = torch.arange(12.0)
    patterns = torch.stack([torch.sin(grid)[None].expand(12, 12), torch.sin(grid)[:, None]
                            .expand(12, 12), torch.sin(grid[:, None] + grid),
                            torch.sin(grid[:, None] - grid)])  # fmt: skip
    x = patterns[y][:, None] + 0.5 * torch.randn(n, 1, 12, 12, generator=g)
    return incop.Batches(x, y, batch_size=64, shuffle=True, seed=seed)


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/example-cnn"
    torch.manual_seed(0)
    result = incop.prune(build(), stripes(1024, 0), stripes(256, 1), method="incop-gf",
                         levels=3, warmup_epochs=4, max_epochs=4, out=out,
                         model_factory="own_cnn:build")  # fmt: skip
    print(result.table())
    model, masks = incop.load_ticket(out)  # rebuilt from own_cnn:build
    print(incop.sparsity_report(model, masks, torch.zeros(1, 1, 12, 12)).format())
