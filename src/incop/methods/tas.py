"""TAS: Network Pruning via Transformable Architecture Search (Dong & Yang, NeurIPS 2019),
on any model whose channels Torch-Pruning can group (TAS.md A8, A9; docs/tas.md).

The search space is one width per coupled channel group (the candidates ``C(N)`` of
:data:`RATIOS`) and one depth per stage of skippable residual blocks (:func:`depth_choices`).
A supernet (a copy of the model) multiplies each group's channels by a soft prefix mask
``m[c] = sum_{i in I} w_i 1[c < C_i]`` (two candidates ``I`` drawn from the Gumbel-softmax of
the group's logits alpha, :func:`gumbel_pair`), which equals TAS's zero-padded aggregate
exactly, and mixes each stage's block outputs by the Gumbel-softmax of its depth logits
beta. Weights and architecture are trained by alternating steps on the two halves of the
training data, the architecture against cross-entropy plus the FLOP-cost loss
(:func:`cost_loss`) that holds the argmax network's MACs in ``[R - t F_max, R]``. The argmax
shape is the result: hard masks over the model's prunable weights (channels ``>= C*`` of
every group, every layer of the blocks past ``d*``), which the ``compact`` export turns into
the smaller network whose MACs are the searched cost exactly.

"MACs" are incop's (alive weights x output positions, Conv/Linear only), so the expected
cost, the argmax cost and the compacted network's MACs are one count.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from incop.core import inputs as model_inputs
from incop.core.batches import Batch, BatchSource, LossFn
from incop.core.inputs import OutputFn
from incop.core.masks import PRUNABLE_TYPES, Masks, sparsity_report
from incop.errors import UserError

#: TAS's width ratios (``SoftSelect.get_width_choices``).
RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
#: Candidates sampled per group and forward pass (TAS asserts 2).
PAIR = 2
#: TAS's Gumbel temperature schedule: cosine from 5 to 0.1 over the search's epochs.
TAU = (5.0, 0.1)
#: Adam's learning rate for the architecture. TAS uses 1e-3 over ~59k steps; over incop's
#: reduced budgets (hundreds of steps) the logits barely move and the argmax network never
#: settles in the cost band: lenet5 on digits, 165 steps, seeds 0-3, share of the last 20% of
#: steps in the band: 0% at 1e-3, 0-3% at 1e-2, 85-91% at 5e-2 (benchmarks/tas.py --arch-lr).
ARCH_LR = 0.05
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


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
            noise = -torch.empty_like(alpha).exponential_(generator=generator).log()
        logits = (F.log_softmax(alpha, dim=0) + noise) / tau
    p_hat = F.softmax(logits, dim=0)
    if pair is None:
        k = min(PAIR, alpha.numel())
        pair = torch.multinomial(p_hat.detach() + 1e-7, k, replacement=False, generator=generator)
    return pair, F.softmax(logits[pair], dim=0), p_hat


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


# --- the search space of a model -----------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """Coupled channels searched as one width: ``name`` (its root layer), ``size`` N, its
    width ``choices``, the modules whose outputs the soft mask multiplies (``sites``), and
    per layer the dimension it holds these channels in (``"out"`` or ``"in"``) with the
    in-features one channel spans (``spatial``, > 1 for a Linear reading a flattened map)."""

    name: str
    size: int
    choices: tuple[int, ...]
    sites: tuple[str, ...]
    out_layers: tuple[str, ...]
    in_layers: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Stage:
    """A run of residual blocks searched as one depth: ``name`` (the container),
    ``blocks`` (module names, the first always kept) and the depth ``choices``."""

    name: str
    blocks: tuple[str, ...]
    choices: tuple[int, ...]


@dataclass(frozen=True)
class Space:
    """What TAS searches in a model: its ``groups`` and ``stages``; per prunable layer (its
    module name) the dense MACs per example, the group of its outputs and of its inputs (an
    index into ``groups``, or None) and its block (``(stage, i)``, i from 1, or None)."""

    groups: tuple[Group, ...]
    stages: tuple[Stage, ...]
    macs: dict[str, int]
    out_group: dict[str, int | None]
    in_group: dict[str, int | None]
    block_of: dict[str, tuple[int, int] | None]

    @property
    def dense_macs(self) -> int:
        return sum(self.macs.values())


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        raise UserError(
            'tas groups channels with Torch-Pruning: pip install "incop[compact]"'
        ) from None
    return torch_pruning


def _producer_norms(model: nn.Module, example: Any) -> dict[str, str]:
    """Layer name -> the BatchNorm reading its output directly, on ``example``."""
    names = {module: name for name, module in model.named_modules()}
    made: dict[int, str] = {}
    found: dict[str, str] = {}

    def record(module, _args, output):
        made[id(output)] = names[module]

    def read(module, args):
        source = made.get(id(args[0]))
        if source is not None:
            found.setdefault(source, names[module])

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, PRUNABLE_TYPES)]  # fmt: skip
    hooks += [m.register_forward_pre_hook(read) for m in model.modules() if isinstance(m, NORMS)]
    try:
        with torch.no_grad():
            model_inputs.call(model, example)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def _stages(model: nn.Module, layers: list[str]) -> list[Stage]:
    """Runs of blocks in one container whose blocks after the first are skippable (an
    identity shortcut: ``downsample`` None), each holding prunable layers."""
    stages = []
    for name, container in model.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        run: list[str] = []
        for child_name, child in [*container.named_children(), ("", None)]:
            blockish = child is not None and hasattr(child, "downsample")
            skippable = blockish and child.downsample is None
            if run and skippable:
                run.append(child_name)
                continue
            if len(run) > 1:
                full = [f"{name}.{b}" if name else b for b in run]
                if all(any(layer.startswith(f"{b}.") for layer in layers) for b in full):
                    stages.append(Stage(name or "model", tuple(full), depth_choices(len(full))))
            run = [child_name] if blockish else []
    return stages


def search_space(model: nn.Module, example: Any, layers: list[str], *, depth: bool = True) -> Space:
    """The groups and stages TAS searches in ``model`` (traced on ``example``), over the
    prunable layers ``layers`` (module names; the last one, the classifier, keeps its
    outputs). A group is left out when it holds 1 channel, touches a layer outside
    ``layers``, or a layer reads it in part only. Raises :class:`UserError` when nothing is
    left to search."""
    tp = _torch_pruning()
    modules = dict(model.named_modules())
    names = {module: name for name, module in modules.items()}
    classifier = layers[-1]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    norms = _producer_norms(model, example)
    order = {name: i for i, name in enumerate(modules)}
    roots = [m for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]
    groups: list[Group] = []
    seen: set[tuple[str, ...]] = set()
    for group in graph.get_all_groups(ignored_layers=[modules[classifier]],
                                      root_module_types=[type(m) for m in roots]):  # fmt: skip
        found = _group(group, graph, names, set(layers), classifier, norms, order)
        if found is not None and found.out_layers not in seen:
            seen.add(found.out_layers)
            groups.append(found)
    groups.sort(key=lambda g: min(order[n] for n in g.out_layers))
    stages = _stages(model, layers) if depth else []
    macs = _dense_macs(model, layers, example)
    out_group = {layer: None for layer in layers}
    in_group = {layer: None for layer in layers}
    for g, group in enumerate(groups):
        for layer in group.out_layers:
            out_group[layer] = g
        for layer, _ in group.in_layers:
            in_group[layer] = g
    block_of: dict[str, tuple[int, int] | None] = {layer: None for layer in layers}
    for s, stage in enumerate(stages):
        for i, block in enumerate(stage.blocks, start=1):
            for layer in layers:
                if layer.startswith(f"{block}."):
                    block_of[layer] = (s, i)
    if not groups and not stages:
        raise UserError(
            "tas: the model has no channel group to search (Torch-Pruning found no group of"
            " more than one channel produced and read only by prunable Conv/Linear layers,"
            " besides the classifier's outputs)"
        )
    return Space(tuple(groups), tuple(stages), macs, out_group, in_group, block_of)


def _group(group, graph, names, layers, classifier, norms, order) -> Group | None:
    producers, consumers, batchnorms = [], [], set()
    size = None
    for item in group:
        module, handler, idxs = item.dep.target.module, item.dep.handler, list(item.idxs)
        name = names.get(module)
        if isinstance(module, NORMS):
            batchnorms.add(name)
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        if graph.is_out_channel_pruning_fn(handler):
            producers.append(name)
            size = len(idxs)
            if name not in layers or name == classifier or len(idxs) != module.weight.shape[0]:
                return None
        elif graph.is_in_channel_pruning_fn(handler):
            consumers.append((name, module, idxs))
    if not producers or size is None or size < 2:
        return None
    in_layers = []
    for name, module, idxs in consumers:
        features = module.weight.shape[1] * getattr(module, "groups", 1)
        if name not in layers or sorted(set(idxs)) != list(range(features)) or features % size:
            return None
        in_layers.append((name, features // size))
    sites = tuple(norms[p] if norms.get(p) in batchnorms else p for p in dict.fromkeys(producers))
    producers = sorted(dict.fromkeys(producers), key=lambda n: order[n])
    sites = tuple(norms[p] if norms.get(p) in batchnorms else p for p in producers)
    return Group(producers[0], size, width_choices(size), sites, tuple(producers),
                 tuple(sorted(in_layers, key=lambda item: order[item[0]])))  # fmt: skip


def _dense_macs(model: nn.Module, layers: list[str], example: Any) -> dict[str, int]:
    masks = {f"{layer}.weight": torch.ones_like(model.get_parameter(f"{layer}.weight"),
                                                dtype=torch.bool) for layer in layers}  # fmt: skip
    report = sparsity_report(model, masks, example)
    return {layer.name.removesuffix(".weight"): layer.macs_dense for layer in report.layers}


# --- costs of an architecture ----------------------------------------------------------------


def expected_macs(
    space: Space, widths: list[torch.Tensor], keep: list[torch.Tensor]
) -> torch.Tensor:
    """``E_F``: per layer its dense MACs x (E_in / N_in) (E_out / N_out) x kappa, summed;
    ``widths``: each group's expected width, ``keep``: each stage's kappa per block."""
    total = torch.zeros((), dtype=torch.float64)
    for layer, macs in space.macs.items():
        term = torch.tensor(float(macs), dtype=torch.float64)
        for g in (space.out_group[layer], space.in_group[layer]):
            if g is not None:
                term = term * widths[g].double() / space.groups[g].size
        block = space.block_of[layer]
        if block is not None:
            term = term * keep[block[0]][block[1] - 1].double()
        total = total + term
    return total


def hard_masks(
    model: nn.Module, space: Space, widths: dict[str, int], depths: dict[str, int]
) -> Masks:
    """The masks of the architecture (``widths`` per group name, ``depths`` per stage name)
    over every prunable layer's weight: channels below the width alive, everything in the
    blocks past the depth dead."""
    masks: Masks = {}
    removed = removed_blocks(space, depths)
    for layer in space.macs:
        weight = model.get_parameter(f"{layer}.weight")
        mask = torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
        g = space.out_group[layer]
        if g is not None:
            mask[widths[space.groups[g].name] :] = False
        g = space.in_group[layer]
        if g is not None:
            spatial = dict(space.groups[g].in_layers)[layer]
            mask[:, widths[space.groups[g].name] * spatial :] = False
        if any(layer.startswith(f"{block}.") for block in removed):
            mask[:] = False
        masks[f"{layer}.weight"] = mask
    return masks


def removed_blocks(space: Space, depths: dict[str, int]) -> list[str]:
    """The blocks past each stage's depth (module names)."""
    return [block for stage in space.stages for block in stage.blocks[depths[stage.name] :]]


