"""Export formats of a ticket (issue 11): one :class:`Format` entry per format in
:data:`FORMATS`, and :func:`export_ticket`, which loads a ticket and writes one."""

from __future__ import annotations

import importlib.util
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from incop.core import inputs
from incop.core.registry import Registry
from incop.engine.folders import atomic_path
from incop.errors import UserError
from incop.workload.data import DATASET_INFO
from incop.workload.models import MODELS

if TYPE_CHECKING:
    import torch
    from torch import nn

    from incop.core.masks import Masks


@dataclass(frozen=True)
class ExportInput:
    """What a format writer gets: the ticket (pruned weights zero), the run's saved config
    as YAML text (or None) and an example input batch (or None)."""

    model: nn.Module
    masks: Masks
    config: str | None
    example: torch.Tensor | None


@dataclass(frozen=True)
class Format:
    """An export format: ``write(ticket, path)`` and, if it needs one, the pip extra."""

    description: str
    write: Callable[[ExportInput, Path], None]
    extra: str | None = None
    module: str | None = None  # what the extra installs: checked before any work


FORMATS: Registry[Format] = Registry("export format")


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _save(obj: object, path: Path) -> None:
    """``torch.save`` through memory, so a full disk is Python's OSError, not torch's own
    writer's RuntimeError."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.write_bytes(buffer.getvalue())


def _write_state_dict(ticket: ExportInput, path: Path) -> None:
    _save(_state_dict(ticket.model), path)


def _write_torch_prune(ticket: ExportInput, path: Path) -> None:
    state = _state_dict(ticket.model)
    for name, mask in ticket.masks.items():
        weight = state.pop(name)
        state[f"{name}_orig"] = weight
        state[f"{name}_mask"] = mask.cpu().to(weight.dtype)
    _save(state, path)


def _write_sparse(ticket: ExportInput, path: Path) -> None:
    from safetensors.torch import save

    from incop.core.masks import pack_mask
    from incop.tools.ticket.reading import SPARSE_FORMAT

    tensors = _state_dict(ticket.model)
    shapes = {}
    for name, mask in ticket.masks.items():
        weight = tensors.pop(name)
        mask = mask.cpu()
        shapes[name] = list(weight.shape)
        tensors[f"{name}::values"] = weight[mask].contiguous()
        tensors[f"{name}::bits"] = pack_mask(mask)
    metadata = {
        "format": SPARSE_FORMAT,
        "shapes": json.dumps(shapes),
        "config": ticket.config or "",
    }
    path.write_bytes(save(tensors, metadata=metadata))


def _arguments(example: Any) -> tuple[tuple, dict[str, Any]]:
    """``(args, kwargs)`` the model is called with on ``example``."""
    if isinstance(example, dict):
        return (), example
    return (tuple(example) if isinstance(example, tuple | list) else (example,)), {}


def _write_onnx(ticket: ExportInput, path: Path) -> None:
    import torch

    from incop.tools.ticket.reading import ONNX_CONFIG_KEY

    if ticket.example is None:
        raise UserError("the onnx format needs an example input (example_input=)")
    model = ticket.model.eval()
    args, kwargs = _arguments(ticket.example)
    names = list(kwargs) if kwargs else ["input"] if len(args) == 1 else [
        f"input_{i}" for i in range(len(args))]  # fmt: skip
    axes = {name: {0: "batch"} for name in [*names, "output"]}
    torch.onnx.export(model, args, str(path), kwargs=kwargs or None, input_names=names,
                      output_names=["output"], dynamic_axes=axes, dynamo=False)  # fmt: skip
    import onnx

    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, {ONNX_CONFIG_KEY: ticket.config or ""})
    path.write_bytes(graph.SerializeToString())


def _write_compact(ticket: ExportInput, path: Path) -> None:
    import torch

    from incop.tools.ticket.compact import compact

    if ticket.example is None:
        raise UserError("the compact format needs an example input (example_input=)")
    compacted = compact(ticket.model, ticket.example).model
    batch = torch.export.Dim("batch", min=1)
    # Batch 1 would be fixed into the program: traced at 2, the batch left free.
    example = inputs.apply(ticket.example, lambda t: t.expand(2, *t.shape[1:]))
    args, kwargs = _arguments(example)
    free = inputs.apply((args, kwargs), lambda _: {0: batch})
    # Keyword inputs are named by the forward's parameters; positional ones by order.
    program = torch.export.export(compacted, args, kwargs=kwargs or None,
                                  dynamic_shapes=free[1] if kwargs else free[0])  # fmt: skip
    buffer = io.BytesIO()  # torch.export wants a .pt2 name, and the temporary file has none
    torch.export.save(program, buffer)
    path.write_bytes(buffer.getvalue())


FORMATS.register("state_dict")(
    Format(
        "a plain dense state dict, pruned weights zero (torch.load + load_state_dict)",
        _write_state_dict,
    )
)
FORMATS.register("torch-prune")(
    Format(
        "torch.nn.utils.prune's layout: <name>_orig and <name>_mask per pruned weight",
        _write_torch_prune,
    )
)
FORMATS.register("sparse")(
    Format(
        "safetensors: alive values plus a bitmask per pruned weight, and the run's config",
        _write_sparse,
    )
)
FORMATS.register("compact")(
    Format(
        "dead units removed (Torch-Pruning): a smaller model with the same outputs, saved"
        " by torch.export (torch.export.load(path).module())",
        _write_compact,
        extra="compact",
        module="torch_pruning",
    )
)
FORMATS.register("onnx")(
    Format("ONNX graph with the masks folded in", _write_onnx, extra="onnx", module="onnx")
)


def export_ticket(
    source: str | os.PathLike[str],
    format: str,
    out: str | os.PathLike[str],
    *,
    level: int | None = None,
    model: nn.Module | None = None,
    example_input: Any = None,
) -> Path:
    """Write the ticket in ``source`` (anything :func:`incop.load_ticket` reads) to ``out``
    in ``format`` (a name in :data:`FORMATS`). ``out`` must not exist (nothing is
    overwritten); the file is written under a temporary name and renamed. For ``onnx`` and
    ``compact``, ``example_input`` (a tensor of shape (B, ...), or a tuple or dict of them)
    defaults to the one the run recorded (``summary.json``: the shapes and dtypes of one
    training example; zeros, token ids 1), else, for a built-in model, one zero image of the
    run's dataset; a compact module is exported in eval mode.
    Returns ``out``."""
    chosen = FORMATS.get(format)
    if chosen.module and importlib.util.find_spec(chosen.module) is None:
        raise UserError(
            f"the {format} format needs the {chosen.extra!r} extra:"
            f' pip install "incop[{chosen.extra}]"'
        )
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise UserError(f"{out} exists; export writes a new file only (choose another --out)")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent} is not a folder; create it first")
    from incop.tools.ticket.loading import load_ticket, ticket_config

    model, masks = load_ticket(source, model, level=level)
    config = ticket_config(Path(source))
    if example_input is None:
        example_input = recorded_example(Path(source), config)
    if example_input is not None:
        _check_example(model, example_input)
    with atomic_path(out) as tmp:
        chosen.write(ExportInput(model.cpu(), masks, config, example_input), tmp)
        # Some writers replace the file rather than fill it, so its mode is set after.
        os.chmod(tmp, 0o644)
    return out


def _check_example(model: nn.Module, example_input: Any) -> None:
    """Refuse, before anything is written, an example input the model cannot take."""
    import torch

    if not inputs.tensors(example_input):
        raise UserError(
            f"example_input: got a {type(example_input).__name__}, not a tensor (or a tuple or"
            " dict of them)"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs.call(model, example_input)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UserError(
            f"example_input: the model cannot take {json.dumps(inputs.describe(example_input))}:"
            f" {type(exc).__name__}: {first}"
        ) from None
    finally:
        model.train(was_training)


def recorded_example(source: Path, config: str | None) -> Any:
    """The example input a run recorded (``summary.json``'s ``example_input``: the shapes and
    dtypes of its first training batch, one example), else, for a built-in model, one zero
    image of the dataset its config names; None where neither says."""
    import torch

    from incop.tools.ticket.loading import home

    run = source if source.is_dir() else home(source)
    summary = run / "summary.json"
    if summary.is_file() and config is not None:
        try:
            spec = json.loads(summary.read_text()).get("example_input")
        except (ValueError, UnicodeDecodeError, AttributeError):
            spec = None
        if spec is not None:
            return inputs.example(spec)
    settings = yaml.safe_load(config) if config else None
    if not isinstance(settings, dict) or settings.get("model") not in MODELS:
        return None
    info = DATASET_INFO.get(settings.get("dataset", "digits"))
    return None if info is None else torch.zeros(1, info.channels, info.image_size, info.image_size)
