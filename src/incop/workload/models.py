"""Model zoo: every model maps images ``(B, C, H, H)`` to logits ``(B, num_classes)``.

Builders are registered in :data:`MODELS` as ``builder(channels, image_size, num_classes)``;
:func:`build_model` is the checked entry point. Every weight layer is a plain ``nn.Conv2d`` or
``nn.Linear`` (pruning finds them by type) and ReLUs are never in-place, so forward hooks see
each layer's real output. ResNet projection shortcuts live in submodules named ``downsample``
(torchvision's name), which information-flow measurement relies on to skip them.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from incop.core.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from incop.workload.blocks import Block
from incop.errors import UserError

ModelBuilder = Callable[[int, int, int], "nn.Module"]

#: Model name -> ``builder(channels, image_size, num_classes)``.
MODELS: Registry[ModelBuilder] = Registry("model")

_TORCHVISION_PREFIX = "torchvision:"


def _seq(**layers: nn.Module) -> nn.Sequential:
    """A Sequential whose children get readable names (``fc1``, ``features``...)."""
    from torch import nn

    return nn.Sequential(OrderedDict(layers))


def _kaiming(model: nn.Module) -> nn.Module:
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def model_init(name: str) -> Callable[[nn.Module], None] | None:
    """How the model ``name`` initialises its modules, applied to any of them (a layer of
    another shape, TAS's student): the built-ins' own init; None (each module's
    ``reset_parameters``) for the others."""
    return _reinit if name in MODELS else None


def _reinit(module: nn.Module) -> None:
    for part in module.modules():
        reset = getattr(part, "reset_parameters", None)
        if callable(reset):
            reset()
    _kaiming(module)


def _fc_stack(in_features: int, widths: Sequence[int]) -> nn.Sequential:
    """Flatten ``(B, ...)`` -> ``fc1`` -> ReLU -> ... -> ``fcN`` (no ReLU after the last)."""
    from torch import nn

    layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
    for i, width in enumerate(widths, start=1):
        if i > 1:
            layers[f"relu{i - 1}"] = nn.ReLU()
        layers[f"fc{i}"] = nn.Linear(in_features, width)
        in_features = width
    return _seq(**layers)


def _conv_stack(
    channels: int, image_size: int, config: Sequence[int | str], batch_norm: bool
) -> tuple[nn.Sequential, int, int]:
    """3x3 convs (padding 1) of the widths in ``config``, ``"M"`` for a 2x2 max-pool.

    Returns the stack, its output channels and its output spatial size.
    """
    from torch import nn

    layers: list[nn.Module] = []
    size = image_size
    for entry in config:
        if entry == "M":
            # Pooling a 1x1 map fails; skipping it lets deep stacks run on 8x8 and 28x28 images.
            if size > 1:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            continue
        width = int(entry)
        layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU())
        channels = width
    return nn.Sequential(*layers), channels, size


def _conv_net(
    config: Sequence[int | str], channels: int, image_size: int, num_classes: int
) -> nn.Module:
    """Frankle & Carbin's Conv-N: ``features`` conv stack -> ``classifier`` fc 256-256-classes."""
    features, width, size = _conv_stack(channels, image_size, config, batch_norm=False)
    return _kaiming(
        _seq(features=features, classifier=_fc_stack(width * size * size, [256, 256, num_classes]))
    )


def _vgg(
    config: Sequence[int | str], channels: int, image_size: int, num_classes: int
) -> nn.Module:
    """CIFAR-style VGG with BatchNorm: ``features`` -> global average pool -> ``classifier``."""
    from torch import nn

    features, width, _ = _conv_stack(channels, image_size, config, batch_norm=True)
    return _kaiming(
        _seq(
            features=features,
            avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            classifier=nn.Linear(width, num_classes),
        )
    )


def _resnet(
    block: type[Block],
    widths: Sequence[int],
    depths: Sequence[int],
    channels: int,
    num_classes: int,
) -> nn.Module:
    """CIFAR-style ResNet: 3x3 stride-1 stem (no max-pool), stages ``layer1..layerN`` of
    ``depths[i]`` blocks of width ``widths[i]`` (stride 2 from the second stage on), global
    average pool, ``fc``. Parameter names match torchvision's (``layer2.0.downsample.0``...)."""
    from torch import nn

    stages: dict[str, nn.Module] = {}
    in_planes = widths[0]
    for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
        blocks = []
        for j in range(depth):
            blocks.append(block(in_planes, width, 2 if i > 0 and j == 0 else 1))
            in_planes = width * block.expansion
        stages[f"layer{i + 1}"] = nn.Sequential(*blocks)
    return _kaiming(
        _seq(
            conv1=nn.Conv2d(channels, widths[0], 3, padding=1, bias=False),
            bn1=nn.BatchNorm2d(widths[0]),
            relu=nn.ReLU(),
            **stages,
            avgpool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(in_planes, num_classes),
        )
    )


@MODELS.register("mlp")
def mlp(channels: int, image_size: int, num_classes: int) -> nn.Module:
    """LeNet-300-100: flatten -> ``fc1`` 300 -> ``fc2`` 100 -> ``fc3`` classes."""
    return _fc_stack(channels * image_size * image_size, [300, 100, num_classes])


@MODELS.register("lenet5")
def lenet5(channels: int, image_size: int, num_classes: int) -> nn.Module:
    """LeNet-5: ``features`` conv 6 (5x5, pad 2), pool, conv 16 (5x5), pool ->
    ``classifier`` fc 120-84-classes."""
    # The unpadded 5x5 conv needs a 5x5 map; smaller ones (8x8 digits -> 4x4) are padded instead.
    import torch
    from torch import nn

    pad = 0 if image_size // 2 >= 5 else 2
    # Pool before ReLU: the same function (max commutes with ReLU) and the same gradients, with
    # a quarter of the ReLU work; 0.94x the step time on this CPU (benchmarks/throughput.py).
    features = nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(6, 16, 5, padding=pad),
        nn.MaxPool2d(2),
        nn.ReLU(),
    )
    # A too-small image raises RuntimeError here, which build_model reports as a UserError.
    with torch.no_grad():
        flat = features(torch.zeros(1, channels, image_size, image_size)).numel()
    return _kaiming(_seq(features=features, classifier=_fc_stack(flat, [120, 84, num_classes])))


