"""``x * s`` for a per-(image, channel) scale s (squeeze-excite), with a one-pass backward.

PyTorch's backward of a broadcast product writes ``g * x`` at full size and then sums it
over space for the scale's gradient, and computes ``g * s`` in a second pass: on
BinaryFaceNet's 112x112x64 squeeze-excite input that was about a tenth of a training
step on 2 cores. Here one numba pass over (g, x) writes the input gradient and sums
the scale's gradient per (image, channel) in float64 registers.

The fast path takes float32 maps in the layouts a network produces (contiguous NCHW,
channels-last) with a gradient of the same layout and a scale of shape (N, C, 1, 1);
anything else takes PyTorch's own product. Without autograd it is ``x * s``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from binface.nn import autodiff
from binface.nn.numba_util import KERNEL_OPTIONS, kernel_view, layout_4d, set_numba_threads

__all__ = ["channel_scale"]


@functools.cache
def _kernels():
    from numba import njit, prange

    @njit(**KERNEL_OPTIONS)
    def nchw(g, x, s, gx, gs):  # (N, C, L) views; s, gs: (N, C)
        n, c, length = x.shape
        for k in prange(n * c):
            i, j = k // c, k % c
            sv = s[i, j]
            acc = 0.0
            for p in range(length):
                gv = g[i, j, p]
                acc += np.float64(gv * x[i, j, p])
                gx[i, j, p] = gv * sv
            gs[i, j] = acc

    @njit(**KERNEL_OPTIONS)
    def nhwc(g, x, s, gx, gs):  # (N, L, C) views; s, gs: (N, C)
        n, length, c = x.shape
        for i in prange(n):
            acc = np.zeros(c, dtype=np.float64)
            for p in range(length):
                for j in range(c):
                    gv = g[i, p, j]
                    acc[j] += np.float64(gv * x[i, p, j])
                    gx[i, p, j] = gv * s[i, j]
            gs[i, :] = acc

    return nchw, nhwc


class _ChannelScaleFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, s = ctx.saved_tensors
        layout = layout_4d(x)
        if layout is None or layout_4d(g) != layout:  # PyTorch's own backward
            gs = (g * x).sum(dim=(2, 3), keepdim=True) if ctx.needs_input_grad[1] else None
            return g * s, gs
        set_numba_threads()
        nchw, nhwc = _kernels()
        n, c = x.shape[:2]
        gx = torch.empty_like(x)
        sv = np.ascontiguousarray(s.detach().reshape(n, c).numpy())
        gs = np.empty((n, c), dtype=np.float64)
        kernel = nchw if layout == "nchw" else nhwc
        kernel(kernel_view(g, layout), kernel_view(x.detach(), layout), sv,
               kernel_view(gx, layout), gs)
        return gx, torch.from_numpy(gs.astype(np.float32)).view(s.shape)


def channel_scale(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``x * s`` with s of shape (N, C, 1, 1), the one-pass backward when training."""
    if (torch.is_grad_enabled() and (x.requires_grad or s.requires_grad)
            and not autodiff.enabled() and x.dim() == 4 and s.dim() == 4
            and s.shape == (x.shape[0], x.shape[1], 1, 1) and x.dtype == s.dtype
            and s.dtype == torch.float32):
        return _ChannelScaleFn.apply(x, s)
    return x * s
