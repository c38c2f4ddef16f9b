"""PReLU with a one-pass backward: the drop-in ``nn.PReLU`` of binface's models.

PyTorch's PReLU backward (``_prelu_kernel_backward``) writes a full-size weight
gradient and then reduces it over batch and space: two full-size outputs and a
strided reduction per call, about ten times the forward's cost on a 112x112x64 map.
In BinaryFaceNet (23 PReLUs on large maps) that was a tenth of a training step. Here
the backward is one numba pass over (gradient, input): it writes the input gradient
and accumulates the per-channel slope gradient in registers.

The fast path takes the layouts a network produces (contiguous NCHW, channels-last)
with a gradient of the same layout; anything else (stride-0 gradients, other ranks,
float64) takes PyTorch's own backward. Without autograd (inference, export) the
forward is ``F.prelu``, so exporters see the usual ``prelu`` op.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from binface.nn import autodiff
from binface.nn.numba_util import KERNEL_OPTIONS, kernel_view, layout_4d, set_numba_threads

__all__ = ["PReLU"]


@functools.cache
def _kernels():
    """The numba kernels, compiled (or loaded from cache) on the first backward."""
    from numba import njit, prange

    @njit(**KERNEL_OPTIONS)
    def nchw(g, x, a, gi, ga_part):  # (N, C, L) views; ga_part: (N, C)
        n, c, length = x.shape
        for k in prange(n * c):
            i, j = k // c, k % c
            slope = a[j]
            acc = np.float32(0.0)
            for p in range(length):
                xv = x[i, j, p]
                gv = g[i, j, p]
                if xv > 0:
                    gi[i, j, p] = gv
                else:
                    gi[i, j, p] = slope * gv
                    acc += gv * xv
            ga_part[i, j] = acc

    @njit(**KERNEL_OPTIONS)
    def nhwc(g, x, a, gi, ga_part):  # (R, C) views; ga_part: (chunks, C)
        rows, c = x.shape
        chunks = ga_part.shape[0]
        step = (rows + chunks - 1) // chunks
        for b in prange(chunks):
            acc = np.zeros(c, dtype=np.float32)
            for r in range(b * step, min(rows, (b + 1) * step)):
                for j in range(c):
                    xv = x[r, j]
                    gv = g[r, j]
                    if xv > 0:
                        gi[r, j] = gv
                    else:
                        gi[r, j] = a[j] * gv
                        acc[j] += gv * xv
            ga_part[b, :] = acc

    return nchw, nhwc


class _PReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.prelu(x, weight)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, weight = ctx.saved_tensors
        layout = layout_4d(x)
        channels = x.shape[1] if x.dim() > 1 else 1
        if (layout is None or layout_4d(g) != layout or weight.numel() not in (1, channels)
                or weight.dtype != torch.float32):
            with torch.enable_grad():  # PyTorch's own backward for the rare layouts
                xd = x.detach().requires_grad_(True)
                wd = weight.detach().requires_grad_(True)
                gx, gw = torch.autograd.grad(F.prelu(xd, wd), (xd, wd), g)
            return gx, gw
        nchw, nhwc = _kernels()
        set_numba_threads()
        gi = torch.empty_like(x)
        n, c, h, w = x.shape
        a = np.ascontiguousarray(np.broadcast_to(weight.detach().numpy().reshape(-1), (c,)))
        views = [kernel_view(t, layout) for t in (g, x.detach(), gi)]
        if layout == "nchw":
            part = np.empty((n, c), dtype=np.float32)
            nchw(views[0], views[1], a, views[2], part)
        else:  # channels-last: rows of C in memory order
            part = np.empty((max(1, min(64, n * h * w // 256)), c), dtype=np.float32)
            gr, xr, gir = (v.reshape(-1, c) for v in views)
            nhwc(gr, xr, a, gir, part)
        gw = part.sum(axis=0, dtype=np.float64)
        if weight.numel() == 1:
            gw = gw.sum(keepdims=True)
        return gi, torch.from_numpy(gw.astype(np.float32)).view(weight.shape)


class PReLU(nn.PReLU):
    """``nn.PReLU`` (same parameters, state dict and forward value) with the one-pass
    backward of this module's docstring."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
                and x.dtype == self.weight.dtype  # autocast (bf16 x): PyTorch's own path
                and not autodiff.enabled()):
            return _PReLUFn.apply(x, self.weight)
        return F.prelu(x, self.weight)
