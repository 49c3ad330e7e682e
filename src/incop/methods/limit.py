"""The pruning limit (METHOD.md section 9; Zhang, Zhang, Sun, Liu, NeurIPS 2024): how large a
fraction of a trained network's weights can be removed without loss, predicted before pruning
from the magnitude of the weights pruning removes and the Hessian spectrum.

With H's eigenvalues lambda_i, the loss sublevel set ``L(w) <= L(w*) + eps`` has semi-axes
``r_i = sqrt(2 eps / |lambda_i|)``; removing the fraction pi of the prunable weights by magnitude
moves w* by ``R(pi) = sqrt(sum of the ceil(pi N_w) smallest w*^2)``; the normalised squared
Gaussian width of the set seen from there is

    G(R) = (1/D) sum_i 2 eps / (2 eps + |lambda_i| R^2)

and the predicted largest removable fraction pi-hat is where ``G(R(pi))`` crosses pi. G is
estimated by stochastic Lanczos quadrature (SLQ) over Hessian-vector products. Names: pi is
*removed*, rho = 1 - pi *remaining*; the bare words "pruning ratio" are never used.

The official code's numeric flaws are not copied (LIMIT.md B3): R is continuous, not rounded to
an integer, and G is the Gauss quadrature on the Ritz nodes, not a density on a 100,000-point
grid. Both flaws are available, for reproduction only, as ``density="official"``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from incop.core import inputs as model_inputs
from incop.core.inputs import OutputFn
from incop.errors import UserError

if TYPE_CHECKING:
    import torch
    from torch import nn


Batch = tuple["torch.Tensor", "torch.Tensor"]
LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
#: Lanczos stops once beta falls below this times the largest |alpha| (an invariant subspace).
BREAKDOWN = 1e-10
#: A Hessian row whose mean per-batch L1 norm is below this counts as zero (official value).
ZERO_ROW = 1e-7
DENSITIES = ("quadrature", "official")


def default_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The Hessian's parameters by default: every Conv/Linear weight and bias (the official set,
    BatchNorm excluded)."""
    from torch import nn

    found = {}
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
            for name, p in module.named_parameters(recurse=False):
                if p.requires_grad:
                    found[f"{prefix}.{name}" if prefix else name] = p
    return found


def batch_loss_std(
    model: nn.Module, batches: Sequence[Batch], loss_fn: LossFn, device: torch.device
) -> float:
    """eps (LIMIT.md B3 item 3): the population standard deviation (ddof 0) of the per-batch
    mean losses, in eval mode."""
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        losses = [float(loss_fn(_forward(model, x, device), y.to(device))) for x, y in batches]
    model.train(was_training)
    if not losses:
        raise UserError("pruning_limit: no batches to measure eps on")
    mean = sum(losses) / len(losses)
    return math.sqrt(sum((v - mean) ** 2 for v in losses) / len(losses))


def _forward(model: nn.Module, inputs: Any, device: torch.device) -> Any:
    return model_inputs.call(model, model_inputs.to_device(inputs, device))


