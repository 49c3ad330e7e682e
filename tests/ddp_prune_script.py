"""Run by tests/test_distributed.py under torchrun: incop.prune on a user's DataLoader with a
DistributedSampler, each rank its own part of the data. Writes the masks' fingerprint of
every rank next to the run folder given as argv[1]."""

import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from helpers import TinyNet, blobs
from incop import prune
from incop.engine.distributed import current_world, mask_fingerprint

out = Path(sys.argv[1])
world = current_world()
x, y = blobs(512)
train = TensorDataset(x[:384], y[:384])
val = TensorDataset(x[384:], y[384:])
sampler = DistributedSampler(train, seed=0)
train_loader = DataLoader(train, batch_size=16, sampler=sampler)
val_loader = DataLoader(val, batch_size=64, sampler=DistributedSampler(val, shuffle=False))
torch.manual_seed(0)
result = prune(
    TinyNet(), train_loader, val_loader, method="incop-gf", levels=2, warmup_epochs=2,
    max_epochs=2, probe_size=128, out=str(out / "run"), threads=1,
)  # fmt: skip
torch.save(mask_fingerprint(result.masks), out / f"masks-{world.rank}.pt")
torch.save([lv.val_accuracy for lv in result.levels], out / f"val-{world.rank}.pt")