def macs_of(space: Space, masks: Masks) -> int:
    """MACs per example of the network under ``masks``: alive weights x output positions."""
    return sum(int(masks[f"{layer}.weight"].sum()) * macs // masks[f"{layer}.weight"].numel()
               for layer, macs in space.macs.items())  # fmt: skip


# --- the supernet ----------------------------------------------------------------------------


class Supernet:
    """``model`` (searched in place) with the architecture parameters of ``space``: alpha per
    group, beta per stage (N(0, 0.01^2), drawn from ``generator``). :meth:`sample` draws the
    architecture of the next forward pass; :meth:`hard` fixes the argmax one."""

    def __init__(self, model: nn.Module, space: Space, generator: torch.Generator) -> None:
        self.model, self.space, self.generator = model, space, generator
        device = next(model.parameters()).device
        draw = lambda n: (torch.randn(n, generator=generator) * 0.01).to(device).requires_grad_()  # noqa: E731
        self.alphas = [draw(len(g.choices)) for g in space.groups]
        self.betas = [draw(len(s.choices)) for s in space.stages]
        self._choices = [torch.tensor(g.choices, device=device) for g in space.groups]
        self._masks: list[torch.Tensor] = []
        self._mix: list[torch.Tensor] = []
        self._hooks: list[Any] = []
        modules = dict(model.named_modules())
        for g, group in enumerate(space.groups):
            for site in group.sites:
                last = isinstance(modules[site], nn.Linear)
                self._hooks.append(modules[site].register_forward_hook(self._masker(g, last)))
        for s, stage in enumerate(space.stages):
            outputs: list[torch.Tensor] = []
            for i, block in enumerate(stage.blocks, start=1):
                hook = self._mixer(s, i, len(stage.blocks), outputs)
                self._hooks.append(modules[block].register_forward_hook(hook))

    def _masker(self, g: int, last: bool) -> Callable:
        def hook(_module, _args, output):
            mask = self._masks[g].to(output.dtype)
            shape = [1] * output.dim()
            shape[-1 if last else 1] = -1
            return output * mask.view(shape)

        return hook

    def _mixer(self, s: int, i: int, blocks: int, outputs: list[torch.Tensor]) -> Callable:
        depths = self.space.stages[s].choices

        def hook(_module, _args, output):
            if i == 1:
                outputs.clear()
            if i in depths:
                outputs.append(output)
            if i < blocks:
                return output
            mixed = sum(q * x for q, x in zip(self._mix[s], outputs, strict=True))
            outputs.clear()
            return mixed

        return hook

    def sample(self, tau: float) -> None:
        """Draw every group's pair and every stage's depth mixture for the next forward."""
        self._masks = []
        for alpha, choices, group in zip(
            self.alphas, self._choices, self.space.groups, strict=True
        ):
            pair, w, _ = gumbel_pair(alpha, tau, generator=self.generator)
            self._masks.append(prefix_mask(choices[pair], w, group.size))
        self._mix = []
        for beta in self.betas:
            if tau <= 0:
                self._mix.append(F.softmax(beta, dim=0))
            else:
                noise = -torch.empty_like(beta).exponential_(generator=self.generator).log()
                self._mix.append(F.softmax((F.log_softmax(beta, dim=0) + noise) / tau, dim=0))

    def hard(
        self, widths: dict[str, int] | None = None, depths: dict[str, int] | None = None
    ) -> None:
        """Fix the architecture (default: the argmax one): masks 1[c < C*], one-hot depths."""
        widths = widths or self.widths()
        depths = depths or self.depths()
        device = next(self.model.parameters()).device
        self._masks = [(torch.arange(g.size, device=device) < widths[g.name]).float()
                       for g in self.space.groups]  # fmt: skip
        self._mix = [(torch.tensor(s.choices, device=device) == depths[s.name]).float()
                     for s in self.space.stages]  # fmt: skip

    def widths(self) -> dict[str, int]:
        return {
            g.name: g.choices[int(a.argmax())]
            for g, a in zip(self.space.groups, self.alphas, strict=True)
        }

    def depths(self) -> dict[str, int]:
        return {
            s.name: s.choices[int(b.argmax())]
            for s, b in zip(self.space.stages, self.betas, strict=True)
        }

    def expected(self) -> torch.Tensor:
        """``E_F`` from the noise-free softmaxes (differentiable in alpha and beta)."""
        widths = [expected_width(a, c) for a, c in zip(self.alphas, self._choices, strict=True)]
        keep = [keep_probabilities(b, s.choices, len(s.blocks))
                for b, s in zip(self.betas, self.space.stages, strict=True)]  # fmt: skip
        return expected_macs(self.space, widths, keep)

    def argmax_macs(self) -> int:
        """``F(A)``: the MACs of the argmax architecture."""
        return macs_of(self.space, hard_masks(self.model, self.space, self.widths(), self.depths()))

    def discrepancy(self) -> list[float]:
        """Per distribution, its largest probability minus its second (1 for one candidate)."""
        found = []
        for logits in [*self.alphas, *self.betas]:
            p = F.softmax(logits.detach(), dim=0).sort(descending=True).values
            found.append(float(p[0] - p[1]) if p.numel() > 1 else 1.0)
        return found

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    @property
    def parameters(self) -> list[torch.Tensor]:
        return [*self.alphas, *self.betas]


