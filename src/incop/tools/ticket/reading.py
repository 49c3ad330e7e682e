"""Reading back the exported formats that carry a run's config: ``sparse`` (safetensors) and
``onnx``. Apart from the writers (:mod:`incop.tools.ticket.formats`), so that loading a ticket
does not need them."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from incop.core.masks import Masks, unpack_mask
from incop.errors import UserError

SPARSE_FORMAT = "incop-sparse-1"


ONNX_CONFIG_KEY = "incop_config"


def sparse_config(path: Path) -> str:
    """The run config (YAML text, possibly empty) a ``sparse`` export holds."""
    return _sparse_metadata(path).get("config", "")


def _sparse_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for garbage
        raise UserError(f"{path}: not a safetensors file ({exc})") from None
    if metadata.get("format") != SPARSE_FORMAT:
        raise UserError(f"{path}: a safetensors file, but not a sparse ticket incop wrote")
    return metadata


def read_sparse(path: Path) -> tuple[dict[str, torch.Tensor], Masks]:
    """The dense state dict (pruned weights zero) and the masks of a ``sparse`` export."""
    from safetensors.torch import load_file

    shapes = json.loads(_sparse_metadata(path)["shapes"])
    tensors = load_file(str(path))
    masks: Masks = {}
    for name, shape in shapes.items():
        mask = unpack_mask(tensors.pop(f"{name}::bits"), shape)
        values = tensors.pop(f"{name}::values")
        weight = torch.zeros(shape, dtype=values.dtype)
        weight[mask] = values
        tensors[name], masks[name] = weight, mask
    return tensors, masks


def read_onnx(path: Path) -> tuple[str, dict[str, torch.Tensor]] | None:
    """The run config (YAML text, possibly empty) and the named tensors of an ONNX file,
    or None if ``path`` is not one (or the onnx extra is missing)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None
    try:
        graph = onnx.load(str(path))
    except Exception:  # protobuf's decode errors for anything that is not ONNX
        return None
    if not graph.graph.node:
        return None
    config = {p.key: p.value for p in graph.metadata_props}.get(ONNX_CONFIG_KEY, "")
    tensors = {
        t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.graph.initializer
    }
    return config, tensors
