"""``rigl`` and ``set``: dynamic sparse training (METHOD.md section 8).

The network is sparse from the first prune, at ``target_remaining`` exactly, with per-layer
densities from ``sparsity_init``; then every ``update_every`` training steps, until
``update_end`` of the level's training, each layer drops the smallest-magnitude fraction
``drop_fraction * (1 + cos(pi t / T_end)) / 2`` of its alive weights and grows as many among
its dead ones: by the largest dense-gradient magnitude (RigL, Evci et al. 2020) or at random
(SET, Mocanu et al. 2018). A layer's alive count never changes; grown weights start at 0
with zero optimiser state.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from incop.core.lazy import no_grad
from incop.core.options import MAX_COUNT, NoOptions, in_range, not_allowed, option
from incop.methods.at_init import PruneContext
from incop.methods.pruning import PRUNERS, PrunerComponent, Weights, keep_count

if TYPE_CHECKING:
    import torch

    from incop.core.masks import Masks


SPARSITY_INITS = ("erk", "uniform")


def erk_densities(
    shapes: dict[str, tuple[int, ...]], target: float, *, dense: tuple[str, ...] = ()
) -> dict[str, float]:
    """Per-tensor densities whose alive count is ``target`` of all weights: Erdős–Rényi-kernel
    (as the RigL code): density proportional to sum(shape) / prod(shape), scaled to the
    target; a tensor that would exceed 1 is made dense and the rest scaled again, until none
    does. The tensors of ``dense`` are kept dense from the start."""
    total = sum(math.prod(shape) for shape in shapes.values())
    dense_set = set(dense)
    while True:
        budget = target * total - sum(math.prod(shapes[n]) for n in dense_set)
        raw = {n: sum(s) / math.prod(s) for n, s in shapes.items() if n not in dense_set}
        weighted = sum(raw[n] * math.prod(shapes[n]) for n in raw)
        scale = budget / weighted if weighted else 0.0
        over = [n for n in raw if scale * raw[n] > 1]
        if not over:
            return {n: 1.0 if n in dense_set else scale * raw[n] for n in shapes}
        dense_set.update(over)


def layer_counts(sizes: dict[str, int], densities: dict[str, float], keep: int) -> dict[str, int]:
    """Alive weights per tensor, from its density, summing to ``keep`` exactly: each tensor
    gets the floor of its share, and the weights left over go one each to the tensors with
    the largest remainders (ties by order); at least 1 and at most its size each (so the sum
    is ``keep`` unless there are fewer weights to keep than tensors)."""
    shares = {n: min(densities[n], 1.0) * sizes[n] for n in sizes}
    counts = {n: max(1, min(sizes[n], math.floor(shares[n]))) for n in sizes}
    order = sorted(sizes, key=lambda n: shares[n] - math.floor(shares[n]), reverse=True)
    left = keep - sum(counts.values())
    while left != 0:
        # Too few: one more each to the largest remainders; too many (the floor of 1 per
        # tensor lifted some): one fewer each from the smallest.
        step = 1 if left > 0 else -1
        room = [n for n in (order if step > 0 else order[::-1])
                if 1 <= counts[n] + step <= sizes[n]]  # fmt: skip
        if not room:
            break
        for name in room[: abs(left)]:
            counts[name] += step
        left = keep - sum(counts.values())
    return counts


def drop_fraction_at(step: int, end: int, drop_fraction: float) -> float:
    """The cosine schedule: ``drop_fraction * (1 + cos(pi * step / end)) / 2`` (0 from ``end``)."""
    if step >= end:
        return 0.0
    return drop_fraction * (1 + math.cos(math.pi * step / end)) / 2


@dataclass(frozen=True)
class DynamicOptions(NoOptions):
    sparsity_init: str = option(
        "erk",
        "dynamic sparse training: per-layer densities, erk (Erdős–Rényi-kernel, as RigL) or"
        " uniform (the same in every layer)",
        choices=SPARSITY_INITS,
    )
    dense_first: bool = option(
        False, "dynamic sparse training: keep the first prunable layer dense (RigL on ImageNet)"
    )
    update_every: int = option(
        100, "dynamic sparse training: training steps between mask updates (delta T)"
    )
    update_end: float = option(
        0.75, "dynamic sparse training: fraction of the level's training steps with updates"
    )
    drop_fraction: float = option(
        0.3,
        "dynamic sparse training: fraction of each layer's alive weights moved at the first"
        " update, decaying by a cosine to 0 at update_end",
    )

    def check(self) -> list[str]:
        problems = in_range("update_every", self.update_every, 1, MAX_COUNT)
        if not 0 < self.update_end <= 1:
            problems.append(not_allowed("update_end", self.update_end, "must be in (0, 1]"))
        if not 0 < self.drop_fraction < 1:
            problems.append(not_allowed("drop_fraction", self.drop_fraction, "must be in (0, 1)"))
        return problems


@dataclass
class DynamicSparse(PrunerComponent):
    """The part RigL and SET share: the initial mask, the schedule and the drop; subclasses
    choose what grows (:meth:`grow_scores`)."""

    Options = DynamicOptions
    by_magnitude = False
    at_init = True

    target: float = 0.1
    sparsity_init: str = "erk"
    dense_first: bool = False
    update_every: int = 100
    update_end: float = 0.75
    drop_fraction: float = 0.3
    scope: str = "global"
    epochs: int = 1
    #: Training steps since the sparse mask was made, and mask updates made so far.
    step: int = 0
    updates: int = 0
    #: Steps of one training epoch, learnt from the data at :meth:`bind`.
    steps_per_epoch: int = 0
    started: bool = False
    #: The global batch: the examples of one update step.
    batch_size: int = 64
    #: Examples whose backward pass an update made dense (RigL): counted as dense in the
    #: run's FLOPs.
    dense_backward_examples: int = 0
    #: Whether an update needs the dense gradient (RigL) or not (SET).
    dense_gradient: ClassVar[bool] = False

    @classmethod
    def from_options(cls, options: DynamicOptions, config: Any) -> DynamicSparse:
        o = options
        return cls(config.target_remaining, o.sparsity_init, o.dense_first, o.update_every,
                   o.update_end, o.drop_fraction, epochs=config.max_epochs,
                   batch_size=config.batch_size)  # fmt: skip

    def bind(self, context: PruneContext) -> DynamicSparse:
        """Learn the steps of one epoch (the batches of the training data)."""
        data = context.train_data
        self.steps_per_epoch = len(data) if hasattr(data, "__len__") else sum(1 for _ in data)
        if self.update_every >= self.end:
            warnings.warn(
                f"update_every {self.update_every} is not below the {self.end} training steps"
                f" with updates ({self.update_end} of {self.epochs} epochs of"
                f" {self.steps_per_epoch} steps): the mask never moves, this is static sparse"
                " training; lower update_every or train longer",
                RuntimeWarning,
                stacklevel=2,
            )
        return self

    @property
    def end(self) -> int:
        """T_end: the last step with updates, ``update_end`` of the level's training steps."""
        return math.floor(self.update_end * self.epochs * self.steps_per_epoch)

    def __call__(self, weights: Weights, masks: Masks, generator: torch.Generator) -> Masks:
        """The sparse mask the training starts from: at each tensor's density, the alive
        weights drawn at random (with the run's generator)."""
        import torch

        shapes = {n: tuple(m.shape) for n, m in masks.items()}
        first = (next(iter(masks)),) if self.dense_first else ()
        if self.sparsity_init == "erk":
            densities = erk_densities(shapes, self.target, dense=first)
        else:
            rest = [n for n in shapes if n not in first]
            left = self.target * sum(m.numel() for m in masks.values())
            left -= sum(masks[n].numel() for n in first)
            uniform = left / sum(masks[n].numel() for n in rest)
            densities = {n: 1.0 if n in first else uniform for n in shapes}
        sizes = {n: m.numel() for n, m in masks.items()}
        counts = layer_counts(sizes, densities, keep_count(sum(sizes.values()), self.target))
        new = {}
        for name, mask in masks.items():
            order = torch.randperm(mask.numel(), generator=generator)[: counts[name]]
            flat = torch.zeros(mask.numel(), dtype=torch.bool)
            flat[order] = True
            new[name] = flat.view(mask.shape).to(mask.device)
        self.started = True
        return new

    def grow_scores(self, grad: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    @no_grad
    def after_backward(self, model: torch.nn.Module, masks: Masks, state: Any) -> None:
        """Every ``update_every`` steps before T_end: drop and grow in every tensor."""
        import torch

        from incop.core.masks import MaskEnforcer

        if not self.started:
            return
        self.step += 1
        if self.step % self.update_every or self.step >= self.end:
            return
        fraction = drop_fraction_at(self.step, self.end, self.drop_fraction)
        for name in list(masks):
            weight = model.get_parameter(name)
            grad = weight.grad if weight.grad is not None else torch.zeros_like(weight)
            masks[name] = self.update(weight, grad, masks[name], fraction, state.generator)
        # Dropped weights to 0 with their optimiser state (grown ones are 0 already).
        params = {name: model.get_parameter(name) for name in masks}
        MaskEnforcer(params, masks).after_step(state.optimizer)
        self.updates += 1
        if self.dense_gradient:
            self.dense_backward_examples += self.batch_size

    def update(
        self,
        weight: torch.Tensor,
        grad: torch.Tensor,
        mask: torch.Tensor,
        fraction: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """One tensor's new mask: ``round(fraction * alive)`` alive weights of smallest |w|
        dropped, as many dead ones (after the drop) of largest grow score grown; ties by
        position."""
        import torch

        flat = mask.flatten()
        alive = flat.nonzero().squeeze(1)
        count = round(fraction * alive.numel())
        if count == 0:
            return mask
        magnitude = weight.detach().flatten()[alive].abs()
        dropped = alive[torch.sort(magnitude, stable=True).indices[:count]]
        after = flat.clone()
        after[dropped] = False
        dead = (~after).nonzero().squeeze(1)
        scores = self.grow_scores(grad.flatten()[dead], generator)
        grown = dead[torch.sort(-scores, stable=True).indices[:count]]
        after[grown] = True
        return after.view_as(mask)

    def state_dict(self) -> dict[str, Any]:
        """The update counter (``step``), the updates made, whether the mask was made, and
        the examples counted with a dense backward pass."""
        return {"step": self.step, "updates": self.updates, "started": self.started,
                "dense_backward_examples": self.dense_backward_examples}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.updates, self.started = state["step"], state["updates"], state["started"]
        self.dense_backward_examples = state["dense_backward_examples"]


@dataclass
class RigLPruner(DynamicSparse):
    """RigL (Evci et al. 2020): grows the dead weights of largest dense-gradient magnitude."""

    dense_gradient = True

    def grow_scores(self, grad: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return grad.abs()


@dataclass
class SETPruner(DynamicSparse):
    """SET (Mocanu et al. 2018): grows dead weights drawn at random (the run's generator)."""

    def grow_scores(self, grad: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        import torch

        return torch.rand(grad.shape, generator=generator).to(grad.device)


PRUNERS.register("rigl", "dynamic sparse training, grown by the dense gradient (Evci et al. 2020)")(
    RigLPruner
)
PRUNERS.register("set", "dynamic sparse training, grown at random (Mocanu et al. 2018)")(SETPruner)
