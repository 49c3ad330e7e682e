"""Pruning criteria: which alive weights to remove and how many (METHOD.md sections 2 and 3).

A pruner maps ``(weights, masks) -> new masks``; it only ever removes weights
(new mask <= old mask). Ranking is by |w| among alive weights, ties broken by
position (a stable sort), so results are reproducible; ``random`` draws from
the generator it is given. This module holds the math every pruner shares and the
:class:`Pruner` protocol; each pruner is a file of :mod:`incop.methods.pruners`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from incop.core.options import Component
from incop.core.registry import Registry

if TYPE_CHECKING:
    import torch

    from incop.core.masks import Masks


SCOPES_FIXED = ("global", "layer", "channel")
SCOPES_SAP = ("global", "layer", "neuron", "channel")

Weights = dict[str, "torch.Tensor"]


@runtime_checkable
class Pruner(Protocol):
    """What the IMP loop calls to prune: ``pruner(weights, masks, generator) -> masks``.

    ``weights``: the prunable parameters by name (detached); ``masks``: their current masks
    (bool, same shapes); ``generator``: the run's seeded generator, for pruners that draw.
    Returns the new masks, each <= the old one. The mask rule and the EPI warm-up stop also
    call it to preview the next prune, on a throwaway generator, so a pruner used with them
    must not change its own state when called. Optional methods, called when present:

    - ``bind(context: PruneContext) -> Pruner``: before the first prune, for pruners that
      score with the network or the data (:class:`incop.methods.at_init.PruneContext`);
    - ``after_backward(model, masks, state)``: during training, after every backward pass,
      the dense gradients in ``param.grad`` (not yet masked; scaled under fp16), ``state``
      the run's :class:`incop.engine.state.RunState` (its optimiser, its generator): the
      training-time hook of pruners that score by gradients (movement pruning) or move the
      masks (RigL, SET: a mask replaced in ``masks`` is enforced from that step on);
    - ``state_dict() -> dict`` / ``load_state_dict(dict)``: what it accumulates, saved with
      the run's state so that ``--resume`` takes it up (tensors, numbers, strings, lists
      and dicts only: nothing else is read back from a run folder).
    """

    def __call__(self, weights: Weights, masks: Masks, generator: torch.Generator) -> Masks: ...


class PrunerComponent(Component):
    """A built-in pruner's class attributes (the loop and the checks read these, never names)."""

    #: The scopes it prunes in.
    scopes: ClassVar[tuple[str, ...]] = SCOPES_FIXED
    #: It ranks alive weights by |w| (what flow-guided scoring and the pruning limit assume).
    by_magnitude: ClassVar[bool] = True
    #: It prunes once, straight to target_remaining, scoring the untrained network.
    at_init: ClassVar[bool] = False


#: Pruner name -> its class (a :class:`PrunerComponent`; ``from_options`` builds it).
PRUNERS: Registry[type] = Registry("pruner")


class Score(Component):
    """``magnitude``: how the magnitude pruners rank alive weights, by |w| (as they do
    alone). Another score (:mod:`incop.methods.flow_guided`) wraps the run's pruner."""

    def guide(self, pruner: Pruner) -> Pruner:
        """The run's pruner, ranking by this score."""
        return pruner


#: Score name -> its class.
SCORES: Registry[type] = Registry("score")
SCORES.register("magnitude", "rank by |w|")(Score)


# --- SAP's formulas (METHOD.md section 3) -----------------------------------------------------


