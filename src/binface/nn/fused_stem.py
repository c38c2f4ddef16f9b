"""A pointwise float stem (1x1 conv, BatchNorm, PReLU) and the sign of its output, fused.

BinaryFaceNet's stem maps the 3-channel face to 112x112x64 with a 1x1 conv, BN and
PReLU, and its SE quantizes that map with DoReFa (one bit) straight away. As separate
PyTorch ops a training step walks the 100 MiB map (batch 32) about fifteen times:
conv, BN (two passes), PReLU, DoReFa forward; their backwards. Here the forward is two
passes that read only the 3-channel input (channel statistics; then x and sign(x),
with each chunk's min and max for DoReFa's max path), and the backward one pass over
the incoming gradients that recomputes x from the input instead of reading saved maps
(3 MACs per output value is cheaper than a 100 MiB read) and sums what BN's, the
slope's and the conv's weight gradients need. An input that needs a gradient of its
own (not a training step) takes the modules.

Same values and gradients as ``PReLU(BN(conv(x)))`` followed by ``DoReFa(k=1,
"weights")`` (``binface.nn.quantizers._DoReFa1Fn``: the gradient of tanh(x) / max|tanh
x| with the path through the max, ties split evenly), including BatchNorm's running
statistics; tests/test_train_speed.py compares both. The channel statistics are summed
in float64. Used in training only (autograd on, float32 CPU, channels-last input);
anything else takes the modules one by one.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from binface.nn import autodiff
from binface.nn.numba_util import KERNEL_OPTIONS, set_numba_threads

__all__ = ["can_fuse", "pointwise_stem"]

PIXELS = 1 << 10  # pixels per chunk (x 64 channels: one DoReFa min/max chunk each)


_fastexp = None  # binface.nn.fastexp, imported with numba by _kernels()


def _pixels(t: torch.Tensor, c: int) -> np.ndarray:
    """A 4-D map as (pixels, channels) in channels-last memory order (a copy only when
    it is not channels-last already). Not detached: a gradient that requires grad (a
    double backward, ``create_graph=True``) raises here instead of giving a wrong
    second derivative."""
    t = t.contiguous(memory_format=torch.channels_last)
    return t.permute(0, 2, 3, 1).numpy().reshape(-1, c)


@functools.cache
def _kernels():
    from numba import njit, prange

    global _fastexp  # a module global, so that the kernels stay cacheable
    from binface.nn import fastexp as _fastexp

    # the input has three channels (RGB): each pixel's three values are held in
    # registers and the loops over the output channels vectorise
    @njit(**KERNEL_OPTIONS)
    def stats(img, wt, s1, s2):  # img (P, 3), wt (3, C); s1, s2 (chunks, C) float64
        p_all = img.shape[0]
        c_out = wt.shape[1]
        w0, w1, w2 = wt[0], wt[1], wt[2]
        for b in prange(s1.shape[0]):
            a1 = np.zeros(c_out, np.float64)
            a2 = np.zeros(c_out, np.float64)
            for p in range(b * PIXELS, min(p_all, (b + 1) * PIXELS)):
                i0, i1, i2 = img[p, 0], img[p, 1], img[p, 2]
                for c in range(c_out):
                    z = w0[c] * i0 + w1[c] * i1 + w2[c] * i2
                    a1[c] += z
                    a2[c] += np.float64(z) * z
            s1[b] = a1
            s2[b] = a2

    @njit(**KERNEL_OPTIONS)
    def forward(img, wt, mean, invstd, gamma, beta, a, x, q, lo, hi):
        p_all = img.shape[0]
        c_out = wt.shape[1]
        w0, w1, w2 = wt[0], wt[1], wt[2]
        for b in prange(lo.shape[0]):
            # per-channel min and max: a min over the channel loop would be a reduction
            # that LLVM does not vectorise without a no-NaN promise
            mn = np.full(c_out, np.inf, np.float32)
            mx = np.full(c_out, -np.inf, np.float32)
            for p in range(b * PIXELS, min(p_all, (b + 1) * PIXELS)):
                i0, i1, i2 = img[p, 0], img[p, 1], img[p, 2]
                for c in range(c_out):
                    z = w0[c] * i0 + w1[c] * i1 + w2[c] * i2
                    u = (z - mean[c]) * invstd[c] * gamma[c] + beta[c]
                    v = u if u > 0 else a[c] * u
                    x[p, c] = v
                    q[p, c] = np.float32(1.0) if v > 0 else np.float32(-1.0)
                    mn[c] = min(mn[c], v)
                    mx[c] = max(mx[c], v)
            lo[b] = mn.min()
            hi[b] = mx.max()

    @njit(**KERNEL_OPTIONS)
    def grads(img, wt, mean, invstd, gamma, beta, a, gx, gq, scale, parts):
        # parts (chunks, 11, C) float64: sum du, sum du xh, slope grad, sum gq s, sum gq,
        # then sum du img_k and sum xh img_k for k = 0, 1, 2 (the conv's weight gradient
        # from these sums, without a second pass)
        p_all = img.shape[0]
        c_out = wt.shape[1]
        w0, w1, w2 = wt[0], wt[1], wt[2]
        for b in prange(parts.shape[0]):
            acc = np.zeros((11, c_out), np.float64)
            for p in range(b * PIXELS, min(p_all, (b + 1) * PIXELS)):
                i0, i1, i2 = img[p, 0], img[p, 1], img[p, 2]
                for c in range(c_out):
                    z = w0[c] * i0 + w1[c] * i1 + w2[c] * i2
                    xh = (z - mean[c]) * invstd[c]
                    u = xh * gamma[c] + beta[c]
                    pos = u > 0
                    v = u if pos else a[c] * u
                    e = _fastexp.exp_neg2x(v)
                    sv = np.float32(1.0) / (np.float32(1.0) + e)
                    g2 = gq[p, c]
                    acc[3, c] += g2 * sv
                    acc[4, c] += g2
                    g = gx[p, c] + g2 * (e * sv * sv) * scale
                    du = g if pos else g * a[c]
                    acc[0, c] += du
                    acc[1, c] += du * xh
                    acc[2, c] += np.float32(0.0) if pos else g * u
                    acc[5, c] += du * i0
                    acc[6, c] += du * i1
                    acc[7, c] += du * i2
                    acc[8, c] += xh * i0
                    acc[9, c] += xh * i1
                    acc[10, c] += xh * i2
            parts[b] = acc

    return stats, forward, grads


def can_fuse(x: torch.Tensor, conv: nn.Module, bn: nn.Module, act: nn.Module) -> bool:
    """Whether :func:`pointwise_stem` applies: training with autograd on (not the
    twice-differentiable mode), a float32 CPU channels-last RGB input that needs no
    gradient of its own, a
    1x1 stride-1 conv without bias, a BatchNorm on batch statistics with running ones,
    and a per-channel PReLU."""
    return (torch.is_grad_enabled() and not autodiff.enabled() and bn.training
            and not torch.is_autocast_enabled("cpu")  # bf16 autocast: the modules
            and not x.requires_grad  # the image's own gradient: the modules
            and x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4
            and x.shape[1] == 3 and x.is_contiguous(memory_format=torch.channels_last)
            and x.shape[0] * x.shape[2] * x.shape[3] > 1
            and isinstance(conv, nn.Conv2d) and conv.bias is None
            and conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1
            and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1)
            and conv.weight.dtype == torch.float32
            and isinstance(bn, nn.BatchNorm2d) and bn.affine and bn.track_running_stats
            and bn.running_mean is not None
            and isinstance(act, nn.PReLU) and act.weight.numel() == conv.out_channels)


class _StemFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, img, w, gamma, beta, a, mean, invstd):
        n, k, h, wd = img.shape
        c = w.shape[0]
        img2 = img.permute(0, 2, 3, 1).reshape(-1, k)  # a view: channels-last
        chunks = -(-img2.shape[0] // PIXELS)
        x = torch.empty((n, c, h, wd), memory_format=torch.channels_last)
        q = torch.empty_like(x)
        lo, hi = np.empty(chunks, np.float32), np.empty(chunks, np.float32)
        _, fwd, _ = _kernels()
        set_numba_threads()
        fwd(img2.numpy(), w.reshape(c, k).t().contiguous().numpy(), mean.numpy(),
            invstd.numpy(),
            gamma.detach().numpy(), beta.detach().numpy(), a.detach().numpy(),
            _pixels(x, c), _pixels(q, c), lo, hi)
        ctx.save_for_backward(img, w, gamma, beta, a, mean, invstd, x)
        ctx.parts = (lo, hi)
        return x, q

    @staticmethod
    def backward(ctx, gx, gq):
        img, w, gamma, beta, a, mean, invstd, x = ctx.saved_tensors
        n, k, h, wd = img.shape
        c = w.shape[0]
        lo, hi = ctx.parts
        vmin, vmax = float(lo.min()), float(hi.max())
        amax = max(vmax, -vmin)
        m = float(torch.tanh(torch.tensor(amax, dtype=torch.float32)))
        gx = torch.zeros_like(x) if gx is None else gx  # an output the loss did not use
        gq = torch.zeros_like(x) if gq is None else gq
        img2 = img.detach().permute(0, 2, 3, 1).reshape(-1, k).numpy()
        w2 = w.detach().reshape(c, k).numpy()
        args = (img2, np.ascontiguousarray(w2.T), mean.numpy(), invstd.numpy(),
                gamma.detach().numpy(), beta.detach().numpy(), a.detach().numpy(),
                _pixels(gx, c), _pixels(gq, c), np.float32(4.0 / m))
        _, _, grads = _kernels()
        set_numba_threads()
        chunks = -(-img2.shape[0] // PIXELS)
        parts = np.empty((chunks, 11, c), np.float64)
        grads(*args, parts)
        sums = parts.sum(axis=0)  # (11, C)
        # the path through max|tanh x|: sum(gq tanh x) = 2 sum(gq s) - sum(gq)
        extra = []  # (pixel, channel, dgx) of the elements at the max
        gt = 2.0 * sums[3].sum() - sums[4].sum()
        if m != 1.0 and np.isfinite(gt):
            dm = -gt / (m * m)
            from binface.nn.dorefa_kernels import extreme_indices

            flat_x = x.detach().permute(0, 2, 3, 1).reshape(-1)  # memory order
            xs = flat_x.numpy()
            # the forward's chunks are PIXELS pixels of c channels
            where = extreme_indices(flat_x, lo, hi, vmin, vmax, PIXELS * c)
            for i in where:
                delta = float(np.sign(xs[i])) * (1.0 - m * m) * dm / where.size
                extra.append((int(i) // c, int(i) % c, delta))
        ga = sums[2].copy()
        for p, ch, delta in extra:  # recompute u, xh there and fold the extra gradient in
            z = float(np.float32(sum(np.float32(w2[ch, kk] * img2[p, kk])
                                     for kk in range(k))))
            xh = (z - float(mean[ch])) * float(invstd[ch])
            u = xh * float(gamma[ch]) + float(beta[ch])
            du = delta if u > 0 else delta * float(a[ch])
            sums[0, ch] += du
            sums[1, ch] += du * xh
            if u <= 0:
                ga[ch] += delta * u
            sums[5:8, ch] += du * img2[p].astype(np.float64)
        count = img2.shape[0]
        # dW = gamma invstd (sum du img - mean(du) sum img - mean(du xh) sum xh img)
        s_img = img2.astype(np.float64).sum(axis=0)  # (3,)
        k1 = gamma.detach().numpy().astype(np.float64) * invstd.numpy().astype(np.float64)
        gw = k1[:, None] * (sums[5:8].T - np.outer(sums[0] / count, s_img)
                            - (sums[1] / count)[:, None] * sums[8:11].T)
        g_w = torch.from_numpy(gw.astype(np.float32)).reshape(w.shape)
        return (None, g_w, torch.from_numpy(sums[1].astype(np.float32)),
                torch.from_numpy(sums[0].astype(np.float32)),
                torch.from_numpy(ga.astype(np.float32)).reshape(a.shape), None, None)


def pointwise_stem(img: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: nn.PReLU
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``x = act(bn(conv(img)))`` and ``DoReFa(k=1, "weights")(x)``, fused (see the module
    docstring); BatchNorm's running statistics are updated as its forward would."""
    c, k = conv.out_channels, conv.in_channels
    stats = _kernels()[0]
    set_numba_threads()
    img2 = img.detach().permute(0, 2, 3, 1).reshape(-1, k)
    chunks = -(-img2.shape[0] // PIXELS)
    s1, s2 = np.empty((chunks, c), np.float64), np.empty((chunks, c), np.float64)
    w2 = conv.weight.detach().reshape(c, k).contiguous()
    stats(img2.numpy(), w2.t().contiguous().numpy(), s1, s2)
    count = img2.shape[0]
    mean64 = s1.sum(axis=0) / count
    var64 = np.maximum(s2.sum(axis=0) / count - mean64 * mean64, 0.0)
    mean = torch.from_numpy(mean64.astype(np.float32))
    invstd = torch.from_numpy((1.0 / np.sqrt(var64 + bn.eps)).astype(np.float32))
    with torch.no_grad():  # running statistics, as nn.BatchNorm2d.forward updates them
        bn.num_batches_tracked.add_(1)
        f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        bn.running_mean.mul_(1 - f).add_(torch.from_numpy(mean64).to(bn.running_mean), alpha=f)
        unbiased = torch.from_numpy(var64 * count / max(count - 1, 1)).to(bn.running_var)
        bn.running_var.mul_(1 - f).add_(unbiased, alpha=f)
    return _StemFn.apply(img, conv.weight, bn.weight, bn.bias, act.weight, mean, invstd)