@MODELS.register("conv4")
def conv4(channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Conv-4: convs [64, 64], pool, [128, 128], pool -> fc 256-256-classes."""
    return _conv_net([64, 64, "M", 128, 128, "M"], channels, image_size, num_classes)


@MODELS.register("conv6")
def conv6(channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Conv-6: convs [64, 64], pool, [128, 128], pool, [256, 256], pool -> fc 256-256-classes."""
    config = [64, 64, "M", 128, 128, "M", 256, 256, "M"]
    return _conv_net(config, channels, image_size, num_classes)


@MODELS.register("vgg11")
def vgg11(channels: int, image_size: int, num_classes: int) -> nn.Module:
    """VGG-11 (config A) with BatchNorm."""
    config = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    return _vgg(config, channels, image_size, num_classes)


@MODELS.register("vgg16")
def vgg16(channels: int, image_size: int, num_classes: int) -> nn.Module:
    """VGG-16 (config D) with BatchNorm."""
    config = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]
    config += [512, 512, 512, "M", 512, 512, 512, "M"]
    return _vgg(config, channels, image_size, num_classes)


@MODELS.register("resnet18")
def resnet18(channels: int, image_size: int, num_classes: int) -> nn.Module:
    """ResNet-18: BasicBlocks [2, 2, 2, 2], widths 64-512."""
    from incop.workload.blocks import BasicBlock

    return _resnet(BasicBlock, [64, 128, 256, 512], [2, 2, 2, 2], channels, num_classes)


@MODELS.register("resnet50")
def resnet50(channels: int, image_size: int, num_classes: int) -> nn.Module:
    """ResNet-50: Bottlenecks [3, 4, 6, 3], widths 64-512 (outputs x4)."""
    from incop.workload.blocks import Bottleneck

    return _resnet(Bottleneck, [64, 128, 256, 512], [3, 4, 6, 3], channels, num_classes)


@MODELS.register("resnet20")
def resnet20(channels: int, image_size: int, num_classes: int) -> nn.Module:
    """ResNet-20 (He et al. 2016, CIFAR): BasicBlocks [3, 3, 3], widths 16-64."""
    from incop.workload.blocks import BasicBlock

    return _resnet(BasicBlock, [16, 32, 64], [3, 3, 3], channels, num_classes)


