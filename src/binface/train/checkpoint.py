"""Checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(weights_only=True)`` reads it without running any pickled code. It
records how to rebuild the model (registry name and arguments), the state of
everything that training needs to resume exactly, and the config. Reading lives in
:mod:`binface.models.loading` (one rule for every command); writing is here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from binface.fileio import atomic_write
from binface.models.loading import CHECKPOINT_FORMAT as FORMAT
from binface.models.loading import CHECKPOINT_VERSION as VERSION
from binface.models.loading import load_checkpoint, model_from_checkpoint

__all__ = ["FORMAT", "VERSION", "load_checkpoint", "model_from_checkpoint", "save_atomic"]


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`binface.fileio.atomic_write` (never a truncated file)."""
    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)
