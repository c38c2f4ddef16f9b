"""Squeeze-excite's channel scale, one-bit DoReFa and a conv's padding, fused.

BinaryFaceNet's SE ends in ``y = x * s`` (one scale per image and channel) and the
next binary conv quantizes y with DoReFa (one bit) and pads it for a strided "same"
convolution. As PyTorch ops a training step writes y, sign(y) and the padded copy
(each 100 MiB at batch 32 on 112x112x64) and walks them again backward. Here the
forward is one pass that reads x and writes the padded +-1 map (with each chunk's min
and max of y for DoReFa's max path); the backward is one pass over x and the padded
map's gradient that writes x's gradient and sums s's per image and channel, with the
DoReFa gradient of y (tanh(y) / max|tanh y|, the path through the max included, ties
split evenly) in between. Same values and gradients as ``pad(DoReFa(x * s))``
(tests/test_train_speed.py).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from binface.nn.numba_util import KERNEL_OPTIONS, set_numba_threads

__all__ = ["scale_sign_pad"]

_fastexp = None  # binface.nn.fastexp, imported with numba by _kernels()


@functools.cache
def _kernels():
    from numba import njit, prange

    global _fastexp  # a module global, so that the kernels stay cacheable
    from binface.nn import fastexp as _fastexp

    # x (N, H, W, C) and the padded map (N, Hp, Wp, C), channels-last; one chunk per
    # image row
    @njit(**KERNEL_OPTIONS)
    def forward(x, s, qp, top, left, lo, hi):
        n, h, w, c = x.shape
        for r in prange(n * h):
            i, y = r // h, r % h
            mn = np.full(c, np.inf, np.float32)
            mx = np.full(c, -np.inf, np.float32)
            for xx in range(w):
                for ch in range(c):
                    v = x[i, y, xx, ch] * s[i, ch]
                    qp[i, y + top, xx + left, ch] = np.float32(1.0) if v > 0 \
                        else np.float32(-1.0)
                    mn[ch] = min(mn[ch], v)
                    mx[ch] = max(mx[ch], v)
            lo[r] = mn.min()
            hi[r] = mx.max()

    @njit(**KERNEL_OPTIONS)
    def backward(x, s, gqp, top, left, scale, gx, gs_part, sums):
        # gs_part (N*H, C): sum over the row of gy x; sums (N*H, 2): sum gq sig, sum gq
        n, h, w, c = x.shape
        for r in prange(n * h):
            i, y = r // h, r % h
            acc = np.zeros(c, np.float64)
            a_s = 0.0
            a_g = 0.0
            for xx in range(w):
                for ch in range(c):
                    xv = x[i, y, xx, ch]
                    v = xv * s[i, ch]
                    e = _fastexp.exp_neg2x(v)
                    sv = np.float32(1.0) / (np.float32(1.0) + e)
                    g = gqp[i, y + top, xx + left, ch]
                    a_s += np.float64(g * sv)
                    a_g += np.float64(g)
                    gy = g * (e * sv * sv) * scale
                    gx[i, y, xx, ch] = gy * s[i, ch]
                    acc[ch] += np.float64(gy * xv)
            gs_part[r] = acc
            sums[r, 0] = a_s
            sums[r, 1] = a_g

    return forward, backward


def _nhwc(t: torch.Tensor, detach: bool = True) -> np.ndarray:
    """A map as (N, H, W, C) numpy in channels-last memory order. A gradient is not
    detached: one that requires grad (a double backward) raises here instead of giving
    a wrong second derivative."""
    t = t.detach() if detach else t
    return t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).numpy()


class _ScaleSignPadFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, pads):
        top, bottom, left, right = pads
        n, c, h, w = x.shape
        qp = torch.empty((n, c, h + top + bottom, w + left + right),
                         memory_format=torch.channels_last)
        for rows in (slice(0, top), slice(top + h, None)):  # the border only: zeros
            qp[:, :, rows].zero_()
        for cols in (slice(0, left), slice(left + w, None)):
            qp[:, :, :, cols].zero_()
        s2 = s.detach().reshape(n, c).contiguous().numpy()
        lo, hi = np.empty(n * h, np.float32), np.empty(n * h, np.float32)
        fwd, _ = _kernels()
        set_numba_threads()
        fwd(_nhwc(x), s2, _nhwc(qp), top, left, lo, hi)
        ctx.save_for_backward(x, s)
        ctx.pads, ctx.parts = pads, (lo, hi)
        return qp

    @staticmethod
    def backward(ctx, gqp):
        x, s = ctx.saved_tensors
        top, _, left, _ = ctx.pads
        n, c, h, w = x.shape
        lo, hi = ctx.parts
        vmin, vmax = float(lo.min()), float(hi.max())
        m = float(torch.tanh(torch.tensor(max(vmax, -vmin), dtype=torch.float32)))
        s2 = s.detach().reshape(n, c).contiguous().numpy()
        xs = _nhwc(x)
        gx = torch.empty((n, c, h, w), memory_format=torch.channels_last)
        gxs = gx.permute(0, 2, 3, 1).numpy()
        gs_part = np.empty((n * h, c), np.float64)
        sums = np.empty((n * h, 2), np.float64)
        _, bwd = _kernels()
        set_numba_threads()
        bwd(xs, s2, _nhwc(gqp, detach=False), top, left, np.float32(4.0 / m), gxs, gs_part,
            sums)
        gs = gs_part.reshape(n, h, c).sum(axis=1)  # (N, C)
        gt = 2.0 * sums[:, 0].sum() - sums[:, 1].sum()  # sum(gq tanh y)
        if m != 1.0 and np.isfinite(gt):
            dm = -gt / (m * m)
            rows = [r for r in range(n * h) if lo[r] == vmin and -vmin >= vmax
                    or hi[r] == vmax and vmax >= -vmin]
            found = []
            for r in rows:  # the elements of y at max |y|, in the rows that hold it
                i, y = r // h, r % h
                v = xs[i, y] * s2[i]  # (W, C), as the kernel computed it
                hit = np.zeros(v.shape, bool)
                if vmax >= -vmin:
                    hit |= v == vmax
                if -vmin >= vmax:
                    hit |= v == vmin
                found += [(i, y, xx, ch) for xx, ch in zip(*np.nonzero(hit), strict=True)]
            for i, y, xx, ch in found:
                v = float(xs[i, y, xx, ch]) * float(s2[i, ch])
                d = float(np.sign(v)) * (1.0 - m * m) * dm / len(found)
                gxs[i, y, xx, ch] += np.float32(d * float(s2[i, ch]))
                gs[i, ch] += d * float(xs[i, y, xx, ch])
        return gx, torch.from_numpy(gs.astype(np.float32)).reshape(s.shape), None


def scale_sign_pad(x: torch.Tensor, s: torch.Tensor, pads: tuple[int, int, int, int]
                   ) -> torch.Tensor:
    """``F.pad(DoReFa(k=1, "weights")(x * s), (left, right, top, bottom), value=0)`` in
    one pass (``pads`` = (top, bottom, left, right)); x a float32 CPU map, s of shape
    (N, C, 1, 1). Training only: the value is also correct without autograd, but then
    the modules are cheaper."""
    return _ScaleSignPadFn.apply(x, s, tuple(int(p) for p in pads))