# --- the search ------------------------------------------------------------------------------


@dataclass
class TASResult:
    """What a search found: ``widths`` (group name -> C*), ``depths`` (stage name -> d*),
    ``macs_fraction`` (F(A) / F_max) and ``expected_macs_fraction`` (E_F / F_max) at the end,
    ``history`` (per epoch: tau, both fractions, the mean discrepancy, the weight and
    architecture losses), ``step_macs_fraction`` (F(A) / F_max after every architecture step),
    ``masks`` (the argmax architecture over the model's prunable weights), ``removed``
    (blocks past their stage's depth), ``alphas``/``betas`` (the logits), ``model`` (the
    searched supernet's weights in the model's architecture), ``space``, ``flops`` (what the
    search cost: 2 x MACs x 3 passes per example of each of its two steps), ``converged``
    (false when most distributions end with a discrepancy below 0.1, TAS.md A11.9),
    ``derived`` (``last``: the last step's argmax; ``last-in-band``: it had left the cost
    band, so the last argmax inside the band was taken), and
    ``compact_model``: the searched network as a smaller dense model, where
    :func:`incop.tas_search` made it (its MACs exactly ``macs_fraction`` of the dense ones)."""

    widths: dict[str, int]
    depths: dict[str, int]
    macs_fraction: float
    expected_macs_fraction: float
    history: list[dict[str, Any]]
    step_macs_fraction: list[float]
    masks: Masks
    removed: list[str]
    alphas: dict[str, list[float]]
    betas: dict[str, list[float]]
    model: nn.Module
    space: Space
    flops: float = 0.0
    converged: bool = True
    derived: str = "last"
    compact_model: nn.Module | None = field(default=None, repr=False)