class HessianOperator:
    """``v -> H v`` for the mean loss over ``batches`` with respect to ``params`` (one flat
    float64 vector in, one out). Each batch's Hessian-vector product (double backward) is
    weighted by its size, so batching does not change the result. Counts its calls."""

    def __init__(
        self,
        model: nn.Module,
        params: dict[str, nn.Parameter],
        batches: Sequence[Batch],
        loss_fn: LossFn,
        device: torch.device,
    ) -> None:
        self.model, self.batches, self.loss_fn, self.device = model, batches, loss_fn, device
        self.params = list(params.values())
        self.dim = sum(p.numel() for p in self.params)
        self.examples = sum(len(y) for _, y in batches)
        self.calls = 0

    def _split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        parts, start = [], 0
        for p in self.params:
            parts.append(flat[start : start + p.numel()].view_as(p).to(p.dtype))
            start += p.numel()
        return parts

    def row_l1(self, index: int) -> float:
        """(1/N) sum_b n_b |H_b[index, :]|_1: the size of one Hessian row, batch by batch."""
        import torch

        unit = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        unit[index] = 1.0
        return sum(float(part.abs().sum()) for part in self._products(unit)) / self.examples

    def __call__(self, flat: torch.Tensor) -> torch.Tensor:
        import torch

        total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        for part in self._products(flat):
            total += part
        return total / self.examples

    def _products(self, flat: torch.Tensor) -> Iterable[torch.Tensor]:
        """Per batch: n_b H_b v, flat, float64."""
        import torch

        self.calls += 1
        vector = self._split(flat)
        was_training = self.model.training
        self.model.eval()
        try:
            for x, y in self.batches:
                loss = self.loss_fn(_forward(self.model, x, self.device), y.to(self.device))
                grads = torch.autograd.grad(loss, self.params, create_graph=True)
                products = torch.autograd.grad(grads, self.params, grad_outputs=vector)
                yield len(y) * torch.cat([g.reshape(-1).double() for g in products])
        finally:
            self.model.train(was_training)


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    iters: int,
    generator: torch.Generator,
    *,
    device: torch.device | str = "cpu",
    on_step: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tridiagonal ``(alphas, betas)`` of at most ``iters`` Lanczos steps from a Rademacher
    start: float64 basis, full re-orthogonalisation done twice, early stop on breakdown
    (beta < 1e-10 max|alpha|: an invariant subspace has been found)."""
    import torch

    start = torch.randint(0, 2, (dim,), generator=generator).double() * 2 - 1
    v = (start / start.norm()).to(device)
    basis = torch.zeros(min(iters, dim), dim, dtype=torch.float64, device=device)
    basis[0] = v
    w = matvec(v)
    alphas = [float(w @ v)]
    w = w - alphas[0] * v
    betas: list[float] = []
    if on_step:
        on_step(1)
    for i in range(1, min(iters, dim)):
        beta = float(w.norm())
        if beta < BREAKDOWN * max(abs(a) for a in alphas) or beta == 0.0:
            break
        for _ in range(2):
            w = w - basis[:i].T @ (basis[:i] @ w)
        v = w / w.norm()
        basis[i] = v
        w = matvec(v)
        alphas.append(float(w @ v))
        w = w - alphas[-1] * v - beta * basis[i - 1]
        betas.append(beta)
        if on_step:
            on_step(i + 1)
    return torch.tensor(alphas, dtype=torch.float64), torch.tensor(betas, dtype=torch.float64)


def ritz(alphas: torch.Tensor, betas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ritz values theta_k (eigenvalues of the tridiagonal matrix) and their quadrature weights
    tau_k (the squared first components of its eigenvectors; they sum to 1)."""
    import torch

    tridiagonal = torch.diag(alphas)
    if len(betas):
        tridiagonal += torch.diag(betas, 1) + torch.diag(betas, -1)
    values, vectors = torch.linalg.eigh(tridiagonal)
    return values, vectors[0] ** 2


def width(
    radius: torch.Tensor | float,
    eps: float,
    ritz_values: torch.Tensor,
    ritz_weights: torch.Tensor,
    zero_row_fraction: float = 0.0,
) -> torch.Tensor:
    """G(R) = z + (1 - z) sum_k tau_k 2 eps / (2 eps + |theta_k| R^2), at every ``radius``."""
    import torch

    r = torch.as_tensor(radius, dtype=torch.float64).reshape(-1, 1)
    terms = ritz_weights * (2 * eps) / (2 * eps + ritz_values.abs() * r**2)
    return with_zero_rows(terms.sum(dim=1), zero_row_fraction)


def with_zero_rows(g: torch.Tensor, z: float) -> torch.Tensor:
    """The zero-row atom (LIMIT.md B3 item 6): a fraction z of the spectrum at 0, where the
    width term is 1, mixed with ``g``."""
    return z + (1 - z) * g


def official_width(
    radius: torch.Tensor | float,
    eps: float,
    ritz_values: torch.Tensor,
    ritz_weights: torch.Tensor,
    zero_row_fraction: float = 0.0,
    points: int = 100_000,
) -> torch.Tensor:
    """G as the official code evaluates it, for reproduction only (LIMIT.md B3 items 5-7): a
    Gaussian density of variance 1e-10 max(1, range) around each Ritz value on a grid of
    ``points`` over [min - 0.01, max + 0.01], zero-density points dropped, and R rounded to an
    integer."""
    import torch

    low, high = float(ritz_values.min()) - 0.01, float(ritz_values.max()) + 0.01
    grid = torch.linspace(low, high, points, dtype=torch.float64)
    variance = 1e-10 * max(1.0, high - low)
    density = torch.zeros_like(grid)
    for value, weight in zip(ritz_values.tolist(), ritz_weights.tolist(), strict=True):
        density += weight * torch.exp(-((grid - value) ** 2) / (2 * variance))
    density /= density.sum() * (grid[1] - grid[0])
    keep = density > 0
    density, grid = density[keep], grid[keep].abs()
    r = torch.as_tensor(radius, dtype=torch.float64).reshape(-1, 1).round()
    axes = 2 * eps / grid
    g = (density * axes / (r**2 + axes)).sum(dim=1) / density.sum()
    return with_zero_rows(g, zero_row_fraction)


