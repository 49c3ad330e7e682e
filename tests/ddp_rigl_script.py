"""Run by tests/test_dynamic.py under torchrun: RigL on two ranks, each its own part of the
data. Writes, per rank, the masks' fingerprint after every update next to argv[1]."""

import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from helpers import TinyNet, blobs
from incop import prune
from incop.engine.distributed import current_world, mask_fingerprint
from incop.methods.pruners import RigLPruner


class Recording(RigLPruner):
    def after_backward(self, model, masks, state):
        before = self.updates
        super().after_backward(model, masks, state)
        if self.updates > before:
            fingerprints.append(mask_fingerprint(masks))


out = Path(sys.argv[1])
world = current_world()
fingerprints = []
x, y = blobs(512)
train = TensorDataset(x[:384], y[:384])
val = TensorDataset(x[384:], y[384:])
train_loader = DataLoader(train, batch_size=16, sampler=DistributedSampler(train, seed=0))
val_loader = DataLoader(val, batch_size=64, sampler=DistributedSampler(val, shuffle=False))
torch.manual_seed(0)
pruner = Recording(target=0.2, update_every=2, epochs=3, batch_size=16)
prune(TinyNet(), train_loader, val_loader, method="rigl", pruner=pruner, max_epochs=3,
      threads=1)  # fmt: skip
torch.save(fingerprints, out / f"updates-{world.rank}.pt")
