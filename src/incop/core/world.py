"""This process's view of a data-parallel run (see :mod:`incop.engine.distributed`): its rank,
how statistics are combined over the ranks, and what must be taken from rank 0. A single
process is a world of one, where all of this costs nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from incop.core import inputs
from incop.core.batches import Batch, BatchSource, make_probe

if TYPE_CHECKING:
    import torch
    from torch import nn

    from incop.core.training import EpochStats


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
        import torch

        if device.type == "cuda" and self.size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train: ``model`` itself, or ``model`` in DistributedDataParallel,
        which averages gradients over the ranks (``model``'s own state dict is unchanged)."""
        from torch import nn

        if self.size == 1:
            return model
        device_ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (a new float64 tensor, on the CPU)."""
        import torch.distributed as dist

        return self._reduce(values, dist.ReduceOp.SUM)

    def max(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise maximum of ``values`` over the ranks (float64, on the CPU)."""
        import torch.distributed as dist

        return self._reduce(values, dist.ReduceOp.MAX)

    def _reduce(self, values: torch.Tensor, op: Any) -> torch.Tensor:
        import torch.distributed as dist

        out = values.detach().double().cpu().clone()
        if self.size > 1:
            # gloo reduces CPU tensors; NCCL only CUDA ones.
            if dist.get_backend() == "nccl":
                out = out.cuda(self.local_rank)
            dist.all_reduce(out, op=op)
        return out.cpu()

    def part(self, batches: list[Batch]) -> list[Batch]:
        """This rank's contiguous part of every batch (the batches the same on every rank)."""
        parts = [(inputs.part(x, self.rank, self.size), y.tensor_split(self.size)[self.rank])
                 for x, y in batches]  # fmt: skip
        return [(x, y) for x, y in parts if len(y)]

    def from_main(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled and broadcast)."""
        import torch.distributed as dist

        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_same(self, values: torch.Tensor, what: str) -> None:
        """Raise if ``values`` (a float64 fingerprint) differs between ranks."""
        import torch

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
        import torch

        from incop.core.training import EpochStats

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
        import torch.distributed as dist

        if self.size > 1:
            dist.barrier()


def shared_probe(
    data: BatchSource, size: int, seed: int, batch_size: int, world: World, device: torch.device
) -> list[Batch]:
    """:func:`incop.core.batches.make_probe` on ``device``, rank 0's on every rank: a
    user's sharded DataLoader gives each rank other examples, and what decides must be the same
    everywhere."""
    batches = make_probe(data, size, seed, batch_size)
    if world.size > 1:
        batches = world.from_main([(x.cpu(), y.cpu()) for x, y in batches])
    return [(inputs.to_device(x, device), y.to(device)) for x, y in batches]
