"""The engine's binary ops on packed signs: ``pack``, ``bconv``, ``bdwconv``, ``bmaxpool``.

Each op prepares its numba kernel's ``cfg`` at load and calls one kernel per run
(``kernels.py``); the formats of their tensors are in docs/packed-format.md.
"""

from __future__ import annotations

import math

import numpy as np

from binface.runtime import kernels as K
from binface.runtime.ops.base import (
    _U64,
    MAX_MACS,
    Op,
    _ConvLike,
    check_pack_attrs,
    conv_out,
)
from binface.runtime.ops.layout import (
    _DUMMY_EP,
    _DUMMY_F2,
    _DUMMY_I4,
    _F32,
    aligned_copy,
    as_nchw,
    nhwc,
    pack_bits,
    resolve,
)

_DUMMY_U3 = np.zeros((1, 1, 1), np.uint64)  # no re-laid weights: the kernels' other loops
_DUMMY_U4W = np.zeros((1, 1, 1, 1), np.uint64)


class PackOp(Op):
    """Signs of a float tensor into packed words, with the consumer's halo."""

    n_inputs = (1, 2)
    n_main_inputs = 2  # the map and its gate: a replay checks both

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        a = self.attrs
        mode, self.groups, self.cg, self.pads = check_pack_attrs(self, a)
        self.wpg = (self.cg + 63) // 64
        self.channels = self.groups * self.cg
        self.linear = bool(a.get("linear", False))
        self.gate = len(self.inputs) > 1
        self.affine = a.get("scale") is not None
        ep = _DUMMY_EP
        if self.affine:
            scale, shift = self.t("scale"), self.t("shift")
            if shift is None or scale.size != self.channels or shift.size != self.channels:
                raise self.bad(f"scale / shift must hold {self.channels} values each")
            ep = np.zeros((6, self.channels), _F32)
            ep[0], ep[1] = scale.reshape(-1), shift.reshape(-1)
        self.ep = ep
        self.cfg = np.array([mode, self.groups, self.cg, self.wpg, self.pads[0], self.pads[2],
                             int(self.gate), int(self.affine), 0], np.int64)

    def __call__(self, env, ctx) -> None:
        if self.replayed(env, ctx):
            return
        x = env[self.inputs[0]]
        cfg = self.cfg
        if self.linear:
            xn = np.ascontiguousarray(x.reshape(-1, 1, 1, x.shape[-1]), dtype=_F32)
        elif self.inputs[0] in ctx.bases:  # a view of a concatenation buffer: no copy
            xn, nch = ctx.bases[self.inputs[0]]
            cfg = cfg.copy()
            cfg[8] = nch
        else:
            xn = nhwc(x)
        m, h, w, c = xn.shape
        if (cfg[8] or c) != self.channels or cfg[8] > c:
            raise self.mismatch(x, f"{self.channels} channels")
        t, b, l, r = self.pads
        shape = (m, h + t + b, w + l + r, self.groups * self.wpg)
        self.room(ctx, shape, 8)
        out = self.buffer(ctx, "q", shape, np.uint64, True)
        gate = _DUMMY_F2
        if self.gate:
            g = env[self.inputs[1]]
            gate = np.ascontiguousarray(g.reshape(g.shape[0], -1), dtype=_F32)
            if gate.shape != (m, self.channels):
                raise self.bad(f"gate {self.inputs[1]!r} has shape {list(g.shape)}, not "
                               f"({m}, {self.channels}, ...)")
        calls = [(ctx.k.pack_nhwc, (xn, gate, self.ep, out, cfg, ctx.nt))]
        self.issue(calls)
        env[self.outputs[0]] = out
        self.remember(env, ctx, calls, (xn, gate) if self.gate else (xn,))
        if ctx.trace:
            f = x.astype(_F32)
            if self.affine:
                shape = (1, -1) + (1,) * (f.ndim - 2) if not self.linear else (-1,)
                f = f * self.ep[0].reshape(shape) + self.ep[1].reshape(shape)
            if self.gate:
                f = f * env[self.inputs[1]]
            ctx.floats[self.outputs[0]] = f


