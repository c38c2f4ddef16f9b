"""Exporters (torch side): a model name or checkpoint -> ``.bfp`` (packed) or ``.onnx``.

Models are loaded by :func:`binface.models.load_model` (re-exported here).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from binface.models.loading import LoadedModel, load_model
from binface.runtime.bfp import write_bfp
from binface.runtime.capture import capture
from binface.runtime.lower import lower

__all__ = ["LoadedModel", "export_packed", "load_model"]


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
