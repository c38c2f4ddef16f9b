"""The engine's float ops with numba kernels: ``conv``, ``ewise`` and the pools.

``conv`` and ``ewise`` end in the fused epilogue (docs/packed-format.md); pools may
carry a per-channel transform before and after.
"""

from __future__ import annotations

import numpy as np

from binface.runtime import kernels as K
from binface.runtime.ops.base import Op, _ConvLike
from binface.runtime.ops.layout import _DUMMY_EP, as_nchw, nhwc


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
