"""One-pass numba kernels for DoReFa's one-bit weights mode on large activation maps.

BinaryFaceNet quantizes its inputs with DoReFa (k = 1, weights mode) on maps of up to
112x112x64 per image, and with PyTorch ops each call walks the map many times: a min /
max pass and three sign passes forward; a sigmoid, two dot products, the sigmoid
backward, a scale and a comparison pass for the elements at the max backward. Here

- the forward is one pass: the +-1 values and each chunk's min and max;
- the backward is PyTorch's vectorised sigmoid of 2x (its transcendental is faster than
  numba's, which has no vector math library) and then one pass that writes the input
  gradient over the sigmoid's buffer and sums g s and g on the way, in float64. The
  elements at max |x| (for the path through the max, ties split evenly) are looked for
  only in the chunks whose min or max is the global one, which the forward kept.

The formulas are ``_DoReFa1Fn``'s (``binface.nn.quantizers``); tests compare both with a
plain autograd reference (tests/test_train_speed.py).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from binface.nn.numba_util import KERNEL_OPTIONS, set_numba_threads

__all__ = ["at_extreme", "backward", "forward"]

# elements per chunk: large enough to amortise the per-chunk work, small enough that the
# chunks holding the max are a small part of the map
CHUNK = 1 << 15


@functools.cache
def _kernels():
    """The numba kernels, compiled (or loaded from cache) on first use."""
    from numba import njit, prange

    @njit(**KERNEL_OPTIONS)
    def fwd(x, out, lo_part, hi_part):
        n = x.shape[0]
        chunks = lo_part.shape[0]
        for b in prange(chunks):
            start = b * CHUNK
            stop = min(n, start + CHUNK)
            lo = x[start]
            hi = x[start]
            nan = False
            for i in range(start, stop):
                v = x[i]
                out[i] = np.float32(1.0) if v > 0 else np.float32(-1.0)
                lo = min(lo, v)
                hi = max(hi, v)
                nan |= v != v
            if nan:
                lo = np.float32(np.nan)
                hi = np.float32(np.nan)
            lo_part[b] = lo
            hi_part[b] = hi

    @njit(**KERNEL_OPTIONS)
    def bwd(g, s, scale, gs_part, g_part):
        n = g.shape[0]
        chunks = gs_part.shape[0]
        for b in prange(chunks):
            start = b * CHUNK
            stop = min(n, start + CHUNK)
            gs = 0.0
            gsum = 0.0
            for i in range(start, stop):
                gv = g[i]
                sv = s[i]
                gs += np.float64(gv * sv)
                gsum += np.float64(gv)
                s[i] = gv * sv * (np.float32(1.0) - sv) * scale
            gs_part[b] = gs
            g_part[b] = gsum

    return fwd, bwd


def _chunks(numel: int) -> int:
    return -(-numel // CHUNK)


def forward(flat_x: torch.Tensor, flat_out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Write sign(x) (sign(0) = -1) into ``flat_out``; return each chunk's (min, max)."""
    fwd, _ = _kernels()
    set_numba_threads()
    chunks = _chunks(flat_x.numel())
    lo, hi = np.empty(chunks, np.float32), np.empty(chunks, np.float32)
    fwd(flat_x.numpy(), flat_out.numpy(), lo, hi)
    return lo, hi


def backward(flat_g: torch.Tensor, flat_s: torch.Tensor, scale: float) -> tuple[float, float]:
    """Overwrite ``flat_s`` (sigmoid(2x)) with g s (1 - s) ``scale``; return sum(g s) and
    sum(g), each summed in float64."""
    _, bwd = _kernels()
    set_numba_threads()
    chunks = _chunks(flat_g.numel())
    gs, gsum = np.empty(chunks, np.float64), np.empty(chunks, np.float64)
    bwd(flat_g.numpy(), flat_s.numpy(), np.float32(scale), gs, gsum)
    return float(gs.sum()), float(gsum.sum())


def at_extreme(flat_x: torch.Tensor, part: np.ndarray, value: float) -> np.ndarray:
    """Indices of the elements equal to ``value`` (a global min or max), looked for only in
    the chunks whose ``part`` (their min or max) is that value."""
    x = flat_x.numpy()
    found = []
    for b in np.flatnonzero(part == value):
        start = int(b) * CHUNK
        found.append(start + np.flatnonzero(x[start:start + CHUNK] == value))
    return np.concatenate(found) if found else np.empty(0, np.int64)
