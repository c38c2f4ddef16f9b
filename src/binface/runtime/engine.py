"""The packed engine: runs a ``.bfp`` graph with numpy and numba only (no torch).

Values are numpy arrays in PyTorch's logical layout (NCHW, tokens ...); 4-D
activations made by the engine's kernels are channels-last in memory (a
transposed view), which is what the conv and packing kernels read without a copy,
while numpy ops see the logical shape. Packed binary activations are uint64 words
``[N, H + halo, W + halo, words]`` (see ``kernels.py``).

Ops of format version 1 (``node["op"]``; tensors named in ``attrs``):

- binary: ``pack`` (float -> packed signs, optional folded BN affine and
  squeeze-excite gate), ``bconv`` (packed binary conv / dense, xor + popcount,
  fused epilogue), ``bdwconv`` (binary depthwise), ``bmaxpool`` (AND of packed
  signs);
- float: ``conv`` (grouped / depthwise, fused epilogue), ``linear``, ``affine``,
  ``prelu``, ``unary``, ``binary``, ``clamp``, ``quant``, ``softmax``,
  ``layer_norm``, ``group_norm``, ``matmul``, ``reshape``, ``expand``,
  ``permute``, ``cat``, ``stack``, ``slice``, ``select``, ``split``, ``reduce``,
  ``vector_norm``, ``maxpool``, ``avgpool``, ``adaptive_avgpool``, ``pad``,
  ``interpolate``, ``full_like``.

The conv epilogue (``attrs["ep"]``, a (6, C) array) is
``y = act2(act1(v * a1 + b1) * a2 + b2 + res1 + res2)`` with PReLU slopes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np

from binface.errors import InputShapeError
from binface.runtime import kernels as K
from binface.runtime.bfp import read_bfp
from binface.runtime.errors import PackedFormatError, UnsupportedOpError

_F32 = np.float32
_DUMMY_F4 = np.zeros((1, 1, 1, 1), _F32)
_DUMMY_U4 = np.zeros((1, 1, 1, 1), np.uint64)
_DUMMY_I4 = np.zeros((1, 1, 1, 1), np.int32)
_DUMMY_F2 = np.zeros((1, 1), _F32)
_DUMMY_EP = np.zeros((6, 1), _F32)


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


class _Ctx:
    """Per-run state: batch size and trace collection."""

    def __init__(self, n: int, trace: bool, fresh: bool = False) -> None:
        self.n = n
        self.trace = trace
        self.fresh = trace or fresh
        self.records: list[dict] = []
        self.floats: dict[str, np.ndarray] = {}  # packed value -> the float it is the sign of
        self.chains: dict = {}  # concatenation chain -> its buffer
        self.bases: dict[str, tuple] = {}  # value -> (chain buffer, channels) it is a view of


# ---------------------------------------------------------------- ops
class Op:
    """One node, prepared once at load: tensors resolved, cfg arrays built."""

    def __init__(self, node: dict, tensors: dict[str, np.ndarray], graph: dict) -> None:
        self.node = node
        self.name = node.get("name", node["op"])
        self.inputs = node["in"]
        self.outputs = node["out"]
        self.attrs = node.get("attrs", {})
        self.tensors = tensors
        self.shapes = graph.get("shapes", {})

    def buffer(self, ctx: _Ctx, key: str, shape: tuple, dtype=_F32,
               zero: bool = False) -> np.ndarray:
        """An output array, reused from run to run (fresh ones would page-fault every time).

        Packed outputs are zeroed once: kernels never write their halo. Trace runs
        (whose records outlive the run) and runs on several threads get fresh arrays.
        """
        if ctx.fresh:
            return np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
        bufs = self.__dict__.setdefault("_bufs", {})
        arr = bufs.get(key)
        if arr is None or arr.shape != shape:
            arr = np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
            bufs[key] = arr
        return arr

    def t(self, key: str) -> np.ndarray | None:
        name = self.attrs.get(key)
        if name is None:
            return None
        try:
            return self.tensors[name]
        except KeyError:
            raise PackedFormatError(f"node {self.name}: tensor {name!r} is missing") from None

    def __call__(self, env: dict, ctx: _Ctx) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _epilogue_cfg(cfg: np.ndarray, attrs: dict, out_float: bool) -> None:
    pk = attrs.get("pack")
    cfg[K.EP_NRES] = int(attrs.get("nres", 0))
    cfg[K.EP_OUT_FLOAT] = int(out_float)
    cfg[K.EP_OUT_PACK] = int(pk is not None)
    if pk is not None:
        cfg[K.EP_PMODE] = 0 if pk["mode"] == "pos" else 1
        cfg[K.EP_PG] = pk["groups"]
        cfg[K.EP_PCG] = pk["cg"]
        cfg[K.EP_PWPG] = (pk["cg"] + 63) // 64
        cfg[K.EP_PPT] = pk["pads"][0]
        cfg[K.EP_PPL] = pk["pads"][2]


class _ConvLike(Op):
    """Shared plumbing of the ops with a fused epilogue: residual inputs and outputs."""

    n_main_inputs = 1

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        a = self.attrs
        self.ep = self.t("ep")
        self.out_float = bool(a.get("out_float", True))
        self.pack = a.get("pack")
        self.nres = int(a.get("nres", 0))
        self.linear = bool(a.get("linear", False))
        self.cfg = np.zeros(K.CFG_SIZE, np.int64)
        _epilogue_cfg(self.cfg, a, self.out_float)
        self.out_shape = a["out_shape"]  # logical output shape (N, O, Ho, Wo) or (..., O)

    def residuals(self, env: dict) -> tuple[np.ndarray, np.ndarray]:
        res = [_DUMMY_F4, _DUMMY_F4]
        for i in range(self.nres):
            r = env[self.inputs[self.n_main_inputs + i]]
            res[i] = nhwc(r) if r.ndim == 4 else np.ascontiguousarray(
                r.reshape(-1, 1, 1, r.shape[-1]), dtype=_F32)
        return res[0], res[1]

    def alloc_outputs(self, ctx: _Ctx, m: int, ho: int, wo: int, nout: int):
        """(float NHWC or dummy, packed or dummy, cfg) for one call."""
        cfg = self.cfg
        want_float = self.out_float or ctx.trace
        if want_float != bool(cfg[K.EP_OUT_FLOAT]):
            cfg = cfg.copy()
            cfg[K.EP_OUT_FLOAT] = int(want_float)
        y = self.buffer(ctx, "y", (m, ho, wo, nout)) if want_float else _DUMMY_F4
        q = _DUMMY_U4
        if self.pack is not None:
            pk = self.pack
            t, b, l, r = pk["pads"]
            q = self.buffer(ctx, "q", (m, ho + t + b, wo + l + r,
                                       pk["groups"] * ((pk["cg"] + 63) // 64)), np.uint64, True)
        return y, q, cfg

    def store(self, env: dict, ctx: _Ctx, y: np.ndarray, q: np.ndarray) -> None:
        outs = list(self.outputs)
        yl = None
        if self.out_float or ctx.trace:
            yl = self.logical(y, ctx.n)
        if self.out_float:
            env[outs.pop(0)] = yl
        if self.pack is not None:
            qname = outs.pop(0)
            env[qname] = q
            if ctx.trace:
                ctx.floats[qname] = yl
        if ctx.trace and yl is not None:
            ctx.floats[self.name + ":y"] = yl

    def logical(self, y: np.ndarray, n: int) -> np.ndarray:
        if self.linear:
            return y.reshape(resolve(self.out_shape, n))
        return as_nchw(y)


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


class ConvOp(_ConvLike):
    """Float conv: depthwise kernel, or im2col + BLAS GEMM per group; fused epilogue."""

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        a = self.attrs
        self.w = self.t("weight")  # depthwise: [kh, kw, O]; else [G, kh * kw * Cg, Og]
        self.depthwise = bool(a.get("depthwise", False))
        self.groups = int(a["groups"])
        self.kernel, self.stride, self.dilation = a["kernel"], a["stride"], a["dilation"]
        self.pads, self.pad_value = a["pads"], float(a.get("pad_value", 0.0))
        self.out_hw = a["out_hw"]
        self.cin = int(a["cin"])
        kh, kw = self.kernel
        self.pointwise = (kh == kw == 1 and self.stride == [1, 1] and not any(self.pads)
                          and self.groups == 1)
        if self.depthwise:
            c = self.cfg
            c[0], c[1], c[2], c[3] = self.pads[0], self.pads[2], kh, kw
            c[4], c[5] = self.stride
            c[6], c[7] = self.dilation
            c[8] = int(a.get("mult", 1))
            c[9], c[10] = self.out_hw
        else:
            cg = self.cin // self.groups
            self.direct = self.pointwise and cg <= 8  # e.g. the 3-channel input
            c = self.cfg
            c[0], c[1], c[2], c[3] = self.pads[0], self.pads[2], kh, kw
            c[4], c[5] = self.stride
            c[6], c[7] = self.dilation
            c[8], c[9] = self.out_hw
            c[10], c[11] = self.groups, cg
            self.cols_cfg = []
            for g in range(self.groups):
                self.cols_cfg.append(np.array(
                    [self.pads[0], self.pads[2], kh, kw, self.stride[0], self.stride[1],
                     self.dilation[0], self.dilation[1], self.out_hw[0], self.out_hw[1],
                     g * cg, cg, 0, 0], np.int64))
            # blocks of output rows whose patches fit in L2 (~512 KiB)
            self.block_rows = max(1, (512 * 1024) // max(1, 4 * kh * kw * cg * self.out_hw[1]))

    def __call__(self, env, ctx) -> None:
        x = nhwc(env[self.inputs[0]])
        m = x.shape[0]
        ho, wo = self.out_hw
        if self.depthwise:
            nout = self.w.shape[2]
            y, q, cfg = self.alloc_outputs(ctx, m, ho, wo, nout)
            r1, r2 = self.residuals(env)
            K.dwconv(x, self.w, self.pad_value, self.ep, r1, r2, y, q, cfg)
        elif self.direct:
            nout = self.w.shape[0] * self.w.shape[2]
            y, q, cfg = self.alloc_outputs(ctx, m, ho, wo, nout)
            r1, r2 = self.residuals(env)
            K.conv1x1_small(x, self.w[0], self.ep, r1, r2, y, q, cfg)
        else:
            ng, kk, og = self.w.shape
            nout = ng * og
            rows = m * ho * wo
            if self.pointwise:
                raw = self.buffer(ctx, "raw", (rows, nout))
                np.matmul(x.reshape(rows, -1), self.w[0], out=raw)
            else:
                raw = self.buffer(ctx, "raw", (rows, nout))
                qn = m * ho  # output image rows
                step = min(self.block_rows, qn)
                cols = self.buffer(ctx, "cols", (step * wo, kk))
                for g in range(ng):
                    cfg_g = self.cols_cfg[g].copy()
                    for q0 in range(0, qn, step):
                        q1 = min(q0 + step, qn)
                        cfg_g[12], cfg_g[13] = q0, q1
                        nr = (q1 - q0) * wo
                        K.im2col(x, cols, self.pad_value, cfg_g)
                        np.matmul(cols[:nr], self.w[g],
                                  out=raw[q0 * wo:q1 * wo, g * og:(g + 1) * og])
            y, q, cfg = self.alloc_outputs(ctx, m, ho, wo, nout)
            r1, r2 = self.residuals(env)
            K.epilogue_nhwc(raw.reshape(m, ho, wo, nout), self.ep, r1, r2, y, q, cfg)
        self.store(env, ctx, y, q)


class EwiseOp(_ConvLike):
    """Per-channel chain (BatchNorm, PReLU / ReLU, residual adds) on a 4-D tensor, one pass."""

    def __call__(self, env, ctx) -> None:
        x = nhwc(env[self.inputs[0]])
        m, h, w, c = x.shape
        y, q, cfg = self.alloc_outputs(ctx, m, h, w, c)
        r1, r2 = self.residuals(env)
        K.epilogue_nhwc(x, self.ep, r1, r2, y, q, cfg)
        self.store(env, ctx, y, q)


class LinearOp(Op):
    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        self.w = self.t("weight")  # [K, O]
        self.b = self.t("bias")

    def __call__(self, env, ctx) -> None:
        y = np.matmul(env[self.inputs[0]], self.w)
        if self.b is not None:
            y += self.b
        env[self.outputs[0]] = y


def _channel_shape(ndim: int, axis: int) -> tuple[int, ...]:
    return (-1,) + (1,) * (ndim - axis - 1)


class AffineOp(Op):
    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        self.scale, self.shift = self.t("scale"), self.t("shift")
        self.axis = int(self.attrs.get("axis", 1))

    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        s = _channel_shape(x.ndim, self.axis)
        env[self.outputs[0]] = x * self.scale.reshape(s) + self.shift.reshape(s)


class PReLUOp(Op):
    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        self.slope = self.t("slope")
        self.axis = int(self.attrs.get("axis", 1))

    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        s = self.slope
        if s.size > 1:
            s = s.reshape(_channel_shape(x.ndim, self.axis))
        env[self.outputs[0]] = np.where(x >= 0, x, x * s)


def _erf(x: np.ndarray) -> np.ndarray:
    return K.erf(x)


def _sigmoid(x):
    return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype, copy=False)


_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, _F32(0)),
    "relu6": lambda x: np.clip(x, _F32(0), _F32(6)),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "silu": lambda x: x * _sigmoid(x),
    "gelu": lambda x: _F32(0.5) * x * (_F32(1) + _erf(x * _F32(1 / math.sqrt(2)))),
    "gelu_tanh": lambda x: _F32(0.5) * x * (_F32(1) + np.tanh(
        _F32(math.sqrt(2 / math.pi)) * (x + _F32(0.044715) * x * x * x))),
    "hardswish": lambda x: x * np.clip(x + _F32(3), _F32(0), _F32(6)) / _F32(6),
    "hardsigmoid": lambda x: np.clip(x + _F32(3), _F32(0), _F32(6)) / _F32(6),
    "neg": np.negative,
    "exp": np.exp,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: _F32(1) / np.sqrt(x),
    "abs": np.abs,
    "erf": _erf,
    "reciprocal": lambda x: _F32(1) / x,
    "log": np.log,
    "sin": np.sin,
    "cos": np.cos,
    "sign_raw": np.sign,
}


class UnaryOp(Op):
    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        fn = self.attrs["fn"]
        if fn not in _UNARY:
            raise UnsupportedOpError(f"packed engine: unary function {fn!r} is not supported")
        self.fn = _UNARY[fn]

    def __call__(self, env, ctx) -> None:
        env[self.outputs[0]] = self.fn(env[self.inputs[0]])


_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.true_divide,
           "pow": np.power, "maximum": np.maximum, "minimum": np.minimum}


class BinaryOp(Op):
    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        fn = self.attrs["fn"]
        if fn not in _BINARY:
            raise UnsupportedOpError(f"packed engine: binary function {fn!r} is not supported")
        self.fn = _BINARY[fn]

    def __call__(self, env, ctx) -> None:
        a, b = env[self.inputs[0]], env[self.inputs[1]]
        y = self.fn(a, b)
        env[self.outputs[0]] = y if y.dtype == _F32 else y.astype(_F32)


class ClampOp(Op):
    def __call__(self, env, ctx) -> None:
        lo, hi = self.attrs.get("min"), self.attrs.get("max")
        x = env[self.inputs[0]]
        env[self.outputs[0]] = np.clip(x, None if lo is None else _F32(lo),
                                       None if hi is None else _F32(hi))


class QuantOp(Op):
    """A free-standing quantizer on floats (when no binary layer consumes it)."""

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        self.q = self.attrs["q"]
        self.shift = self.t("shift")

    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        if self.shift is not None:
            x = x + self.shift.reshape(_channel_shape(x.ndim, 1))
        env[self.outputs[0]] = quantize(x, self.q)


def quantize(x: np.ndarray, q: dict) -> np.ndarray:
    """The float value of a quantizer (``capture.quantizer_kind``) applied to ``x``."""
    kind = q["kind"]
    one, m1 = _F32(1), _F32(-1)
    if kind == "pos":
        return np.where(x >= 0, one, m1)
    if kind == "neg":
        return np.where(x > 0, one, m1)
    if kind == "dorefa":
        levels = _F32(2 ** q["k_bit"] - 1)
        return (np.round(np.clip(x, _F32(0), one) * levels) / levels).astype(_F32)
    if kind == "none":
        return x
    raise UnsupportedOpError(f"packed engine: quantizer kind {kind!r} is not supported")


class SoftmaxOp(Op):
    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        d = int(self.attrs["dim"])
        e = np.exp(x - x.max(axis=d, keepdims=True))
        env[self.outputs[0]] = e / e.sum(axis=d, keepdims=True)


class LayerNormOp(Op):
    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        self.w, self.b = self.t("weight"), self.t("bias")

    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        axes = tuple(range(x.ndim - int(self.attrs["ndim"]), x.ndim))
        mu = x.mean(axis=axes, keepdims=True)
        d = x - mu
        var = (d * d).mean(axis=axes, keepdims=True)
        y = d / np.sqrt(var + _F32(self.attrs["eps"]))
        if self.w is not None:
            y = y * self.w
        if self.b is not None:
            y = y + self.b
        env[self.outputs[0]] = y


class GroupNormOp(Op):
    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        self.w, self.b = self.t("weight"), self.t("bias")

    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        n, c = x.shape[:2]
        g = int(self.attrs["groups"])
        xr = x.reshape(n, g, -1)
        mu = xr.mean(axis=2, keepdims=True)
        d = xr - mu
        var = (d * d).mean(axis=2, keepdims=True)
        y = (d / np.sqrt(var + _F32(self.attrs["eps"]))).reshape(x.shape)
        s = _channel_shape(x.ndim, 1)
        if self.w is not None:
            y = y * self.w.reshape(s)
        if self.b is not None:
            y = y + self.b.reshape(s)
        env[self.outputs[0]] = y


class MatmulOp(Op):
    def __call__(self, env, ctx) -> None:
        env[self.outputs[0]] = np.matmul(env[self.inputs[0]], env[self.inputs[1]])


class ReshapeOp(Op):
    def __call__(self, env, ctx) -> None:
        env[self.outputs[0]] = env[self.inputs[0]].reshape(resolve(self.attrs["shape"], ctx.n))


class ExpandOp(Op):
    def __call__(self, env, ctx) -> None:
        env[self.outputs[0]] = np.broadcast_to(env[self.inputs[0]],
                                               resolve(self.attrs["shape"], ctx.n))


class PermuteOp(Op):
    def __call__(self, env, ctx) -> None:
        env[self.outputs[0]] = env[self.inputs[0]].transpose(self.attrs["dims"])


class CatOp(Op):
    """Concatenation; a DenseNet-style chain appends into one buffer (linear, not quadratic).

    In a chain (``attrs["chain"]``) each cat's first input is the previous cat's
    output: the head allocates the whole buffer, every cat copies only its new
    channels and outputs a view of the channels so far.
    """

    def __call__(self, env, ctx) -> None:
        chain = self.attrs.get("chain")
        if chain is not None:
            self.append(env, ctx, chain)
            return
        xs = [env[i] for i in self.inputs]
        d = int(self.attrs["dim"]) % xs[0].ndim
        if xs[0].ndim == 4 and d == 1:  # channels: keep channels-last
            n, _, h, w = xs[0].shape
            out = np.empty((n, h, w, sum(x.shape[1] for x in xs)), _F32)
            c = 0
            for x in xs:
                out[..., c:c + x.shape[1]] = x.transpose(0, 2, 3, 1)
                c += x.shape[1]
            env[self.outputs[0]] = as_nchw(out)
        else:
            env[self.outputs[0]] = np.concatenate(xs, axis=d)


    def append(self, env, ctx, chain) -> None:
        first, new = env[self.inputs[0]], env[self.inputs[1]]
        n, c0, h, w = first.shape
        total, offset = int(self.attrs["total"]), int(self.attrs["offset"])
        if self.attrs.get("head"):
            buf = self.buffer(ctx, "chain", (n, h, w, total))
            buf[..., :c0] = first.transpose(0, 2, 3, 1)
            ctx.chains[chain] = buf
        else:
            buf = ctx.chains[chain]
        end = offset + new.shape[1]
        buf[..., offset:end] = new.transpose(0, 2, 3, 1)
        out = self.outputs[0]
        env[out] = as_nchw(buf[..., :end])
        ctx.bases[out] = (buf, end)


class StackOp(Op):
    def __call__(self, env, ctx) -> None:
        env[self.outputs[0]] = np.stack([env[i] for i in self.inputs], axis=self.attrs["dim"])


class SliceOp(Op):
    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        a = self.attrs
        d = int(a["dim"]) % x.ndim
        idx = (slice(None),) * d + (slice(a["start"], a["end"], a["step"]),)
        env[self.outputs[0]] = x[idx]


class SelectOp(Op):
    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        env[self.outputs[0]] = np.take(x, self.attrs["index"], axis=self.attrs["dim"])


class SplitOp(Op):
    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        d = int(self.attrs["dim"])
        cuts = np.cumsum(self.attrs["sizes"])[:-1]
        parts = np.split(x, cuts, axis=d)
        for name, part in zip(self.outputs, parts, strict=True):
            env[name] = part.squeeze(d) if self.attrs.get("squeeze") else part


_REDUCE = {"mean": np.mean, "sum": np.sum, "amax": np.max, "amin": np.min}


class ReduceOp(Op):
    def __call__(self, env, ctx) -> None:
        fn = _REDUCE[self.attrs["fn"]]
        y = fn(env[self.inputs[0]], axis=tuple(self.attrs["dims"]),
               keepdims=self.attrs["keepdim"])
        env[self.outputs[0]] = np.asarray(y, _F32)


class VectorNormOp(Op):
    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        p = float(self.attrs["ord"])
        axes = tuple(self.attrs["dims"])
        keep = self.attrs["keepdim"]
        if p == 2:
            y = np.sqrt((x * x).sum(axis=axes, keepdims=keep))
        elif math.isinf(p):
            y = np.abs(x).max(axis=axes, keepdims=keep)
        elif p == 1:
            y = np.abs(x).sum(axis=axes, keepdims=keep)
        else:
            y = (np.abs(x) ** _F32(p)).sum(axis=axes, keepdims=keep) ** _F32(1 / p)
        env[self.outputs[0]] = np.asarray(y, _F32)


class PoolOp(Op):
    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        a = self.attrs
        kind = 0 if node["op"] == "maxpool" else 1
        p = a["pads"]
        dil = a.get("dilation", [1, 1])
        self.pre, self.post = self.t("pre_ep"), self.t("post_ep")
        self.cfg = np.array([kind, a["kernel"][0], a["kernel"][1], a["stride"][0],
                             a["stride"][1], p[0], p[2], dil[0], dil[1],
                             int(a.get("count_include_pad", True)), int(a.get("divisor") or 0),
                             p[1], p[3], int(self.pre is not None), int(self.post is not None)],
                            np.int64)
        self.pre = _DUMMY_EP if self.pre is None else self.pre
        self.post = _DUMMY_EP if self.post is None else self.post
        self.out_hw = a["out_hw"]

    def __call__(self, env, ctx) -> None:
        x = nhwc(env[self.inputs[0]])
        y = self.buffer(ctx, "y", (x.shape[0], self.out_hw[0], self.out_hw[1], x.shape[3]))
        K.pool_nhwc(x, y, self.pre, self.post, self.cfg)
        env[self.outputs[0]] = as_nchw(y)


class AdaptiveAvgPoolOp(Op):
    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        oh, ow = self.attrs["size"]
        h, w = x.shape[2:]
        if oh == 1 and ow == 1:
            env[self.outputs[0]] = x.mean(axis=(2, 3), keepdims=True, dtype=_F32)
            return
        y = np.empty(x.shape[:2] + (oh, ow), _F32)
        for i in range(oh):
            h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
            for j in range(ow):
                w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
                y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
        env[self.outputs[0]] = y


class PadOp(Op):
    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        p = self.attrs["pads"]
        width = [(0, 0)] * x.ndim
        for i in range(len(p) // 2):
            width[x.ndim - 1 - i] = (p[2 * i], p[2 * i + 1])
        if any(a < 0 or b < 0 for a, b in width):
            raise UnsupportedOpError("packed engine: negative padding (cropping) is not supported")
        env[self.outputs[0]] = np.pad(x, width, constant_values=_F32(self.attrs["value"]))


class InterpolateOp(Op):
    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        oh, ow = self.attrs["size"]
        h, w = x.shape[2:]
        if self.attrs["mode"] == "nearest":
            iy = np.minimum(np.floor(np.arange(oh) * (h / oh)).astype(int), h - 1)
            ix = np.minimum(np.floor(np.arange(ow) * (w / ow)).astype(int), w - 1)
            env[self.outputs[0]] = x[:, :, iy][:, :, :, ix]
            return
        ac = self.attrs.get("align_corners", False)
        y0, y1, ly = _linear_index(h, oh, ac)
        x0, x1, lx = _linear_index(w, ow, ac)
        top = x[:, :, y0] * (1 - ly)[:, None] + x[:, :, y1] * ly[:, None]
        env[self.outputs[0]] = (top[..., x0] * (1 - lx) + top[..., x1] * lx).astype(_F32)


def _linear_index(size: int, out: int, align_corners: bool):
    """PyTorch's source indices and weights for linear resizing along one axis."""
    d = np.arange(out, dtype=np.float32)
    if align_corners:
        scale = np.float32((size - 1) / (out - 1)) if out > 1 else np.float32(0)
        src = d * scale
    else:
        scale = np.float32(size / out)
        src = np.maximum((d + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, size - 1)
    lam = (src - i0).astype(np.float32)
    return i0, i1, lam


class FullLikeOp(Op):
    def __call__(self, env, ctx) -> None:
        env[self.outputs[0]] = np.full(env[self.inputs[0]].shape, self.attrs["value"], _F32)


OPS: dict[str, type[Op]] = {
    "pack": PackOp, "bconv": BConvOp, "bdwconv": BDwConvOp, "bmaxpool": BMaxPoolOp,
    "conv": ConvOp, "ewise": EwiseOp, "linear": LinearOp, "affine": AffineOp, "prelu": PReLUOp,
    "unary": UnaryOp, "binary": BinaryOp, "clamp": ClampOp, "quant": QuantOp,
    "softmax": SoftmaxOp, "layer_norm": LayerNormOp, "group_norm": GroupNormOp,
    "matmul": MatmulOp, "reshape": ReshapeOp, "expand": ExpandOp, "permute": PermuteOp,
    "cat": CatOp, "stack": StackOp, "slice": SliceOp, "select": SelectOp, "split": SplitOp,
    "reduce": ReduceOp, "vector_norm": VectorNormOp, "maxpool": PoolOp, "avgpool": PoolOp,
    "adaptive_avgpool": AdaptiveAvgPoolOp, "pad": PadOp, "interpolate": InterpolateOp,
    "full_like": FullLikeOp,
}


# ---------------------------------------------------------------- engine
class PackedEngine:
    """A loaded packed model. ``run(x)`` takes (N, 3, H, W) float32 and returns numpy."""

    def __init__(self, graph: dict, tensors: dict[str, np.ndarray], source: str = "",
                 threads: int = 1) -> None:
        self.graph = graph
        self.threads = max(1, int(threads or 1))
        self.source = source
        self.model_name = graph.get("model", "model")
        self.input_name = graph.get("input", "input")
        self.input_shape = graph["input_shape"]
        self.outputs = graph["outputs"]
        self.batch_dynamic = bool(graph.get("batch_dynamic", True))
        self.consts = {name: tensors[name] for name in graph.get("consts", [])}
        self.ops: list[Op] = []
        for i, node in enumerate(graph["nodes"]):
            node.setdefault("name", f"{node['op']}{i}")
            cls = OPS.get(node["op"])
            if cls is None:
                raise UnsupportedOpError(
                    f"{source or 'graph'}: op {node['op']!r} (node {node['name']}) is not "
                    "supported by this packed engine")
            self.ops.append(cls(node, tensors, graph))

    @property
    def binary_ops(self) -> list[Op]:
        return [op for op in self.ops if isinstance(op, (BConvOp, BDwConvOp))]

    def check_input(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise InputShapeError(f"{self.model_name} (packed) expects a numpy array, got "
                                  f"{type(x).__name__}")
        want = resolve(self.input_shape, 1)[1:]
        if x.ndim != 1 + len(want) or tuple(x.shape[1:]) != want or x.shape[0] < 1:
            dims = ", ".join(str(d) for d in want)
            raise InputShapeError(f"{self.model_name} (packed) expects input of shape "
                                  f"(N, {dims}), got {tuple(x.shape)}")
        return np.ascontiguousarray(x, dtype=_F32)

    def run(self, x: np.ndarray, trace: bool = False):
        """Outputs for input ``x``; with ``trace``, also per-binary-layer records.

        A trace record holds the layer's ``source`` (the PyTorch module path), the
        float ``input`` whose signs it consumed, its integer dot products ``acc``
        (before any affine) and its float ``output``, all in PyTorch layout.
        """
        x = self.check_input(x)
        n = x.shape[0]
        if not self.batch_dynamic and n > 1:
            parts = [x[i:i + 1] for i in range(n)]
        elif self.threads > 1 and n > 1 and not trace:
            parts = np.array_split(x, min(self.threads, n))
        else:
            out, records = self._run(x, trace)
            return (out, records) if trace else out
        if self.threads > 1 and len(parts) > 1 and not trace:
            # the kernels release the GIL: one slice of the batch per thread
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.threads) as pool:
                runs = list(pool.map(lambda p: self._run(p, False, fresh=True), parts))
        else:
            runs = [self._run(p, trace) for p in parts]
        out = np.concatenate([r[0] for r in runs])
        return (out, [rec for r in runs for rec in r[1]]) if trace else out

    __call__ = run

    def _run(self, x: np.ndarray, trace: bool, fresh: bool = False):
        ctx = _Ctx(x.shape[0], trace, fresh)
        env: dict[str, np.ndarray] = dict(self.consts)
        env[self.input_name] = x
        for op in self.ops:
            op(env, ctx)
        outs = [np.array(env[o], dtype=_F32, order="C", copy=True) for o in self.outputs]
        return (outs[0] if len(outs) == 1 else tuple(outs)), ctx.records

    def summary(self) -> dict:
        """Op counts and binary MACs per sample (what really runs as xor + popcount)."""
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.node["op"]] = counts.get(op.node["op"], 0) + 1
        return {"model": self.model_name, "ops": counts,
                "binary_macs": int(sum(op.macs_per_sample for op in self.binary_ops))}


