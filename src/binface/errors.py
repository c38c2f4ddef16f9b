"""User-facing errors.

Anything a user can get wrong (a model name, a path, a shape, a file) raises a
``BinfaceError`` whose message is one line naming the problem; the CLI prints it
without a traceback.
"""

from __future__ import annotations


class BinfaceError(Exception):
    """An error caused by user input, reported as one line."""


class UnknownModelError(BinfaceError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InputShapeError(BinfaceError, ValueError):
    """A tensor whose shape a model cannot take."""


class UnsupportedOpError(BinfaceError, NotImplementedError):
    """An operation or module the packed engine (or an exporter) cannot run; names it.

    Defined here, not in ``binface.runtime``, so that layers and quantizers can say
    themselves what a runtime cannot run (``binface.runtime.errors`` re-exports it).
    """
