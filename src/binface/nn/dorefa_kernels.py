"""One-pass numba kernels for DoReFa's one-bit weights mode on large activation maps.

BinaryFaceNet quantizes its inputs with DoReFa (k = 1, weights mode) on maps of up to
112x112x64 per image, and with PyTorch ops each call walks the map many times: a min /
max pass and three sign passes forward; a sigmoid, two dot products, the sigmoid
backward, a scale and a comparison pass for the elements at the max backward. Here

- the forward is one pass: the +-1 values and each chunk's min and max;
- the backward is one pass over x and g that writes the input gradient and sums g s and
  g on the way, in float64, with s = sigmoid(2x) from ``binface.nn.fastexp`` (numba
  has no vector math library here); s (1 - s) is formed as e s^2 with e = exp(-2x),
  which does not cancel where s is near 1. (It replaced PyTorch's sigmoid of 2x and a
  pass over its buffer: two full-size passes less per map.) The elements at max |x|
  (for the path through the max, ties split evenly) are looked for only in the chunks
  whose min or max is the global one, which the forward kept.

The formulas are ``_DoReFa1Fn``'s (``binface.nn.quantizers``); tests compare both with a
plain autograd reference (tests/test_train_speed.py).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from binface.nn.numba_util import KERNEL_OPTIONS, set_numba_threads

__all__ = ["at_extreme", "backward_from_x", "extreme_indices", "forward"]

# elements per chunk: large enough to amortise the per-chunk work, small enough that the
# chunks holding the max are a small part of the map
CHUNK = 1 << 15
_fastexp = None  # binface.nn.fastexp, imported with numba by _kernels()


@functools.cache
def _kernels():
    """The numba kernels, compiled (or loaded from cache) on first use."""
    from numba import njit, prange

    global _fastexp  # a module global, so that the kernels stay cacheable
    from binface.nn import fastexp as _fastexp

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
    def bwd_x(g, x, out, scale, gs_part, g_part):
        n = g.shape[0]
        chunks = gs_part.shape[0]
        for b in prange(chunks):
            start = b * CHUNK
            stop = min(n, start + CHUNK)
            gs = 0.0
            gsum = 0.0
            for i in range(start, stop):
                e = _fastexp.exp_neg2x(x[i])
                sv = np.float32(1.0) / (np.float32(1.0) + e)  # sigmoid(2x)
                gv = g[i]
                gs += np.float64(gv * sv)
                gsum += np.float64(gv)
                out[i] = gv * (e * sv * sv) * scale
            gs_part[b] = gs
            g_part[b] = gsum

    return fwd, bwd_x


def _chunks(numel: int) -> int:
    return -(-numel // CHUNK)


def forward(flat_x: torch.Tensor, flat_out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Write sign(x) (sign(0) = -1) into ``flat_out``; return each chunk's (min, max)."""
    fwd = _kernels()[0]
    set_numba_threads()
    chunks = _chunks(flat_x.numel())
    lo, hi = np.empty(chunks, np.float32), np.empty(chunks, np.float32)
    fwd(flat_x.numpy(), flat_out.numpy(), lo, hi)
    return lo, hi


def backward_from_x(flat_g: torch.Tensor, flat_x: torch.Tensor, flat_out: torch.Tensor,
                    scale: float) -> tuple[float, float]:
    """Write g s (1 - s) ``scale`` into ``flat_out``, s = sigmoid(2x); return sum(g s) and
    sum(g), each summed in float64 (one pass, no sigmoid buffer)."""
    bwd_x = _kernels()[1]
    set_numba_threads()
    chunks = _chunks(flat_g.numel())
    gs, gsum = np.empty(chunks, np.float64), np.empty(chunks, np.float64)
    bwd_x(flat_g.numpy(), flat_x.numpy(), flat_out.numpy(), np.float32(scale), gs, gsum)
    return float(gs.sum()), float(gsum.sum())


def at_extreme(flat_x: torch.Tensor, part: np.ndarray, value: float,
               chunk: int = CHUNK) -> np.ndarray:
    """Indices of the elements equal to ``value`` (a global min or max), looked for only in
    the chunks (of ``chunk`` elements) whose ``part`` (their min or max) is that value."""
    x = flat_x.numpy()
    found = []
    for b in np.flatnonzero(part == value):
        start = int(b) * chunk
        found.append(start + np.flatnonzero(x[start:start + chunk] == value))
    return np.concatenate(found) if found else np.empty(0, np.int64)


def extreme_indices(flat_x: torch.Tensor, lo_part: np.ndarray, hi_part: np.ndarray,
                    lo: float, hi: float, chunk: int = CHUNK) -> np.ndarray:
    """Sorted indices of the elements at max |x|: equal to ``hi`` where hi >= -lo, to
    ``lo`` where -lo >= hi (both sides on a tie), looked for only in the chunks whose
    min or max (``lo_part``, ``hi_part``) is that value."""
    idx = []
    if hi >= -lo:
        idx.append(at_extreme(flat_x, hi_part, hi, chunk))
    if -lo >= hi:
        idx.append(at_extreme(flat_x, lo_part, lo, chunk))
    return np.unique(np.concatenate(idx)) if idx else np.empty(0, np.int64)  # NaN: none