def _window_attrs(op: Op) -> tuple[list[int], list[int], list[int], list[int], list[int],
                                  list[int]]:
    """``kernel, stride, dilation, in_hw, pads, out_hw`` of a conv, checked against each other.

    ``out_hw`` must be what PyTorch computes from the others: the kernels read the
    input (and its halo) at every position that implies, without bounds checks.
    """
    kernel = op.ints_attr("kernel", 2, 1)
    stride = op.ints_attr("stride", 2, 1)
    dilation = op.ints_attr("dilation", 2, 1)
    in_hw = op.ints_attr("in_hw", 2, 1)
    pads = op.ints_attr("pads", 4)
    out_hw = op.ints_attr("out_hw", 2, 1)
    want = [conv_out(in_hw[0], pads[0], pads[1], kernel[0], stride[0], dilation[0]),
            conv_out(in_hw[1], pads[2], pads[3], kernel[1], stride[1], dilation[1])]
    if out_hw != want:
        raise op.bad(f"out_hw {out_hw} does not follow from in_hw {in_hw}, pads {pads}, "
                     f"kernel {kernel}, stride {stride} and dilation {dilation} ({want})")
    return kernel, stride, dilation, in_hw, pads, out_hw


class _PackedConv(_ConvLike):
    """A binary layer on packed input: the input guard, outputs, residuals and the trace
    record are shared; subclasses give their kernel calls (``kernel_calls``)."""

    in_shape: tuple
    out_hw: tuple
    nout: int

    def kernel_calls(self, ctx, p, y, acc, q, cfg, r1, r2) -> list[tuple]:  # pragma: no cover
        """The kernel calls of one run, as (function, arguments) pairs."""
        raise NotImplementedError

    def __call__(self, env, ctx) -> None:
        if self.replayed(env, ctx):
            return
        p = env[self.inputs[0]]
        if p.shape[1:] != self.in_shape or p.dtype != _U64 or not p.flags.c_contiguous:
            raise self.mismatch(p, f"uint64[M, {', '.join(map(str, self.in_shape))}]")
        m = p.shape[0]
        ho, wo = self.out_hw
        nout = self.nout
        y, q, cfg = self.alloc_outputs(ctx, m, ho, wo, nout)
        r1, r2 = self.residuals(env, (m, ho, wo, nout))
        acc = _DUMMY_I4
        if ctx.trace:
            acc = np.zeros((m, ho, wo, nout), np.int32)
            cfg = cfg.copy()
            cfg[K.EP_OUT_ACC] = 1
        calls = self.kernel_calls(ctx, p, y, acc, q, cfg, r1, r2)
        self.issue(calls)
        self.store(env, ctx, y, q)
        self.remember(env, ctx, calls, (p, r1, r2))
        if ctx.trace:
            ctx.records.append({
                "node": self.name, "op": self.node["op"], "source": self.attrs.get("source"),
                "input": ctx.floats.get(self.inputs[0]), "acc": self.logical(acc, ctx.n),
                "output": ctx.floats.get(self.name + ":y")})