def _all_examples(data: BatchSource) -> tuple[Any, torch.Tensor]:
    held_x, held_y = getattr(data, "x", None), getattr(data, "y", None)
    if torch.is_tensor(held_x) and torch.is_tensor(held_y):
        return held_x, held_y
    xs, ys = [], []
    for x, y in data:
        xs.append(x)
        ys.append(y)
    return model_inputs.cat(xs), torch.cat(ys)


def halves(targets: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a 50/50 split of the examples, per class for integer ``targets`` (TAS's
    ``prepare.py``), else at random: (weight half, architecture half)."""
    if targets.dim() == 1 and not targets.is_floating_point():
        first, second = [], []
        for label in targets.unique():
            idx = (targets == label).nonzero().squeeze(1)
            idx = idx[torch.randperm(len(idx), generator=generator)]
            first.append(idx[: len(idx) // 2])
            second.append(idx[len(idx) // 2 :])
        return torch.cat(first).sort().values, torch.cat(second).sort().values
    idx = torch.randperm(len(targets), generator=generator)
    return idx[: len(idx) // 2].sort().values, idx[len(idx) // 2 :].sort().values


def _gather(x: Any, y: torch.Tensor, idx: torch.Tensor, device: torch.device) -> Batch:
    xb = model_inputs.apply(x, lambda t: t.index_select(0, idx.to(t.device)))
    return model_inputs.to_device(xb, device), y.index_select(0, idx.to(y.device)).to(device)


@dataclass(frozen=True)
class WeightOptimiser:
    """How the supernet's weights train: TAS's SGD (0.1, Nesterov, momentum 0.9, weight decay
    5e-4, cosine to 0) for BatchNorm nets; a BN-free net takes the run's settings (TAS.md A11.8)."""

    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4


TAS_SGD = WeightOptimiser()


def tas_search(
    model: nn.Module,
    train_batches: BatchSource,
    *,
    flop_ratio: float,
    epochs: int,
    example_input: Any = None,
    batch_size: int | None = None,
    tau: tuple[float, float] = TAU,
    flop_weight: float = 2.0,
    tolerance: float = 0.05,
    search_depth: bool = True,
    search_init: str = "scratch",
    arch_lr: float = ARCH_LR,
    optimiser: WeightOptimiser | None = None,
    init_fn: Callable[[nn.Module], None] | None = None,
    loss_fn: LossFn = F.cross_entropy,
    output_fn: OutputFn = model_inputs.logits,
    layers: list[str] | None = None,
    seed: int = 0,
    log: Callable[[dict[str, Any]], None] | None = None,
) -> TASResult:
    """Search the widths (and depths) of ``model`` under a MACs target of ``flop_ratio``
    (in (0, 1]) of its own, for ``epochs`` epochs over the weight half of ``train_batches``
    (``(inputs (B, ...), targets (B,))``; split 50/50 per class with ``seed``).

    ``model`` is not changed: the supernet is a copy, re-initialised by ``init_fn``
    (default: every module's ``reset_parameters``) with ``search_init="scratch"`` (TAS), or
    ``model``'s own weights with ``"dense"``. ``batch_size``: examples per step of each half
    (default: the first batch's size). ``optimiser``: the weights' (default: TAS's SGD for
    BatchNorm nets, else SGD 0.01 with momentum 0.9 and weight decay 5e-4). ``layers``: the
    prunable layers (default: every Conv/Linear; the last one is the classifier). ``log``:
    called with each epoch's record. The architecture trains with Adam (``arch_lr``, betas
    (0.5, 0.999), weight decay 1e-3); the cost loss weighs ``flop_weight`` with the band
    ``tolerance`` (TAS.md A4). Raises :class:`UserError` on a bad ratio or a model with
    nothing to search."""
    if not (isinstance(flop_ratio, int | float) and math.isfinite(flop_ratio)
            and 0 < flop_ratio <= 1):  # fmt: skip
        raise UserError(f"flop_ratio: {flop_ratio!r} is not allowed; must be in (0, 1]")
    x_all, y_all = _all_examples(train_batches)
    if batch_size is None:
        batch_size = next(iter(train_batches))[1].shape[0]
    device = next(model.parameters()).device
    if example_input is None:
        example_input = model_inputs.take(model_inputs.to_device(x_all, device), 0, 2)
    layers = layers or [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)]
    net = copy.deepcopy(model).train()
    if search_init == "scratch":
        (init_fn or default_init)(net)
    elif search_init != "dense":
        raise UserError(f"search_init: unknown value {search_init!r}; allowed: scratch, dense")
    space = search_space(net, example_input, layers, depth=search_depth)
    generator = torch.Generator().manual_seed(seed)
    supernet = Supernet(net, space, generator)
    has_norm = any(isinstance(m, NORMS) for m in net.modules())
    opt = optimiser or (TAS_SGD if has_norm else WeightOptimiser("sgd", 0.01, 0.9, False, 5e-4))
    weights = [p for p in net.parameters() if p.requires_grad]
    if opt.name == "adam":
        w_opt = torch.optim.Adam(weights, lr=opt.lr, weight_decay=opt.weight_decay)
    else:
        w_opt = torch.optim.SGD(weights, lr=opt.lr, momentum=opt.momentum,
                                nesterov=opt.nesterov and opt.momentum > 0,
                                weight_decay=opt.weight_decay)  # fmt: skip
    w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=max(epochs, 1))
    a_opt = torch.optim.Adam(supernet.parameters, lr=arch_lr, betas=(0.5, 0.999), weight_decay=1e-3)
    first, second = halves(y_all, generator)
    dense = space.dense_macs
    target = flop_ratio * dense
    history, steps = [], []
    in_band: tuple[dict[str, int], dict[str, int]] | None = None
    step_flops = 2 * 3 * 2 * dense  # per example pair: two steps, 3 passes, 2 FLOPs a MAC
    spent = 0.0
    for epoch in range(epochs):
        t = tau_at(epoch, epochs, tau)
        order = first[torch.randperm(len(first), generator=generator)]
        w_losses, a_losses = [], []
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x, y = _gather(x_all, y_all, idx, device)
            other = second[torch.randint(len(second), (len(idx),), generator=generator)]
            xv, yv = _gather(x_all, y_all, other, device)
            supernet.sample(t)
            w_opt.zero_grad(set_to_none=True)
            loss = loss_fn(output_fn(model_inputs.call(net, x)), y)
            loss.backward()
            for a in supernet.parameters:
                a.grad = None  # first order: the weight step's gradients on alpha go
            w_opt.step()
            supernet.sample(t)
            w_opt.zero_grad(set_to_none=True)
            ce = loss_fn(output_fn(model_inputs.call(net, xv)), yv)
            cost = cost_loss(supernet.expected(), supernet.argmax_macs(), target, tolerance, dense)
            arch = ce + flop_weight * cost.to(ce.dtype)
            arch.backward()
            a_opt.step()
            w_losses.append(float(loss.detach()))
            a_losses.append(float(arch.detach()))
            macs = supernet.argmax_macs()
            steps.append(macs / dense)
            if target - tolerance * dense <= macs <= target:
                in_band = (supernet.widths(), supernet.depths())
            spent += step_flops * len(idx)
        w_sched.step()
        record = {
            "phase": "search",
            "epoch": epoch + 1,
            "tau": t,
            "expected_macs_fraction": float(supernet.expected().detach()) / dense,
            "argmax_macs_fraction": supernet.argmax_macs() / dense,
            "discrepancy": sum(supernet.discrepancy()) / max(len(supernet.discrepancy()), 1),
            "search_loss": sum(w_losses) / max(len(w_losses), 1),
            "arch_loss": sum(a_losses) / max(len(a_losses), 1),
        }
        history.append(record)
        if log is not None:
            log(record)
    widths, depths = supernet.widths(), supernet.depths()
    derived = "last"
    if not target - tolerance * dense <= supernet.argmax_macs() <= target and in_band is not None:
        # The last epoch's argmax left the band on its last steps: take the last one inside.
        (widths, depths), derived = in_band, "last-in-band"
    discrepancy = supernet.discrepancy()
    supernet.remove()
    net.requires_grad_(False)
    masks = hard_masks(net, space, widths, depths)
    return TASResult(
        widths=widths,
        depths=depths,
        macs_fraction=macs_of(space, masks) / dense,
        expected_macs_fraction=float(supernet.expected().detach()) / dense,
        history=history,
        step_macs_fraction=steps,
        masks=masks,
        removed=removed_blocks(space, depths),
        alphas={
            g.name: a.detach().tolist() for g, a in zip(space.groups, supernet.alphas, strict=True)
        },
        betas={
            s.name: b.detach().tolist() for s, b in zip(space.stages, supernet.betas, strict=True)
        },
        model=net.requires_grad_(True),
        space=space,
        flops=spent,
        converged=sum(d < 0.1 for d in discrepancy) <= len(discrepancy) / 2,
        derived=derived,
    )


