"""Load a ticket back (issue 11): :func:`load_ticket` reads a run folder, one of its level
checkpoints, or a ``state_dict``, ``torch-prune`` or ``sparse`` export."""

from __future__ import annotations

import os
import re
import types
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from torch import nn

from incop.core.masks import Masks, prunable_parameters
from incop.errors import UserError
from incop.tools.ticket.masking import masked_parameters
from incop.tools.ticket.reading import read_onnx, read_sparse, sparse_config


class Ticket(NamedTuple):
    """A pruned model and its masks (parameter name -> bool tensor, True = alive)."""

    model: nn.Module
    masks: Masks


def run_checkpoint(run: Path, level: int | None) -> Path:
    """The checkpoint of ``level`` in run folder ``run``; by default the fine-tuned final
    ticket where there is one, else the last level."""
    levels = sorted(
        int(p.parent.name)
        for p in run.glob("levels/*/checkpoint.pt")
        if re.fullmatch(r"\d+", p.parent.name)
    )
    if level is None:
        if (run / "final" / "checkpoint.pt").is_file():
            return run / "final" / "checkpoint.pt"
        if levels:
            return run / "levels" / str(levels[-1]) / "checkpoint.pt"
        raise UserError(f"{run}: no level checkpoint (levels/<k>/checkpoint.pt); is it a run?")
    if level not in levels:
        have = ", ".join(map(str, levels)) or "none"
        raise UserError(f"level {level} is not in {run}; its levels: {have}")
    return run / "levels" / str(level) / "checkpoint.pt"


def config_text(run: Path) -> str:
    path = run / "config.yaml"
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the run's config ({exc})") from None


