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
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from incop.engine.training import EpochStats
from incop.errors import UserError
from incop.workload.sources import Batch, BatchSource, make_probe

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run: ``rank`` in ``0..size-1``, and
    ``local_rank``, its index on this machine (which GPU it uses)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and shows progress."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """``(rank, size)``: which part of every batch this rank takes."""
        return self.rank, self.size

    def device(self, device: torch.device) -> torch.device:
        """This rank's GPU when ``device`` is CUDA (one GPU per rank), else ``device``."""
        if device.type == "cuda" and self.size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train: ``model`` itself, or ``model`` in DistributedDataParallel,
        which averages gradients over the ranks (``model``'s own state dict is unchanged)."""
        if self.size == 1:
            return model
        device_ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (a new float64 tensor, on the CPU)."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise maximum of ``values`` over the ranks (float64, on the CPU)."""
        return self._reduce(values, dist.ReduceOp.MAX)

    def _reduce(self, values: torch.Tensor, op: Any) -> torch.Tensor:
        out = values.detach().double().cpu().clone()
        if self.size > 1:
            # gloo reduces CPU tensors; NCCL only CUDA ones.
            if dist.get_backend() == "nccl":
                out = out.cuda(self.local_rank)
            dist.all_reduce(out, op=op)
        return out.cpu()

    def part(self, batches: list[Batch]) -> list[Batch]:
        """This rank's contiguous part of every batch (the batches the same on every rank)."""
        parts = [(x.tensor_split(self.size)[self.rank], y.tensor_split(self.size)[self.rank])
                 for x, y in batches]  # fmt: skip
        return [(x, y) for x, y in parts if len(y)]

    def from_main(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled and broadcast)."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_same(self, values: torch.Tensor, what: str) -> None:
        """Raise if ``values`` (a float64 fingerprint) differs between ranks."""
        if self.size == 1:
            return
        low, high = -self.max(-values), self.max(values)
        if not torch.equal(low, high):
            raise RuntimeError(
                f"{what} differ between the {self.size} ranks: the run would go on with"
                " different networks (a rank read other data to decide?)"
            )

    def combine(self, stats: EpochStats) -> EpochStats:
        """The statistics of all ranks' examples together (each rank passes its own)."""
        if self.size == 1:
            return stats
        n = stats.examples
        total = self.sum(
            torch.tensor(
                [
                    stats.loss * n,
                    (stats.accuracy or 0.0) * n,
                    (stats.custom or 0.0) * n,
                    n,
                    stats.accuracy is None,
                ],
                dtype=torch.float64,
            )
        )
        loss, correct, custom, examples, unclassified = total.tolist()
        m = max(examples, 1)
        return EpochStats(
            loss / m,
            None if unclassified else correct / m,
            int(examples),
            None if stats.custom is None else custom / m,
        )

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


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


def shared_probe(
    data: BatchSource, size: int, seed: int, batch_size: int, world: World, device: torch.device
) -> list[Batch]:
    """:func:`incop.workload.sources.make_probe` on ``device``, rank 0's on every rank: a
    user's sharded DataLoader gives each rank other examples, and what decides must be the same
    everywhere."""
    batches = make_probe(data, size, seed, batch_size)
    if world.size > 1:
        batches = world.from_main([(x.cpu(), y.cpu()) for x, y in batches])
    return [(x.to(device), y.to(device)) for x, y in batches]
