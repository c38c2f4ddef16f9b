"""binface.train: the ArcFace / Partial FC recipe, the binary two-stage recipe, distillation.

>>> from binface.train import Trainer, load_config
>>> cfg = load_config("configs/ms1mv3_mobilefacenet.yaml", ["train.epochs=1"])
>>> summary = Trainer(cfg).fit()

The config keys are declared once in :data:`SCHEMA` (``binface train --list-keys``);
docs/training.md describes the recipe. Names are imported on first use, so
``import binface.train`` alone does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Trainer": "binface.train.loop",
    "TrainingError": "binface.train.loop",
    "load_config": "binface.train.config",
    "validate": "binface.train.config",
    "dump_config": "binface.train.config",
    "list_keys": "binface.train.config",
    "DEFAULTS": "binface.train.config",
    "SCHEMA": "binface.train.config",
    "Key": "binface.train.config",
    "Distiller": "binface.train.distill",
    "open_train_dataset": "binface.train.data",
    "load_checkpoint": "binface.models.loading",
    "save_atomic": "binface.train.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'binface.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