def default_init(model: nn.Module) -> None:
    """A fresh initialisation: every module's ``reset_parameters`` (PyTorch's defaults)."""
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()


# --- the network TAS derives -------------------------------------------------------------------


def removed_parameters(model: nn.Module, removed: list[str]) -> list[str]:
    """Names of every parameter inside the ``removed`` blocks."""
    return [
        name
        for name, _ in model.named_parameters()
        if any(name.startswith(f"{block}.") for block in removed)
    ]


@torch.no_grad()
def apply_architecture(model: nn.Module, masks: Masks, removed: list[str]) -> nn.Module:
    """``model`` with the pruned weights of ``masks`` and every parameter of the ``removed``
    blocks zero: the derived network in the model's own architecture (a block whose
    parameters are all zero adds nothing to its shortcut)."""
    for name, mask in masks.items():
        model.get_parameter(name).mul_(mask)
    for name in removed_parameters(model, removed):
        model.get_parameter(name).zero_()
    return model


@torch.no_grad()
def scratch_init(model: nn.Module, masks: Masks, init_fn: Callable[[nn.Module], None]) -> None:
    """Initialise ``model`` afresh as the network ``masks`` keeps (TAS's student): each
    prunable layer as ``init_fn`` initialises a layer of its alive shape (its alive output
    units and inputs, a prefix of each), so fan-in and fan-out are the smaller network's;
    every other module with parameters as ``init_fn`` initialises it."""
    layers = {name.removesuffix(".weight"): mask for name, mask in masks.items()}
    for name, module in model.named_modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        mask = layers.get(name)
        if mask is None:
            init_fn(module)
            continue
        rows = int(mask.flatten(1).any(1).sum())
        cols = int(mask.transpose(0, 1).flatten(1).any(1).sum())
        if not rows or not cols:
            continue  # dead: a removed block's, zero from here on
        small = copy.deepcopy(module)
        small.weight = nn.Parameter(module.weight.new_empty((rows, cols, *mask.shape[2:])))
        if getattr(module, "bias", None) is not None:
            small.bias = nn.Parameter(module.bias.new_empty(rows))
        init_fn(small)
        module.weight.zero_()
        module.weight[:rows, :cols] = small.weight
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()
            module.bias[:rows] = small.bias
