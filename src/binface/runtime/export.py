"""Exporters (torch side): a model name or checkpoint -> ``.bfp`` (packed) or ``.onnx``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from binface.errors import BinfaceError, InputShapeError
from binface.runtime.bfp import write_bfp
from binface.runtime.capture import capture
from binface.runtime.lower import lower


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    input_size: tuple[int, int]
    family: str


def load_model(spec: str | os.PathLike | nn.Module, input_size: tuple[int, int] | None = None
               ) -> LoadedModel:
    """A registered model name (random init), a checkpoint path, or a module, in eval mode.

    A checkpoint is ``torch.save({"model": name, "model_kwargs": {...},
    "state_dict": ...})``, loaded with ``weights_only=True``.
    """
    from binface.models import create_model, model_info

    if isinstance(spec, nn.Module):
        name = getattr(spec, "model_name", type(spec).__name__)
        model = spec
    elif Path(spec).suffix in (".pt", ".pth", ".ckpt") or Path(spec).is_file():
        path = Path(spec)
        if not path.is_file():
            raise BinfaceError(f"checkpoint {path} does not exist")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BinfaceError(f"{path}: cannot load the checkpoint ({type(exc).__name__})") \
                from None
        if not isinstance(ckpt, dict) or "model" not in ckpt or "state_dict" not in ckpt:
            raise BinfaceError(f"{path}: not a binface checkpoint (expected a dict with "
                               "'model', 'model_kwargs' and 'state_dict')")
        name = str(ckpt["model"])
        model = create_model(name, **dict(ckpt.get("model_kwargs") or {}))
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise BinfaceError(f"{path}: the state_dict does not fit {name}: {first}") from None
    else:
        name = str(spec)
        model = create_model(name)
    family = "binary"
    try:
        family = model_info(name).family
    except BinfaceError:
        family = "binary" if any(getattr(m, "runtime_binary", False) for m in model.modules()) \
            else "cnn"
    fixed = getattr(model, "input_size", None)
    if input_size and fixed and tuple(input_size) != tuple(fixed):
        raise InputShapeError(f"{name} takes {fixed[0]}x{fixed[1]} images only, not "
                              f"{input_size[0]}x{input_size[1]}")
    size = input_size or fixed or (112, 112)
    return LoadedModel(model.eval(), name, tuple(size), family)


def export_packed(model: str | os.PathLike | nn.Module, path: str | os.PathLike,
                  input_size: tuple[int, int] | None = None, name: str | None = None,
                  channels: int = 3) -> dict:
    """Trace, lower and write ``model`` as a packed ``.bfp`` file; returns a summary.

    ``model``: a registered name (random weights), a checkpoint, or a module (any
    module taking one (N, channels, H, W) tensor).
    """
    lm = load_model(model, input_size)
    if name:
        lm.name = name
    with torch.no_grad():
        ir = capture(lm.model, lm.input_size, channels=channels)
    graph, tensors = lower(ir)
    graph["model"] = lm.name
    graph["input_size"] = list(lm.input_size)
    n_bin = sum(1 for n in graph["nodes"] if n["op"] in ("bconv", "bdwconv"))
    graph["info"] = {"binary_layers": n_bin, "nodes": len(graph["nodes"])}
    write_bfp(path, graph, tensors)
    return {"model": lm.name, "path": str(path), "nodes": len(graph["nodes"]),
            "binary_layers": n_bin, "bytes": Path(path).stat().st_size,
            "weights_bytes": int(sum(t.nbytes for t in tensors.values() if isinstance(
                t, np.ndarray)))}
