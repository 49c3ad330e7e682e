"""What TAS searches in a model (TAS.md A8): Torch-Pruning's coupled channel groups, the
stages of skippable residual blocks, and the costs of an architecture over them in incop's
MACs (alive weights x output positions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from incop.core import inputs as model_inputs
from incop.core.masks import PRUNABLE_TYPES, Masks, sparsity_report
from incop.errors import UserError
from incop.methods.tas.sampling import depth_choices, width_choices

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


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
    training = model.training
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    model.train(training)  # Torch-Pruning leaves the model in eval mode
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


def architecture_macs(space: Space, widths: dict[str, int], depths: dict[str, int]) -> int:
    """``F(A)``: MACs per example of the architecture (``widths`` per group name, ``depths``
    per stage name), per layer its dense MACs x (C_in / N_in) (C_out / N_out), 0 past the
    depth: an exact integer, as whole channels remove whole slices of a layer's weights."""
    removed = set(removed_blocks(space, depths))
    total = 0
    for layer, macs in space.macs.items():
        block = space.block_of[layer]
        if block is not None and space.stages[block[0]].blocks[block[1] - 1] in removed:
            continue
        kept, full = macs, 1
        for g in (space.out_group[layer], space.in_group[layer]):
            if g is not None:
                kept *= widths[space.groups[g].name]
                full *= space.groups[g].size
        total += kept // full
    return total


def macs_of(space: Space, masks: Masks) -> int:
    """MACs per example of the network under ``masks``: alive weights x output positions."""
    return sum(int(masks[f"{layer}.weight"].sum()) * macs // masks[f"{layer}.weight"].numel()
               for layer, macs in space.macs.items())  # fmt: skip
