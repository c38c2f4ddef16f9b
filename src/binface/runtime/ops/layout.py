"""Memory layout helpers shared by the engine's ops and the lowering (numpy only).

Values are numpy arrays in PyTorch's logical layout (NCHW, tokens ...); 4-D
activations made by the engine's kernels are channels-last in memory (a
transposed view), which is what the conv and packing kernels read without a copy,
while numpy ops see the logical shape. Packed binary activations are uint64 words
``[N, H + halo, W + halo, words]`` (see ``kernels.py`` and docs/packed-format.md).
"""

from __future__ import annotations

import numpy as np

_F32 = np.float32
_DUMMY_F4 = np.zeros((1, 1, 1, 1), _F32)
_DUMMY_U4 = np.zeros((1, 1, 1, 1), np.uint64)
_DUMMY_I4 = np.zeros((1, 1, 1, 1), np.int32)
_DUMMY_F2 = np.zeros((1, 1), _F32)
_DUMMY_EP = np.zeros((6, 1), _F32)
_NO_BIAS = np.zeros(0, _F32)  # a dense product without bias


ALIGN = 64  # bytes: a cache line, and one 512-bit vector


def aligned_empty(shape, dtype, zero: bool = False) -> np.ndarray:
    """A C-contiguous array whose data starts on an ALIGN-byte boundary (numpy only
    promises 16): the kernels' vector loads of weights and maps then never straddle
    two cache lines (one thread: QuickNet 1.02-1.03x, BinaryFaceNet 1.03-1.08x in two
    probes)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = (np.zeros if zero else np.empty)(n + ALIGN, np.uint8)
    at = -raw.ctypes.data % ALIGN
    return raw[at:at + n].view(dtype).reshape(shape)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    """``a`` as an aligned (:func:`aligned_empty`), native-order, writable copy."""
    out = aligned_empty(a.shape, a.dtype.newbyteorder("="))
    out[...] = a
    return out


def pack_bits(neg: np.ndarray) -> np.ndarray:
    """Bool array [..., C] (True = -1) -> uint64 words [..., ceil(C / 64)], bit i = channel i."""
    c = neg.shape[-1]
    words = (c + 63) // 64
    padded = np.zeros(neg.shape[:-1] + (words * 64,), bool)
    padded[..., :c] = neg
    by = np.packbits(padded.reshape(neg.shape[:-1] + (words, 64)), axis=-1, bitorder="little")
    return np.ascontiguousarray(by).view("<u8")[..., 0].astype(np.uint64)


def resolve(dims: list, n: int) -> tuple[int, ...]:
    """Concrete shape for batch size ``n`` (a dim is an int or [a, b] = a * n + b)."""
    return tuple(d[0] * n + d[1] if isinstance(d, list) else int(d) for d in dims)


def nhwc(x: np.ndarray) -> np.ndarray:
    """The channels-last, C-contiguous float32 array of a logical NCHW array (no copy if it is)."""
    v = x.transpose(0, 2, 3, 1)
    if v.dtype != _F32 or not v.flags.c_contiguous:
        v = np.ascontiguousarray(v, dtype=_F32)
    return v


def as_nchw(y: np.ndarray) -> np.ndarray:
    """The logical NCHW view of a channels-last array."""
    return y.transpose(0, 3, 1, 2)


def _strided(a: np.ndarray, shape: tuple, strides: tuple, writeable: bool) -> np.ndarray:
    return np.lib.stride_tricks.as_strided(a, shape, strides, writeable=writeable)


def rows3(y: np.ndarray, *xs: np.ndarray) -> list[np.ndarray] | None:
    """3-D views ``[y3, x3, ...]`` of an output ``y`` and inputs that broadcast to its
    shape, over the same elements in the same order (the row kernels' operands):
    dims in ``y``'s memory order, outermost first, merged where every operand allows;
    broadcast dims get stride 0; the inputs' views are read-only. None when more than
    three dims remain after merging."""
    shape = y.shape
    arrs = [y, *xs]
    strides = []
    for a in arrs:
        if a.ndim > len(shape):
            return None
        lead = len(shape) - a.ndim
        st = [0] * lead + [a.strides[i] if a.shape[i] != 1 else 0 for i in range(a.ndim)]
        if any(a.shape[i] not in (1, shape[lead + i]) for i in range(a.ndim)):
            return None
        strides.append(st)
    dims = sorted((d for d in range(len(shape)) if shape[d] != 1),
                  key=lambda d: -abs(y.strides[d]))
    groups: list[list[int]] = []
    for d in dims:
        if groups:
            p = groups[-1][-1]
            if all(st[p] == st[d] * shape[d] for st in strides):
                groups[-1].append(d)
                continue
        groups.append([d])
    if len(groups) > 3:
        return None
    groups = [[]] * (3 - len(groups)) + groups
    dims3 = tuple(int(np.prod([shape[d] for d in g], dtype=np.int64)) for g in groups)
    out = []
    for i, (a, st) in enumerate(zip(arrs, strides, strict=True)):
        st3 = tuple(st[g[-1]] if g else 0 for g in groups)
        out.append(_strided(a, dims3, st3, writeable=i == 0))
    return out


def like(ref: np.ndarray, shape: tuple) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(memory shape, axes) to lay out an array of logical ``shape`` (``ref``'s ndim)
    in ``ref``'s memory order, as numpy lays out an element-wise result: allocate
    ``memory shape`` C-contiguous; its ``.transpose(axes)`` is the logical view."""
    order = sorted(range(len(shape)), key=lambda d: -abs(ref.strides[d]))
    mem = tuple(shape[d] for d in order)
    return mem, tuple(int(i) for i in np.argsort(order))
