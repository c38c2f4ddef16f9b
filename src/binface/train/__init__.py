"""binface.train: the ArcFace / Partial FC recipe, the binary two-stage recipe, distillation.

>>> from binface.train import Trainer, load_config
>>> cfg = load_config("configs/ms1mv3_mobilefacenet.yaml", ["train.epochs=1"])
>>> summary = Trainer(cfg).fit()

The config keys are declared once in :data:`SCHEMA` (``binface train --list-keys``);
docs/training.md describes the recipe. Names are imported on first use, so
``import binface.train`` alone does not import torch.
"""

from __future__ import annotations

from binface.lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
