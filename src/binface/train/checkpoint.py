"""Checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(weights_only=True)`` reads it without running any pickled code. It
records how to rebuild the model (registry name and arguments), the state of
everything that training needs to resume exactly, and the config.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from binface.errors import BinfaceError

FORMAT = "binface-checkpoint"
VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename over it.

    A crash mid-write leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a binface checkpoint safely; one-line errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise BinfaceError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BinfaceError(f"{path} is not a readable binface checkpoint ({first[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise BinfaceError(f"{path} is not a binface checkpoint (no '{FORMAT}' header)")
    if int(ckpt.get("version", 0)) > VERSION:
        raise BinfaceError(f"{path} has checkpoint version {ckpt.get('version')}; this binface "
                           f"reads up to version {VERSION}: upgrade binface")
    return ckpt


def model_from_checkpoint(ckpt: dict | str | Path) -> nn.Module:
    """Rebuild the registered model of a checkpoint and load its weights (eval mode)."""
    from binface.models import create_model

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = create_model(ckpt["model"], **dict(ckpt.get("model_kwargs") or {}))
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise BinfaceError(f"checkpoint weights do not fit model {ckpt['model']!r}: "
                           f"{len(missing)} missing, {len(unexpected)} unexpected tensors")
    return model.eval()