def magnitude_curve(
    weights: Iterable[torch.Tensor], grid: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """pi_i = i / grid (i = 0..grid-1) and R_i = sqrt(sum of the n_i smallest w^2), with
    n_i = max(1, ceil(pi_i N_w)): exactly n_i weights (ties do not change R)."""
    import torch

    squares = torch.cat([w.detach().reshape(-1).double().cpu() ** 2 for w in weights])
    cumulative = torch.cumsum(torch.sort(squares).values, 0)
    fractions = torch.arange(grid, dtype=torch.float64) / grid
    counts = torch.clamp(torch.ceil(fractions * len(squares)).long(), min=1)
    return fractions, cumulative[counts - 1].sqrt()


def crossing(fractions: torch.Tensor, g: torch.Tensor) -> int:
    """The first index where |G(R_i) - pi_i| is least."""
    import torch

    return int(torch.argmin((g - fractions).abs()))


def zero_row_fraction(
    operator: HessianOperator, params: dict[str, nn.Parameter], quantiles: int = 100
) -> float:
    """z (LIMIT.md B3 item 6): of the weights at magnitude quantiles q = i/100 (the
    ceil(q N_w)-th smallest |w|, ties by position), the fraction whose Hessian row is zero."""
    import torch

    offsets, flat = [], []
    start = 0
    for p in params.values():
        if p.dim() > 1:
            offsets.append(torch.arange(start, start + p.numel()))
            flat.append(p.detach().reshape(-1).abs().cpu())
        start += p.numel()
    index, magnitude = torch.cat(offsets), torch.cat(flat)
    order = torch.sort(magnitude, stable=True).indices
    zero = 0
    for i in range(quantiles):
        rank = max(1, math.ceil(i / quantiles * len(order)))
        if operator.row_l1(int(index[order[rank - 1]])) < ZERO_ROW:
            zero += 1
    return zero / quantiles


@dataclass
class Limit:
    """The predicted pruning limit of a trained network.

    ``predicted_removed_fraction``: pi-hat, the largest fraction of the prunable weights
    predicted removable without loss; ``predicted_remaining_fraction``: 1 - pi-hat. ``eps``:
    the loss tolerance; ``ritz_values`` / ``ritz_weights``: the SLQ nodes and weights (pooled
    over probes, weights summing to 1); ``zero_row_fraction``: z (0 unless asked);
    ``curve``: rows ``(pi, R, G)``; ``dim``: D, the Hessian's size; ``prunable``: N_w;
    ``hvp_count``: Hessian-vector products over the batches; ``seconds``: wall time.
    """

    predicted_removed_fraction: float
    predicted_remaining_fraction: float
    eps: float
    ritz_values: list[float]
    ritz_weights: list[float]
    zero_row_fraction: float
    curve: list[tuple[float, float, float]]
    dim: int
    prunable: int
    density: str
    hvp_count: int
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def trace(self) -> float:
        """The SLQ estimate of tr(H): D sum_k theta_k tau_k."""
        return self.dim * sum(
            t * w for t, w in zip(self.ritz_values, self.ritz_weights, strict=True)
        )

    def to_dict(self) -> dict:
        return {
            "predicted_removed_fraction": self.predicted_removed_fraction,
            "predicted_remaining_fraction": self.predicted_remaining_fraction,
            "eps": self.eps,
            "dim": self.dim,
            "prunable": self.prunable,
            "trace": self.trace,
            "zero_row_fraction": self.zero_row_fraction,
            "density": self.density,
            "ritz_values": self.ritz_values,
            "ritz_weights": self.ritz_weights,
            "hvp_count": self.hvp_count,
            "seconds": self.seconds,
            **self.extra,
        }


def pruning_limit(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    loss_fn: LossFn | None = None,
    params: dict[str, nn.Parameter] | None = None,
    eps: float | None = None,
    lanczos_iters: int = 128,
    probes: int = 1,
    zero_rows: int | None = None,
    density: str = "quadrature",
    grid: int = 1000,
    seed: int = 0,
    device: torch.device | str | None = None,
    on_hvp: Callable[[int, int], None] | None = None,
    output_fn: OutputFn = model_inputs.logits,
) -> Limit:
    """Predict how far ``model`` (trained: the theory assumes a minimum) can be pruned.

    ``batches``: a list of ``(inputs, targets)`` of the training data (eps and every
    Hessian-vector product run over all of them); ``loss_fn`` (default cross-entropy) the mean
    loss of a batch; ``params``: the Hessian's parameters (default: every Conv/Linear weight
    and bias); R uses those of them with more than one dimension. ``eps``: the loss tolerance
    (default: the population std of the batch losses); ``lanczos_iters`` steps per probe,
    ``probes`` Rademacher starts pooled; ``zero_rows``: how many magnitude quantiles to test
    for zero Hessian rows (None: off); ``density``: ``quadrature`` or ``official``; ``grid``:
    the pi grid's size. ``on_hvp(done, planned)`` is called after each product.
    ``output_fn``: the tensor of the model's output the loss reads
    (:func:`incop.core.inputs.logits`).
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    started = time.perf_counter()
    task_loss = loss_fn or F.cross_entropy

    def loss_fn(output: Any, targets: torch.Tensor) -> torch.Tensor:
        return task_loss(output_fn(output), targets)

    if not isinstance(model, nn.Module):
        raise UserError(f"model: got a {type(model).__name__}, not a torch.nn.Module")
    problems = []
    if lanczos_iters < 2:
        problems.append(f"lanczos_iters: {lanczos_iters} is not allowed; must be >= 2")
    if probes < 1:
        problems.append(f"probes: {probes} is not allowed; must be >= 1")
    if grid < 2:
        problems.append(f"grid: {grid} is not allowed; must be >= 2")
    if eps is not None and not (math.isfinite(eps) and eps > 0):
        problems.append(f"eps: {eps} is not allowed; must be a finite number > 0")
    if density not in DENSITIES:
        problems.append(f"density: unknown value {density!r}; allowed: {', '.join(DENSITIES)}")
    if zero_rows is not None and zero_rows < 1:
        problems.append(f"zero_rows: {zero_rows} is not allowed; must be >= 1 (or None: off)")
    params = dict(params) if params is not None else default_parameters(model)
    weights = [p for p in params.values() if p.dim() > 1]
    if not weights:
        problems.append("pruning_limit: the model has no prunable weights (no Conv/Linear weight)")
    if not batches:
        problems.append("pruning_limit: no batches given")
    if problems:
        raise UserError("\n".join(problems))
    device = torch.device(device) if device is not None else weights[0].device
    if eps is None:
        eps = batch_loss_std(model, batches, loss_fn, device)
        if not eps > 0:
            raise UserError(
                "eps: every batch has the same loss, so the automatic eps is 0; pass eps="
            )
    operator = HessianOperator(model, params, batches, loss_fn, device)
    planned = probes * min(lanczos_iters, operator.dim) + (zero_rows or 0)
    generator = torch.Generator().manual_seed(seed)

    def step(_: int) -> None:
        if on_hvp:
            on_hvp(operator.calls, planned)

    values, weights_ = [], []
    for _ in range(probes):
        alphas, betas = lanczos(operator, operator.dim, lanczos_iters, generator, device=device,
                                on_step=step)  # fmt: skip
        theta, tau = ritz(alphas, betas)
        values.append(theta)
        weights_.append(tau / probes)
    ritz_values, ritz_weights = torch.cat(values), torch.cat(weights_)
    z = zero_row_fraction(operator, params, zero_rows) if zero_rows else 0.0
    fractions, radii = magnitude_curve(weights, grid)
    evaluate = width if density == "quadrature" else official_width
    g = evaluate(radii, eps, ritz_values, ritz_weights, z)
    i = crossing(fractions, g)
    removed = float(fractions[i])
    return Limit(
        predicted_removed_fraction=removed,
        predicted_remaining_fraction=1.0 - removed,
        eps=float(eps),
        ritz_values=ritz_values.tolist(),
        ritz_weights=ritz_weights.tolist(),
        zero_row_fraction=z,
        curve=list(zip(fractions.tolist(), radii.tolist(), g.tolist(), strict=True)),
        dim=operator.dim,
        prunable=sum(w.numel() for w in weights),
        density=density,
        hvp_count=operator.calls,
        seconds=time.perf_counter() - started,
        extra={"radius": float(radii[i]), "width": float(g[i])},
    )


def actual_threshold(
    fractions: Sequence[float], accuracies: Sequence[float], dense: float, tolerance: float = 0.0,
    *, strict: bool = False,
) -> float | None:  # fmt: skip
    """The largest pruned fraction whose one-shot accuracy is still at the dense one: ``acc >=
    dense - tolerance`` (``strict``: ``acc > dense``, the official rule). None where none is."""
    kept = [
        pi
        for pi, acc in zip(fractions, accuracies, strict=True)
        if (acc > dense if strict else acc >= dense - tolerance)
    ]
    return max(kept) if kept else None