def pq_index(w: torch.Tensor, p: float, q: float) -> float:
    """PQ Index ``PQI_{p,q}(w) = 1 - d^(1/q - 1/p) * ||w||_p / ||w||_q`` of all entries of ``w``.

    Equivalently ``1 - M_p(|w|) / M_q(|w|)`` with ``M_s`` the power mean; in
    [0, 1), larger = sparser. Pass only the alive weights. Defined answers for
    the degenerate cases: an empty ``w`` (d = 0) or an all-zero ``w`` has PQI 0
    (nothing to tell apart, so SAP prunes nothing); with k of d entries infinite it is
    ``1 - (k/d)^(1/p - 1/q)``, the limit as those entries grow without bound. Requires 0 < p < q.
    """
    import torch

    if not 0 < p < q:
        raise ValueError(f"pq_index needs 0 < p < q, got p={p}, q={q}")
    a = w.detach().abs().flatten().double()
    if a.numel() == 0:
        return 0.0
    infinite = torch.isinf(a)
    if infinite.any():
        # The limit as the k infinite entries grow together without bound: they dominate both
        # power means, M_s -> (k/d)^(1/s) * t, so M_p / M_q -> (k/d)^(1/p - 1/q).
        share = float(infinite.sum()) / a.numel()
        return float(1.0 - share ** (1.0 / p - 1.0 / q))
    top = a.max()
    if top == 0:
        return 0.0
    # Power means of |w| / max(|w|): scale-free, so no overflow/underflow for tiny or huge weights.
    a = a / top
    mean_p = a.pow(p).mean().pow(1.0 / p)
    mean_q = a.pow(q).mean().pow(1.0 / q)
    return float(min(max(1.0 - mean_p / mean_q, 0.0), 1.0))


def sap_prune_count(
    d: int,
    pqi: float,
    p: float,
    q: float,
    eta_r: float = 0.0,
    gamma: float = 1.0,
    beta: float = 0.9,
) -> int:
    """How many of ``d`` alive weights SAP prunes (the ``c`` of METHOD.md section 3).

    ``r = d (1 + eta_r)^(-q/(q-p)) (1 - pqi)^(qp/(q-p))`` is the lower bound on
    weights to retain; ``c = floor(d * min(gamma * (1 - r/d), beta))``, at least 0.
    """
    if d <= 0:
        return 0
    if not 0 < p < q:
        raise ValueError(f"sap_prune_count needs 0 < p < q, got p={p}, q={q}")
    retain_fraction = (1.0 + eta_r) ** (-q / (q - p)) * (1.0 - pqi) ** (q * p / (q - p))
    fraction = min(gamma * (1.0 - retain_fraction), beta)
    # A hair of tolerance so that an exact product like 0.3 * 10 is not floored to 2.
    return max(0, math.floor(d * fraction + 1e-9))


# --- ranking ----------------------------------------------------------------------------------


def _remove_smallest(
    scores: torch.Tensor, alive: torch.Tensor, keep: torch.Tensor, count: int
) -> torch.Tensor:
    """Mask with the ``count`` alive entries of smallest score removed, never one of ``keep``
    (flattened, stable ties). Fewer are removed only when fewer candidates remain."""
    import torch

    flat_alive = alive.flatten()
    idx = (flat_alive & ~keep.flatten()).nonzero().squeeze(1)
    count = min(count, idx.numel())
    if count <= 0:
        return alive.clone()
    order = torch.sort(scores.flatten()[idx], stable=True).indices[:count]
    new = flat_alive.clone()
    new[idx[order]] = False
    return new.view_as(alive)


def _largest_alive(weights: Weights, masks: Masks) -> Masks:
    """For each tensor with alive weights, its largest alive |w| (METHOD.md: keep at least one
    per tensor). It is taken out of the ranking before the cut, so a round that would empty a
    tensor spends its full count on the other weights instead of stalling."""
    import torch

    keep: Masks = {}
    for name, mask in masks.items():
        keep[name] = torch.zeros_like(mask)
        if mask.any():
            scores = weights[name].detach().abs().masked_fill(~mask, -1.0)
            keep[name].view(-1)[int(scores.flatten().argmax())] = True
    return keep


def _prune_global(
    scores: Weights, masks: Masks, keep: Masks, count_for: Callable[[torch.Tensor], int]
) -> Masks:
    import torch

    names = list(masks)
    flat_scores = torch.cat([scores[n].flatten() for n in names])
    flat_alive = torch.cat([masks[n].flatten() for n in names])
    flat_keep = torch.cat([keep[n].flatten() for n in names])
    count = count_for(flat_scores[flat_alive])
    flat_new = _remove_smallest(flat_scores, flat_alive, flat_keep, count)
    parts = torch.split(flat_new, [masks[n].numel() for n in names])
    return {n: part.view_as(masks[n]) for n, part in zip(names, parts, strict=True)}