class BConvOp(_PackedConv):
    """Binary conv (or dense, ``linear``) on packed input: xor + popcount, fused epilogue."""

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        self.groups, self.og = self.int_attr("groups", 1), self.int_attr("og", 1)
        self.cg = self.int_attr("cg", 1)
        (self.kernel, self.stride, self.dilation, self.in_hw, self.pads,
         self.out_hw) = _window_attrs(self)
        nout = self.groups * self.og
        self.check_epilogue(nout)
        kh, kw = self.kernel
        ho, wo = self.out_hw
        self.check_size(ho * wo * nout * 4)
        self.corr = self.tensor("corr", np.int32, (self.groups, kh * kw, self.og),
                                required=False)
        wpg = (self.cg + 63) // 64
        self.win = self.int_attr("win", 1, 64, default=1)
        self.wblk_win = _DUMMY_U4W  # window weights re-laid for the blocks (below)
        if self.win > 1:  # T taps per word: weights [kh * chunks, G * Og]
            if self.cg * self.win > 64 or self.dilation != [1, 1]:
                raise self.bad(f"win {self.win} needs cg * win <= 64 and dilation 1")
            nch = -(-kw // self.win)
            self.masks = self.tensor("masks", np.uint64, (nch,))
            self.w = self.tensor("weight", np.uint64, (kh * nch, nout))
            bc = K.BLOCK_CHANNELS
            if self.og % bc == 0:  # per group, the kernel's register blocks
                # masked-off weight bits to 0: the blocks mask only the input words
                wm = self.w & self.masks[np.arange(kh * nch) % nch, None]
                self.wblk_win = aligned_copy(wm.reshape(
                    kh * nch, self.groups, self.og // bc, bc).transpose(1, 2, 0, 3))
        else:
            self.w = self.tensor("weight", np.uint64, (self.groups, kh * kw * wpg, self.og))
        self.wblk = _DUMMY_U3
        if (self.win == 1 and self.groups == 1 and self.dilation == [1, 1]
                and self.og % K.BLOCK_CHANNELS == 0):  # the kernel's register blocks
            bc = K.BLOCK_CHANNELS
            self.wblk = aligned_copy(
                self.w[0].reshape(-1, self.og // bc, bc).transpose(1, 0, 2))
        c = self.cfg
        c[0], c[1], c[2], c[3] = self.in_hw[0], self.in_hw[1], self.pads[0], self.pads[2]
        c[4], c[5] = self.kernel
        c[6], c[7] = self.stride
        c[8], c[9] = self.dilation
        c[10], c[11], c[12], c[13] = self.groups, self.cg, wpg, self.og
        c[14], c[15] = self.out_hw
        c[16] = int(self.corr is not None)
        c[17] = self.win if self.win > 1 else 0
        if self.corr is None:
            self.corr = np.zeros((1, 1, 1), np.int32)
        # the packed input the kernel reads: [M, H + halo, W + halo, G * WPG] words
        self.in_shape = (self.in_hw[0] + self.pads[0] + self.pads[1],
                         self.in_hw[1] + self.pads[2] + self.pads[3], self.groups * wpg)
        rows = 1
        if self.linear:  # a dense layer on tokens runs once per token: (..., T, O)
            r1, r2 = (math.prod(resolve(self.out_shape, n)[:-1]) for n in (1, 2))
            rows = r2 - r1 if r2 > r1 else r1  # rows per sample (traced at batch 1: r1)
        self.macs_per_sample = (rows * ho * wo * nout * kh * kw * self.cg)
        if self.macs_per_sample > MAX_MACS:
            raise self.bad(f"{self.macs_per_sample} MACs per sample exceed the limit")

    def kernel_calls(self, ctx, p, y, acc, q, cfg, r1, r2) -> list[tuple]:
        if self.win > 1:
            pw = self.buffer(ctx, "win", p.shape, np.uint64)
            return [(ctx.k.pack_windows, (p, pw, self.win, self.cg, ctx.nt)),
                    (ctx.k.bconv_win, (pw, self.w, self.wblk_win, self.masks, self.corr,
                                       self.ep, r1, r2, y, acc, q, cfg, ctx.nt))]
        return [(ctx.k.bconv, (p, self.w, self.wblk, self.corr, self.ep, r1, r2, y, acc, q,
                               cfg, ctx.nt))]


class BDwConvOp(_PackedConv):
    """Binary depthwise conv (bit-serial, for small layers)."""

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        kernel, stride, dilation, in_hw, pads, self.out_hw = _window_attrs(self)
        mult = self.int_attr("mult", 1)
        self.wb = self.tensor("weight", np.uint8, ndim=2)
        nout = self.wb.shape[1]
        if self.wb.shape[0] != kernel[0] * kernel[1] or nout % mult or not nout:
            raise self.bad(f"weight shape {self.wb.shape} does not match kernel {kernel} "
                           f"and mult {mult}")
        self.check_epilogue(nout)
        self.check_size(self.out_hw[0] * self.out_hw[1] * nout * 4)
        c = self.cfg
        c[0], c[1], c[2], c[3] = in_hw[0], in_hw[1], pads[0], pads[2]
        c[4], c[5] = kernel
        c[6], c[7] = stride
        c[8], c[9] = dilation
        c[10], c[11] = mult, nout
        c[12], c[13] = self.out_hw
        c[14] = int(self.attrs.get("pad_value", 1.0) == 0.0)
        self.wpk = np.ascontiguousarray(pack_bits(self.wb.astype(bool)))  # [taps, words]
        self.in_shape = (in_hw[0] + pads[0] + pads[1], in_hw[1] + pads[2] + pads[3],
                         (nout // mult + 63) // 64)
        self.macs_per_sample = (self.out_hw[0] * self.out_hw[1] * self.wb.shape[1]
                                * self.wb.shape[0])

    def kernel_calls(self, ctx, p, y, acc, q, cfg, r1, r2) -> list[tuple]:
        return [(ctx.k.bdwconv, (p, self.wb, self.wpk, self.ep, r1, r2, y, acc, q, cfg,
                                 ctx.nt))]


class BMaxPoolOp(Op):
    """Max-pool of signs on packed words."""

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        kernel = self.ints_attr("kernel", 2, 1)
        stride = self.ints_attr("stride", 2, 1)
        pads, in_hw = self.ints_attr("pads", 4), self.ints_attr("in_hw", 2, 1)
        ipads, self.qpads = self.ints_attr("in_pads", 4), self.ints_attr("out_pads", 4)
        self.out_hw = self.ints_attr("out_hw", 2, 1)
        ok = [[conv_out(in_hw[i], pads[2 * i], pads[2 * i + 1], kernel[i], stride[i], 1, c)
               for i in (0, 1)] for c in (False, True)]
        if self.out_hw not in ok:
            raise self.bad(f"out_hw {self.out_hw} does not follow from in_hw {in_hw}, pads "
                           f"{pads}, kernel {kernel} and stride {stride}")
        self.in_hw = (in_hw[0] + ipads[0] + ipads[1], in_hw[1] + ipads[2] + ipads[3])
        self.cfg = np.array([in_hw[0], in_hw[1], ipads[0], ipads[2], kernel[0], kernel[1],
                             stride[0], stride[1], pads[0], pads[2], self.out_hw[0],
                             self.out_hw[1], self.qpads[0], self.qpads[2]], np.int64)
        self.pool_cfg = np.array([0, kernel[0], kernel[1], stride[0], stride[1], pads[0],
                                  pads[2], 1, 1, 0, 0, pads[1], pads[3], 0, 0, 0, 0,
                                  *self.out_hw], np.int64)

    def __call__(self, env, ctx) -> None:
        p = env[self.inputs[0]]
        if p.shape[1:3] != self.in_hw or p.ndim != 4 or p.dtype != _U64:
            raise self.mismatch(p, f"uint64[M, {self.in_hw[0]}, {self.in_hw[1]}, words]")
        ho, wo = self.out_hw
        t, b, l, r = self.qpads
        shape = (p.shape[0], ho + t + b, wo + l + r, p.shape[3])
        self.room(ctx, shape, 8)
        q = self.buffer(ctx, "q", shape, np.uint64, True)
        ctx.k.bmaxpool(p, q, self.cfg, ctx.nt)
        env[self.outputs[0]] = q
        if ctx.trace:
            f = ctx.floats.get(self.inputs[0])
            if f is not None:
                fy = np.empty((f.shape[0], ho, wo, f.shape[1]), _F32)
                ctx.k.pool_nhwc(nhwc(f), fy, _DUMMY_EP, _DUMMY_EP, self.pool_cfg, ctx.nt)
                ctx.floats[self.outputs[0]] = as_nchw(fy)
