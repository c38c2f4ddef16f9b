"""The model zoo: lightweight CNNs, efficient hybrids and binary networks.

Every module in this package registers its models on import; new model files
are picked up automatically.
"""

from __future__ import annotations

import importlib
import pkgutil

from binface.models.loading import (
    LoadedModel,
    family_of,
    load_checkpoint,
    load_model,
    model_from_checkpoint,
)
from binface.models.registry import (
    FAMILIES,
    ModelInfo,
    create_model,
    list_models,
    model_info,
    register_model,
)

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in {"registry", "common", "loading"}:
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["FAMILIES", "LoadedModel", "ModelInfo", "create_model", "family_of", "list_models",
           "load_checkpoint", "load_model", "model_from_checkpoint", "model_info",
           "register_model"]