def set_blas_threads(threads: int) -> bool:
    """Limit numpy's BLAS (the engine's float GEMMs) to ``threads``; False if not possible.

    The engine's own kernels are single-threaded; an idle BLAS pool spinning on a
    second core only steals it from whatever else runs there.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return False
    threadpool_limits(limits=int(threads), user_api="blas")
    return True


def load_packed(path: str | os.PathLike, threads: int | None = None,
                limit_blas: bool = True) -> PackedEngine:
    """Load a ``.bfp`` file into a :class:`PackedEngine` (numpy + numba only).

    ``threads``: split a batch over that many threads (the kernels release the GIL;
    a batch of one runs on one core) and, with ``limit_blas``, keep numpy's BLAS on
    one thread (process-wide; needs threadpoolctl, which costs some 50 MB of RSS:
    setting OPENBLAS_NUM_THREADS=1 before Python starts is the lean way).
    """
    if threads and limit_blas:
        # the engine parallelises over the batch itself: a BLAS pool per caller thread
        # would only oversubscribe the cores
        set_blas_threads(1)
    graph, tensors = read_bfp(path)
    try:
        return PackedEngine(graph, tensors, str(path), threads=threads or 1)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, (InputShapeError, PackedFormatError)):
            raise
        raise PackedFormatError(f"{path}: corrupt packed model graph ({type(exc).__name__}: "
                                f"{exc})") from None