def _torchvision(name: str) -> ModelBuilder:
    import torch

    try:
        import torchvision
    # A torchvision built for another torch version fails to import with RuntimeError.
    except (ImportError, RuntimeError) as err:
        raise UserError(
            f"model {_TORCHVISION_PREFIX + name!r} needs torchvision, which cannot be imported "
            f"({err}); install a torchvision matching torch {torch.__version__}"
        ) from None
    valid = torchvision.models.list_models()
    if name not in valid:
        raise UserError(f"unknown torchvision model {name!r}; valid: {', '.join(valid)}")

    def build(channels: int, image_size: int, num_classes: int) -> nn.Module:
        return torchvision.models.get_model(name, num_classes=num_classes)

    return build


#: ``pkg.module:callable``: a user's model, built by calling ``callable()`` with no arguments.
FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
#: What ``incop.prune`` records for a model given as an object without a factory.
USER_MODEL = "user:"


def load_factory(spec: str, *, outside: Path | None = None) -> Callable[[], nn.Module]:
    """The callable ``spec`` (``pkg.module:callable``) names, imported. ``outside``: a folder
    the module must not come from (a run folder handed to you: its files never run)."""
    module_name, _, attribute = spec.partition(":")
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise UserError(f"model: {spec!r}: no module {module_name!r} to import (is it installed,"
                        " or on PYTHONPATH?)")  # fmt: skip
    origin = Path(found.origin).resolve() if found.origin else None
    if outside is not None and origin is not None and origin.is_relative_to(outside.resolve()):
        raise UserError(f"model: {spec!r} would import {origin}, a file of the folder it is read"
                        " from; incop runs no code from a folder")  # fmt: skip
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except Exception as exc:  # an import can raise anything
        raise UserError(f"model: {spec!r} does not import: {type(exc).__name__}: {exc}") from None
    if not callable(target):
        raise UserError(f"model: {spec!r} is a {type(target).__name__}, not a callable")
    return target


def from_factory(spec: str, *, outside: Path | None = None) -> nn.Module:
    """``callable()`` of the factory ``spec`` names: a user's model, checked to be one."""
    from torch import nn

    model = load_factory(spec, outside=outside)()
    if not isinstance(model, nn.Module):
        raise UserError(f"model: {spec!r} returned a {type(model).__name__}, not an nn.Module")
    return model


def build_model(name: str, channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Build model ``name`` for images ``(B, channels, image_size, image_size)``.

    The model maps that input to logits ``(B, num_classes)`` and is returned in train mode.
    ``name`` is a key of :data:`MODELS`, ``"torchvision:<name>"`` (needs torchvision) or a
    factory ``"pkg.module:callable"`` (called with no arguments).
    A dummy forward runs at build time so a model that cannot take the input (e.g. an image
    too small for its convs and pools) raises :class:`UserError` here, before any training.
    """
    import torch

    sizes = {"channels": channels, "image_size": image_size, "num_classes": num_classes}
    for what, value in sizes.items():
        if value < 1:
            raise UserError(f"{what} must be >= 1, got {value}")
    if name.startswith(USER_MODEL):
        raise UserError(
            f"model: {name!r} is a model given to incop.prune as an object, which no name can"
            " rebuild; pass the model (model=), or record a factory (model_factory="
            "'pkg.module:callable')"
        )
    if FACTORY.fullmatch(name) and not name.startswith(_TORCHVISION_PREFIX):
        # A user's model: what it takes is checked on the run's own batches before training.
        return from_factory(name).train()
    if name.startswith(_TORCHVISION_PREFIX):
        builder = _torchvision(name.removeprefix(_TORCHVISION_PREFIX))
    else:
        builder = MODELS.get(name)
    shape = (2, channels, image_size, image_size)
    try:
        model = builder(channels, image_size, num_classes)
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape))
    except RuntimeError as err:
        reason = str(err).strip().split("\n")[0]
        raise UserError(
            f"model {name!r} cannot take input of shape {shape} (batch, channels, height, "
            f"width): {reason}; use larger images or another model"
        ) from None
    return model.train()
