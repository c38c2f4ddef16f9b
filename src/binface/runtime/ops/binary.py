"""The engine's binary ops on packed signs: ``pack``, ``bconv``, ``bdwconv``, ``bmaxpool``.

Each op prepares its numba kernel's ``cfg`` at load and calls one kernel per run
(``kernels.py``); the formats of their tensors are in docs/packed-format.md.
"""

from __future__ import annotations

import numpy as np

from binface.runtime import kernels as K
from binface.runtime.errors import PackedFormatError
from binface.runtime.ops.base import Op, _ConvLike
from binface.runtime.ops.layout import (
    _DUMMY_EP,
    _DUMMY_F2,
    _DUMMY_I4,
    _F32,
    as_nchw,
    nhwc,
    pack_bits,
)


class PackOp(Op):
    """Signs of a float tensor into packed words, with the consumer's halo."""

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        a = self.attrs
        self.groups, self.cg = int(a["groups"]), int(a["cg"])
        self.wpg = (self.cg + 63) // 64
        self.pads = a.get("pads", [0, 0, 0, 0])
        self.linear = bool(a.get("linear", False))
        self.gate = len(self.inputs) > 1
        ep = np.zeros((6, self.groups * self.cg), _F32)
        self.affine = a.get("scale") is not None
        if self.affine:
            ep[0], ep[1] = self.t("scale"), self.t("shift")
        self.ep = ep
        self.cfg = np.array([0 if a["mode"] == "pos" else 1, self.groups, self.cg, self.wpg,
                             self.pads[0], self.pads[2], int(self.gate), int(self.affine), 0],
                            np.int64)

    def __call__(self, env, ctx) -> None:
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
        m, h, w, _ = xn.shape
        t, b, l, r = self.pads
        out = self.buffer(ctx, "q", (m, h + t + b, w + l + r, self.groups * self.wpg), np.uint64,
                          True)
        gate = _DUMMY_F2
        if self.gate:
            g = env[self.inputs[1]]
            gate = np.ascontiguousarray(g.reshape(g.shape[0], -1), dtype=_F32)
        K.pack_nhwc(xn, gate, self.ep, out, cfg)
        env[self.outputs[0]] = out
        if ctx.trace:
            f = x.astype(_F32)
            if self.affine:
                shape = (1, -1) + (1,) * (f.ndim - 2) if not self.linear else (-1,)
                f = f * self.ep[0].reshape(shape) + self.ep[1].reshape(shape)
            if self.gate:
                f = f * env[self.inputs[1]]
            ctx.floats[self.outputs[0]] = f


class BConvOp(_ConvLike):
    """Binary conv (or dense, ``linear``) on packed input: xor + popcount, fused epilogue."""

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        a = self.attrs
        self.w = self.t("weight")
        self.corr = self.t("corr")
        self.groups, self.og = int(a["groups"]), int(a["og"])
        self.cg = int(a["cg"])
        self.kernel, self.stride, self.dilation = a["kernel"], a["stride"], a["dilation"]
        self.in_hw, self.pads, self.out_hw = a["in_hw"], a["pads"], a["out_hw"]
        c = self.cfg
        c[0], c[1], c[2], c[3] = self.in_hw[0], self.in_hw[1], self.pads[0], self.pads[2]
        c[4], c[5] = self.kernel
        c[6], c[7] = self.stride
        c[8], c[9] = self.dilation
        c[10], c[11], c[12], c[13] = self.groups, self.cg, (self.cg + 63) // 64, self.og
        c[14], c[15] = self.out_hw
        c[16] = int(self.corr is not None)
        if self.corr is None:
            self.corr = np.zeros((1, 1, 1), np.int32)
        wpg = (self.cg + 63) // 64
        kh, kw = self.kernel
        self.win = int(a.get("win", 1))
        want = (self.groups, kh * kw * wpg, self.og)
        if self.win > 1:  # T taps per word: weights [kh * chunks, G * Og]
            self.masks = self.t("masks")
            c[17] = self.win
            want = (kh * self.masks.shape[0], self.groups * self.og)
        if self.w.shape != want:
            raise PackedFormatError(f"node {self.name}: packed weight shape {self.w.shape} "
                                    "does not match its attributes")
        self.macs_per_sample = (self.out_hw[0] * self.out_hw[1] * self.groups * self.og
                                * self.kernel[0] * self.kernel[1] * self.cg)

    def __call__(self, env, ctx) -> None:
        p = env[self.inputs[0]]
        m = p.shape[0]
        ho, wo = self.out_hw
        nout = self.groups * self.og
        y, q, cfg = self.alloc_outputs(ctx, m, ho, wo, nout)
        r1, r2 = self.residuals(env)
        acc = _DUMMY_I4
        if ctx.trace:
            acc = np.zeros((m, ho, wo, nout), np.int32)
            cfg = cfg.copy()
            cfg[K.EP_OUT_ACC] = 1
        if self.win > 1:
            pw = self.buffer(ctx, "win", p.shape, np.uint64)
            K.pack_windows(p, pw, self.win, self.cg)
            K.bconv_win(pw, self.w, self.masks, self.corr, self.ep, r1, r2, y, acc, q, cfg)
        else:
            K.bconv(p, self.w, self.corr, self.ep, r1, r2, y, acc, q, cfg)
        self.store(env, ctx, y, q)
        if ctx.trace:
            ctx.records.append({
                "node": self.name, "op": "bconv", "source": self.attrs.get("source"),
                "input": ctx.floats.get(self.inputs[0]), "acc": self.logical(acc, ctx.n),
                "output": ctx.floats.get(self.name + ":y")})


