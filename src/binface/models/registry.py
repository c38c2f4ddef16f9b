"""One registry for every model of the zoo (timm style).

A model file decorates a builder with ``@register_model(name, family, description)``;
``create_model`` builds it by name and ``list_models`` enumerates the zoo.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from binface.errors import UnknownModelError

FAMILIES = ("cnn", "hybrid", "binary")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    description: str
    builder: Callable[..., nn.Module]


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, family: str, description: str) -> Callable:
    """Register ``builder(**kwargs) -> nn.Module`` under ``name``."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(name, family, description, builder)
        return builder

    return decorator


def model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``; unknown names list the close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `binface models`"
        raise UnknownModelError(f"unknown model {name!r}{hint}") from None


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the model registered as ``name`` (e.g. ``backbone_only=True``)."""
    return model_info(name).builder(**kwargs)


def list_models(family: str | None = None) -> list[str]:
    """Registered model names, sorted, optionally of one family."""
    return sorted(n for n, i in _REGISTRY.items() if family is None or i.family == family)
