"""Data-parallel runs on torchrun: the process group, who writes, and what ranks must agree on.

``torchrun --nproc_per_node N -m incop run ...`` (or ``incop run --nproc N``, which launches
exactly that) starts N copies of the run. Each one is a rank of a :class:`World`:

- the model trains wrapped in ``DistributedDataParallel``, so every step averages the
  gradients of all ranks; ``batch_size`` stays the global batch, split over the ranks;
- evaluation statistics are summed over the ranks, so every rank sees the same validation
  accuracy and takes the same decisions;
- whatever is drawn from a rank's own data and then decides (the probe set of a user's
  sharded DataLoader, SNIP's batch) is taken from rank 0, and the masks are checked to be the
  same on every rank after each prune;
- only rank 0 writes files and shows progress.

A single process is a world of one, where all of this costs nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import torch
import torch.distributed as dist

from incop.core.world import World
from incop.errors import UserError


def under_torchrun() -> bool:
    """Whether this process is one of several ranks torchrun started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current_world() -> World:
    """The world this process belongs to: under torchrun (``WORLD_SIZE`` > 1) the process
    group is started here, the first time (gloo on CPU, NCCL when CUDA is available);
    otherwise a world of one."""
    if not under_torchrun():
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def launch(nproc: int, argv: Sequence[str]) -> int:
    """``torchrun --standalone --nproc_per_node nproc -m incop *argv``: the same command on
    ``nproc`` ranks of this machine, through PyTorch's own launcher; returns its exit code."""
    if nproc < 1:
        raise UserError(f"nproc: {nproc} is not a number of processes; allowed: 1 or more")
    if under_torchrun():
        raise UserError("nproc: this process already runs under torchrun; leave --nproc out")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(nproc), "-m", "incop", *argv]
    return subprocess.call(command)


def mask_fingerprint(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per mask: its alive count and the sum of its alive positions' flat indices (float64),
    so two ranks with different masks differ here (shape ``(2 * len(masks),)``)."""
    values = []
    for mask in masks.values():
        flat = mask.reshape(-1)
        positions = torch.arange(flat.numel(), device=flat.device, dtype=torch.float64)
        values += [flat.sum(dtype=torch.float64), (positions * flat).sum()]
    return torch.stack(values).cpu()