def _prune_each(
    scores: Weights,
    masks: Masks,
    keep: Masks,
    count_for: Callable[[torch.Tensor], int],
    rows: bool,
) -> Masks:
    import torch

    new: Masks = {}
    for name, mask in masks.items():
        score = scores[name]
        if not rows:
            new[name] = _remove_smallest(score, mask, keep[name], count_for(score[mask]))
            continue
        # Neuron scope: one output unit = one row of a Linear weight, one filter of a Conv weight.
        rows_new = [
            _remove_smallest(s, m, k, count_for(s[m]))
            for s, m, k in zip(
                score.flatten(1), mask.flatten(1), keep[name].flatten(1), strict=True
            )
        ]
        new[name] = torch.stack(rows_new).view_as(mask)
    return new


def _prune_channels(scores: Weights, masks: Masks, count_for: Callable) -> Masks:
    """Channel scope (docs/channel.md): whole output units (a Conv filter, a Linear row) go,
    within each layer, ranked by the L2 norm of their alive scores, the count coming from
    that layer's vector of alive units' norms. The largest-norm unit of a layer is kept. The
    last prunable layer is the classifier, whose units are the classes: it is never pruned."""
    import torch

    new = dict(masks)
    for name in list(masks)[:-1]:
        mask = masks[name].flatten(1)
        alive = mask.any(dim=1)
        if not alive.any():
            continue
        norms = (scores[name].flatten(1) * mask).norm(dim=1)
        keep = torch.zeros_like(alive)
        keep[int(norms.masked_fill(~alive, -1.0).argmax())] = True
        units = _remove_smallest(norms, alive, keep, count_for(norms[alive]))
        new[name] = masks[name] & units.view(-1, *[1] * (masks[name].dim() - 1))
    return new


def keep_count(total: int, fraction: float) -> int:
    """Weights left when ``fraction`` of ``total`` remain (rounded, at least 1)."""
    return max(1, round(fraction * total))


def prune_scores(scores: Weights, masks: Masks, keep: int) -> Masks:
    """Global scope: remove the alive weights of smallest score until ``keep`` are left,
    keeping each tensor's largest-score alive weight (METHOD.md: never empty a tensor)."""

    def count(alive: torch.Tensor) -> int:
        return max(0, alive.numel() - keep)

    return _prune(scores, scores, masks, "global", count)


def hold_counts(weights: Weights, before: Masks, proposed: Masks, counts: dict[str, int]) -> Masks:
    """Frozen prune counts (METHOD.md section 10.1): each tensor keeps exactly ``counts[name]``
    of the weights alive in ``before``, those the pruner kept in ``proposed`` first, then by
    |w| (ties by position). The pruner still decides which weights go; only how many is held
    to the reference run's. ``counts``: name -> alive weights after this level's prune."""
    import torch

    held = {}
    for name, w in weights.items():
        alive = before[name].reshape(-1)
        keep = counts[name]
        if not 0 < keep <= int(alive.sum()):
            raise ValueError(f"{name}: cannot keep {keep} of {int(alive.sum())} alive weights")
        magnitude = w.detach().abs().reshape(-1).double()
        # Above every magnitude: what the pruner kept ranks before what it removed.
        rank = magnitude + proposed[name].reshape(-1).double() * (float(magnitude.max()) + 1)
        rank = torch.where(alive, rank, torch.tensor(-1.0, dtype=rank.dtype))
        order = torch.argsort(rank, descending=True, stable=True)
        mask = torch.zeros_like(alive)
        mask[order[:keep]] = True
        held[name] = mask.reshape(before[name].shape)
    return held


def _prune(
    scores: Weights, weights: Weights, masks: Masks, scope: str, count_for: Callable
) -> Masks:
    if scope == "channel":
        return _prune_channels(scores, masks, count_for)
    keep = _largest_alive(weights, masks)
    if scope == "global":
        return _prune_global(scores, masks, keep, count_for)
    return _prune_each(scores, masks, keep, count_for, rows=scope == "neuron")


def preview(pruner: Pruner, weights: Weights, masks: Masks) -> Masks:
    """The masks ``pruner`` would produce now, drawn on a throwaway generator: the run's own
    random state is untouched (for rules that watch the next prune)."""
    import torch

    return pruner(weights, masks, torch.Generator().manual_seed(0))