def model_from_config(text: str, where: str, folder: Path | None = None) -> nn.Module:
    """A fresh model of the architecture a saved config names (built-in models,
    ``torchvision:`` ones, and a user's ``pkg.module:callable`` factory, imported only from
    outside ``folder``, the folder the config was read from; data is read only for a
    dataset incop does not know the shape of)."""
    from incop.config import resolve
    from incop.workload.data import DATASET_INFO, load_dataset
    from incop.workload.models import FACTORY, USER_MODEL, build_model, from_factory

    try:
        settings = yaml.safe_load(text)
        config = resolve(settings if isinstance(settings, dict) else {})
    except (yaml.YAMLError, UserError) as exc:
        raise UserError(f"{where}: the saved config does not load: {exc}") from None
    if config.model.startswith(USER_MODEL):
        raise UserError(
            f"{where}: the run's model is {config.model!r}, an object given to incop.prune"
            " that no name rebuilds: pass it (load_ticket(run, model) or, for incop export,"
            " the API's export_ticket(..., model=)), or record model_factory="
            "'pkg.module:callable' when you prune"
        )
    if FACTORY.fullmatch(config.model) and not config.model.startswith("torchvision:"):
        return from_factory(config.model, outside=folder)
    info = DATASET_INFO.get(config.dataset)
    if info is None:
        info = load_dataset(config.dataset, config.data_dir, config.download).info
    return build_model(config.model, info.channels, info.image_size, info.num_classes)


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts like a safetensors file: a little-endian u64 header length,
    then a JSON object that fits in the file."""
    with path.open("rb") as file:
        head = file.read(9)
        size = path.stat().st_size
    if len(head) < 9:
        return False
    return head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size


def is_exported_program(path: Path) -> bool:
    """Whether ``path`` is a zip archive ``torch.export.save`` wrote (the compact format)."""
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/archive_format") for name in archive.namelist())


def _from_compact(path: Path) -> Ticket:
    try:
        model = torch.export.load(str(path)).module()
    except Exception as exc:  # torch.export raises many kinds for a damaged archive
        raise UserError(f"{path}: a torch.export archive that does not load ({exc})") from None
    # torch.export's module refuses train()/eval(): it was exported in eval mode, and stays so.
    model.train = types.MethodType(_frozen_mode, model)
    model.eval = types.MethodType(_frozen_mode, model)
    # Dead units are gone; what zeros remain are the alive units' own pruned weights.
    return Ticket(model, {n: p != 0 for n, p in model.named_parameters() if p.dim() > 1})


def _frozen_mode(module: nn.Module, mode: bool = True) -> nn.Module:
    """``train(mode)`` of a compact ticket: its graph was exported in eval mode (dropout off,
    BatchNorm on its running statistics) and runs so whatever the flag."""
    return module


def _torch_file(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for garbage
        raise UserError(
            f"{path}: not a ticket incop can read (run folder, checkpoint.pt, or a state_dict,"
            f" torch-prune or sparse export): {type(exc).__name__}"
        ) from None


def _checked_model(model: nn.Module | None, path: Path, kind: str) -> nn.Module:
    if model is None:
        raise UserError(
            f"{path} is a {kind} export, which holds no config: pass the model it belongs to"
            " (load_ticket(path, model))"
        )
    return model


def _from_torch_prune(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Masks]:
    masks = {key[: -len("_mask")]: state[key].bool() for key in state if key.endswith("_mask")}
    plain = {k: v for k, v in state.items() if not k.endswith(("_mask", "_orig"))}
    for name in masks:
        plain[name] = state[f"{name}_orig"] * state[f"{name}_mask"]
    return plain, masks


def _read(path: Path, model: nn.Module | None) -> tuple[nn.Module, dict[str, torch.Tensor], Masks]:

    if not zipfile.is_zipfile(path):  # every torch.save file is a zip archive
        if is_safetensors(path):
            text = sparse_config(path)
            state, masks = read_sparse(path)
            return _model_for(model, text, path, "sparse"), state, masks
        onnx_file = read_onnx(path)
        if onnx_file is None:
            raise UserError(
                f"{path}: not a ticket incop can read: load_ticket reads a run folder, a"
                " checkpoint.pt, or a state_dict, torch-prune, sparse, compact or onnx export"
            )
        text, weights = onnx_file
        model = _model_for(model, text, path, "onnx")
        missing = [k for k in model.state_dict() if k not in weights]
        folded = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if missing and not folded:
            raise UserError(
                f"{path}: its graph does not hold the model's tensors under their names"
                f" ({', '.join(missing[:4])}...): it is for inference only (an exporter may"
                " fold or rename weights); load the run folder or a sparse export instead"
            )
        if missing:
            raise UserError(
                f"{path}: its graph does not hold the model's tensors under their names"
                f" ({', '.join(missing[:4])}...): the ONNX exporter folds BatchNorm into the"
                " convolutions, so such a graph is for inference only; load the run folder or"
                " a sparse export instead"
            )
        state = {k: weights[k] for k in model.state_dict()}
        return model, state, _nonzero_masks(model, state)
    obj = _torch_file(path)
    if isinstance(obj, dict) and set(obj) == {"state_dict", "masks"}:
        if model is None:
            text = ticket_config(path)
            if text is None:
                raise UserError(f"{path}: not inside a run folder (no config.yaml); pass the model")
            model = model_from_config(text, str(path), home(path))
        return model, obj["state_dict"], obj["masks"]
    if not (isinstance(obj, dict) and all(torch.is_tensor(v) for v in obj.values())):
        raise UserError(f"{path}: holds {type(obj).__name__}, not a ticket incop wrote")
    if any(key.endswith("_mask") for key in obj):
        state, masks = _from_torch_prune(obj)
        return _checked_model(model, path, "torch-prune"), state, masks
    model = _checked_model(model, path, "state_dict")
    return model, obj, _nonzero_masks(model, obj)


def _nonzero_masks(model: nn.Module, state: dict[str, torch.Tensor]) -> Masks:
    """Masks of a file that keeps none: a weight is pruned exactly where it is zero."""
    return {n: state[n] != 0 for n in prunable_parameters(model) if n in state}


def _model_for(model: nn.Module | None, text: str, path: Path, kind: str) -> nn.Module:
    """``model``, or the one the config ``text`` a file holds names."""
    if model is not None:
        return model
    if not text:
        return _checked_model(None, path, kind)
    return model_from_config(text, str(path), home(path))


def load_ticket(
    source: str | os.PathLike[str], model: nn.Module | None = None, *, level: int | None = None
) -> Ticket:
    """The ticket in ``source`` as ``(model, masks)``, pruned weights exactly zero.

    ``source``: a run folder (``level`` picks the level; by default the fine-tuned final
    ticket where there is one, else the last level), a ``levels/<k>/checkpoint.pt`` or
    ``final/checkpoint.pt``, or a file ``incop export`` wrote in the ``state_dict``,
    ``torch-prune``, ``sparse``, ``compact`` or ``onnx`` format (an ONNX graph only for
    models without BatchNorm, which the exporter folds into the convolutions).
    ``model``: the module to load into (changed in place and returned); it may be
    omitted where the source holds a config of a built-in or torchvision model (run
    folders, their checkpoints, ``sparse`` and ``onnx`` exports), and must be left
    out for ``compact``, whose smaller model comes from the file itself (its masks: its
    Conv/Linear-like weights that are non-zero). Masks of a ``state_dict`` export are
    recovered as the non-zero weights of the model's Conv/Linear layers (exact unless a
    trained weight is exactly zero), and so are an ``onnx`` one's. Apply them to a
    training loop with :func:`incop.apply_masks`.
    """
    if not isinstance(source, str | os.PathLike):
        raise UserError(
            f"source: a {type(source).__name__} is not allowed; give the path of a run folder"
            " or of a ticket file"
        )
    if model is not None and not isinstance(model, nn.Module):
        raise UserError(f"model: got a {type(model).__name__}, not a torch.nn.Module")
    path = Path(source)
    if not path.exists():
        raise UserError(f"{path}: no such run folder or file")
    if path.is_dir():
        checkpoint = run_checkpoint(path, level)
        if model is None:
            model = model_from_config(config_text(path), str(path / "config.yaml"), path)
        path = checkpoint
    elif level is not None:
        raise UserError(f"level={level} picks a level of a run folder; {path} is a file")
    if zipfile.is_zipfile(path) and is_exported_program(path):
        if model is not None:
            raise UserError(f"{path} is a compact export: it holds its own, smaller model")
        return _from_compact(path)
    model, state, masks = _read(path, model)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"{path} does not fit the model: {exc}") from None
    with torch.no_grad():
        for name, p in masked_parameters(model, masks).items():
            p.mul_(masks[name].to(p.device))
    return Ticket(model, {n: m.bool() for n, m in masks.items()})


def home(source: Path) -> Path:
    """The folder a ticket file comes with: its run folder for a checkpoint (levels/<k>/ sits
    two folders down in it, final/ one), else the file's own folder."""
    if source.name == "checkpoint.pt":
        depth = 2 if source.parent.parent.name == "levels" else 1
        if len(source.parents) > depth:
            return source.parents[depth]
    return source.parent


def ticket_config(source: Path) -> str | None:
    """The saved config (YAML text) that comes with ``source``, or None: a run folder's, that
    of the run a checkpoint sits in, or the one a ``sparse`` export holds."""

    if source.is_dir():
        return config_text(source)
    if source.is_file() and is_safetensors(source):
        return sparse_config(source) or None
    run = home(source)
    if source.name == "checkpoint.pt" and (run / "config.yaml").is_file():
        return config_text(run)
    return None