class BDwConvOp(_ConvLike):
    """Binary depthwise conv (bit-serial, for small layers)."""

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        a = self.attrs
        self.wb = self.t("weight")
        self.out_hw = a["out_hw"]
        c = self.cfg
        c[0], c[1], c[2], c[3] = a["in_hw"][0], a["in_hw"][1], a["pads"][0], a["pads"][2]
        c[4], c[5] = a["kernel"]
        c[6], c[7] = a["stride"]
        c[8], c[9] = a["dilation"]
        c[10], c[11] = a["mult"], self.wb.shape[1]
        c[12], c[13] = self.out_hw
        c[14] = int(a.get("pad_value", 1.0) == 0.0)
        self.wpk = np.ascontiguousarray(pack_bits(self.wb.astype(bool)))  # [taps, words]
        self.macs_per_sample = (self.out_hw[0] * self.out_hw[1] * self.wb.shape[1]
                                * self.wb.shape[0])

    def __call__(self, env, ctx) -> None:
        p = env[self.inputs[0]]
        m = p.shape[0]
        ho, wo = self.out_hw
        nout = self.wb.shape[1]
        y, q, cfg = self.alloc_outputs(ctx, m, ho, wo, nout)
        r1, r2 = self.residuals(env)
        acc = _DUMMY_I4
        if ctx.trace:
            acc = np.zeros((m, ho, wo, nout), np.int32)
            cfg = cfg.copy()
            cfg[K.EP_OUT_ACC] = 1
        K.bdwconv(p, self.wb, self.wpk, self.ep, r1, r2, y, acc, q, cfg)
        self.store(env, ctx, y, q)
        if ctx.trace:
            ctx.records.append({
                "node": self.name, "op": "bdwconv", "source": self.attrs.get("source"),
                "input": ctx.floats.get(self.inputs[0]), "acc": as_nchw(acc),
                "output": ctx.floats.get(self.name + ":y")})


class BMaxPoolOp(Op):
    """Max-pool of signs on packed words."""

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        a = self.attrs
        self.out_hw, self.qpads = a["out_hw"], a["out_pads"]
        self.cfg = np.array([a["in_hw"][0], a["in_hw"][1], a["in_pads"][0], a["in_pads"][2],
                             a["kernel"][0], a["kernel"][1], a["stride"][0], a["stride"][1],
                             a["pads"][0], a["pads"][2], self.out_hw[0], self.out_hw[1],
                             self.qpads[0], self.qpads[2]], np.int64)
        self.pool_cfg = np.array([0, a["kernel"][0], a["kernel"][1], a["stride"][0],
                                  a["stride"][1], a["pads"][0], a["pads"][2], 1, 1, 0, 0,
                                  a["pads"][1], a["pads"][3], 0, 0], np.int64)

    def __call__(self, env, ctx) -> None:
        p = env[self.inputs[0]]
        ho, wo = self.out_hw
        t, b, l, r = self.qpads
        q = self.buffer(ctx, "q", (p.shape[0], ho + t + b, wo + l + r, p.shape[3]), np.uint64,
                        True)
        K.bmaxpool(p, q, self.cfg)
        env[self.outputs[0]] = q
        if ctx.trace:
            f = ctx.floats.get(self.inputs[0])
            if f is not None:
                fy = np.empty((f.shape[0], ho, wo, f.shape[1]), _F32)
                K.pool_nhwc(nhwc(f), fy, _DUMMY_EP, _DUMMY_EP, self.pool_cfg)
                ctx.floats[self.outputs[0]] = as_nchw(fy)
