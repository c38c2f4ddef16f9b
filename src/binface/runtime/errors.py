"""Errors of the runtimes: each is a one-line ``BinfaceError`` the CLI prints as is."""

from __future__ import annotations

from binface.errors import BinfaceError, InputShapeError, UnsupportedOpError


class PackedFormatError(BinfaceError, ValueError):
    """A ``.bfp`` file that is corrupt, truncated, not ours, or of another format version."""


class RuntimeUnavailableError(BinfaceError, RuntimeError):
    """A runtime that is unknown, not installed, or cannot run the given model."""


__all__ = ["InputShapeError", "PackedFormatError", "RuntimeUnavailableError",
           "UnsupportedOpError"]
