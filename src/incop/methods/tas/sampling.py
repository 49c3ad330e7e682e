"""TAS's distributions and its cost loss (TAS.md A2-A4): the width and depth candidates,
the Gumbel pair and its weights, channel-wise interpolation, the temperature schedule, the
soft prefix mask, expected widths and keep probabilities."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: TAS's width ratios (``SoftSelect.get_width_choices``).
RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Candidates sampled per group and forward pass (TAS asserts 2).
PAIR = 2
#: TAS's Gumbel temperature schedule: cosine from 5 to 0.1 over the search's epochs.
TAU = (5.0, 0.1)


def width_choices(n: int) -> tuple[int, ...]:
    """The widths a group of ``n`` channels may take: ``int(n r)`` for every ratio of
    :data:`RATIOS` (at least 1), without repeats, ascending."""
    return tuple(sorted({max(1, int(n * r)) for r in RATIOS}))


def depth_choices(n: int) -> tuple[int, ...]:
    """The depths a stage of ``n`` blocks may take (``get_depth_choices``): every depth up to
    3 blocks, else 1, 3, 5, ... and ``n``."""
    if n <= 3:
        return tuple(range(1, n + 1))
    found = list(range(1, n + 1, 2))
    return tuple(found if found[-1] == n else [*found, n])


def cwi(x: torch.Tensor, width: int) -> torch.Tensor:
    """Channel-wise interpolation (TAS's ``ChannelWiseInterV1``): ``x`` (B, C, ...) to
    ``width`` channels, channel j the mean of channels floor(jC/M) .. ceil((j+1)C/M) - 1,
    summed in order as adaptive average pooling sums them."""
    c = x.shape[1]
    j = torch.arange(width)
    starts = (j * c) // width
    lengths = -((-(j + 1) * c) // width) - starts
    out = x[:, starts]
    shape = (1, width) + (1,) * (x.dim() - 2)
    for k in range(1, int(lengths.max())):
        more = x[:, (starts + k).clamp_max(c - 1)]
        out = out + torch.where((k < lengths).view(shape), more, torch.zeros_like(more))
    return out / lengths.view(shape).to(x.dtype)


def gumbel_pair(
    alpha: torch.Tensor,
    tau: float,
    *,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
    pair: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TAS's ``select2withP``: ``(I, w, p_hat)`` for logits ``alpha`` (m,).

    ``p_hat = softmax((log_softmax(alpha) + o) / tau)`` with ``o`` standard Gumbel noise
    (``noise`` to inject it; none when ``tau <= 0``, where the logits are alpha); ``I``: two
    indices drawn without replacement with probability proportional to ``p_hat + 1e-7`` (no
    gradient; ``pair`` to fix them); ``w``: the logits' softmax over ``I`` (gradient to
    alpha). A single candidate is drawn alone, with weight 1."""
    if tau <= 0:
        logits = alpha
    else:
        if noise is None:
            noise = gumbel_noise(alpha, generator)
        logits = (F.log_softmax(alpha, dim=0) + noise) / tau
    p_hat = F.softmax(logits, dim=0)
    if pair is None:
        k = min(PAIR, alpha.numel())
        pair = torch.multinomial(p_hat.detach() + 1e-7, k, replacement=False, generator=generator)
    return pair, F.softmax(logits[pair], dim=0), p_hat


def gumbel_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel noise ``-log E``, ``E ~ Exp(1)``, shaped as ``like``; drawn again
    while any is infinite (an exponential draw of 0), as TAS's code resamples."""
    while True:
        noise = -torch.empty_like(like).exponential_(generator=generator).log()
        if torch.isfinite(noise).all():
            return noise


def tau_at(epoch: int, epochs: int, tau: tuple[float, float] = TAU) -> float:
    """The temperature of search epoch ``epoch`` (0-based) of ``epochs``: cosine from
    ``tau[0]`` to ``tau[1]`` (TAS's ``set_tau``)."""
    high, low = tau
    return low + (high - low) * (1 + math.cos(math.pi * epoch / epochs)) / 2


def prefix_mask(widths: torch.Tensor, weights: torch.Tensor, size: int) -> torch.Tensor:
    """``m[c] = sum_i weights_i 1[c < widths_i]`` for c < ``size``: (size,)."""
    below = torch.arange(size, device=weights.device)[None, :] < widths[:, None]
    return (weights[:, None] * below.to(weights.dtype)).sum(0)


def expected_width(alpha: torch.Tensor, choices: torch.Tensor) -> torch.Tensor:
    """``E = sum_j softmax(alpha)_j C_j``: the noise-free expected width (a 0-dim tensor)."""
    return F.softmax(alpha, dim=0) @ choices.to(alpha.dtype)


def keep_probabilities(beta: torch.Tensor, choices: tuple[int, ...], blocks: int) -> torch.Tensor:
    """``kappa_i = P(D >= i) = sum_{d >= i} softmax(beta)_d`` for blocks i = 1..``blocks``."""
    p = F.softmax(beta, dim=0)
    depth = torch.tensor(choices, device=beta.device)
    i = torch.arange(1, blocks + 1, device=beta.device)
    return ((depth[None, :] >= i[:, None]).to(p.dtype) * p[None, :]).sum(1)


def cost_loss(
    expected: torch.Tensor, argmax: float, target: float, tolerance: float, dense: float
) -> torch.Tensor:
    """TAS's FLOP loss (the code's band): ``+log E_F`` when the argmax network's cost is above
    ``target`` (R), ``-log E_F`` below ``R - tolerance * dense``, else 0."""
    if argmax > target:
        return expected.log()
    if argmax < target - tolerance * dense:
        return -expected.log()
    return expected * 0
