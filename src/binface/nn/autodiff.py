"""A switch for code that differentiates a gradient (gradient-inversion attacks).

binface's quantizers and PReLU compute their backward passes in hand-written
``torch.autograd.Function``s (one buffer, numba) that autograd cannot differentiate
again. Inside :func:`twice_differentiable` they compute the same forward values and
the same first gradients with plain torch expressions (a straight-through surrogate
per quantizer, ``F.prelu``), slower but differentiable twice, so that
``torch.autograd.grad(..., create_graph=True)`` works through any zoo model.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["enabled", "twice_differentiable"]

_state = threading.local()


def enabled() -> bool:
    """Whether the layers should take their twice-differentiable path (this thread)."""
    return getattr(_state, "on", False)


@contextlib.contextmanager
def twice_differentiable() -> Iterator[None]:
    """Layers take their plain-torch, twice-differentiable path inside the block."""
    before = enabled()
    _state.on = True
    try:
        yield
    finally:
        _state.on = before
