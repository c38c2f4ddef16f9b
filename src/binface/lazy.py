"""Lazy package exports: a package lists its public names, each imported on first use.

Importing ``binface.data`` or ``binface.runtime`` must stay light (no torch, no
TensorFlow) for the engine and the data workers, yet ``from binface.runtime import
export_onnx`` must work. A package declares ``{name: module}`` (or ``{name: (module,
attribute)}``) and takes its ``__getattr__`` / ``__dir__`` from :func:`lazy_exports`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, names: dict[str, str | tuple[str, str]], namespace: dict
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: each of ``names`` is imported on first
    use and cached in the package's ``namespace``."""

    def __getattr__(name: str) -> Any:
        target = names.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attr = (target, name) if isinstance(target, str) else target
        value = getattr(importlib.import_module(module), attr)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
