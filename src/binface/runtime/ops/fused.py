"""The engine's float ops with numba kernels: ``conv``, ``ewise`` and the pools.

``conv`` and ``ewise`` end in the fused epilogue (docs/packed-format.md); pools may
carry a per-channel transform before and after.
"""

from __future__ import annotations

import numpy as np

from binface.runtime import kernels as K
from binface.runtime.ops.base import MAX_INT, MAX_MACS, Op, _ConvLike, conv_out
from binface.runtime.ops.layout import _DUMMY_EP, _F32, _NO_BIAS, aligned_copy, as_nchw, nhwc


def _float_window(op: Op, ceil_mode: bool = False, dilation: bool = True):
    """``kernel, stride, dilation, pads, in (H, W, C), out_hw`` of a float conv / pool.

    The input's shape is the declared one (graph ``shapes``); ``out_hw`` must be
    what PyTorch computes from it.
    """
    kernel = op.ints_attr("kernel", 2, 1)
    stride = op.ints_attr("stride", 2, 1)
    dil = op.ints_attr("dilation", 2, 1, default=[1, 1]) if dilation else [1, 1]
    pads = op.ints_attr("pads", 4)
    out_hw = op.ints_attr("out_hw", 2, 1)
    _, c, h, w = op.declared(op.inputs[0], 4)
    want = [conv_out(h, pads[0], pads[1], kernel[0], stride[0], dil[0], ceil_mode),
            conv_out(w, pads[2], pads[3], kernel[1], stride[1], dil[1], ceil_mode)]
    if out_hw != want:
        raise op.bad(f"out_hw {out_hw} does not follow from the input's {[h, w]}, pads {pads}, "
                     f"kernel {kernel}, stride {stride} and dilation {dil} ({want})")
    return kernel, stride, dil, pads, (h, w, c), out_hw


class ConvOp(_ConvLike):
    """Float conv: depthwise kernel, or im2col + BLAS GEMM per group; fused epilogue."""

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        a = self.attrs
        self.depthwise = bool(a.get("depthwise", False))
        self.small = False  # a direct conv for few input channels (set below)
        self.groups = self.int_attr("groups", 1)
        (self.kernel, self.stride, self.dilation, self.pads, self.in_shape,
         self.out_hw) = _float_window(self)
        pv = a.get("pad_value", 0.0)
        if not isinstance(pv, (int, float)) or isinstance(pv, bool):
            raise self.bad(f"attribute 'pad_value' must be a number, not {pv!r}"[:120])
        self.pad_value = float(pv)
        self.cin = self.int_attr("cin", 1)
        if self.in_shape[2] != self.cin:
            raise self.bad(f"cin {self.cin} is not the input's {self.in_shape[2]} channels")
        kh, kw = self.kernel
        ho, wo = self.out_hw
        self.pointwise = (kh == kw == 1 and self.stride == [1, 1] and not any(self.pads)
                          and self.groups == 1)
        if self.depthwise:
            mult = self.int_attr("mult", 1, default=1)
            self.w = self.tensor("weight", _F32, (kh, kw, self.cin * mult))  # [kh, kw, O]
            nout = self.cin * mult
            c = self.cfg
            c[0], c[1], c[2], c[3] = self.pads[0], self.pads[2], kh, kw
            c[4], c[5] = self.stride
            c[6], c[7] = self.dilation
            c[8] = mult
            c[9], c[10] = self.out_hw
            macs = ho * wo * nout * kh * kw
            # the register block on a padded copy (multiplier 1, whole vectors)
            self.blocked_dw = (mult == 1 and nout % K.FMA_LANES == 0
                               and self.dilation == [1, 1])
        else:
            if self.cin % self.groups:
                raise self.bad(f"cin {self.cin} is not a multiple of groups {self.groups}")
            cg = self.cin // self.groups
            self.w = self.tensor("weight", _F32, ndim=3)  # [G, kh * kw * Cg, Og]
            if self.w.shape[:2] != (self.groups, kh * kw * cg) or not self.w.shape[2]:
                raise self.bad(f"weight shape {self.w.shape} does not match groups, kernel "
                               "and cin")
            nout = self.groups * self.w.shape[2]
            # a conv on a few channels (an RGB stem): direct, on a padded copy; a 1 x 1
            # one too when its outputs fill the float block's vectors (2.4x faster than
            # conv1x1_small's loop over 64 outputs a pixel)
            self.small = (self.groups == 1 and cg <= 4 and self.dilation == [1, 1]
                          and (not self.pointwise or nout % K.FMA_LANES == 0))
            self.direct = self.pointwise and cg <= 8 and not self.small  # e.g. 3 channels
            c = self.cfg
            c[0], c[1], c[2], c[3] = self.pads[0], self.pads[2], kh, kw
            c[4], c[5] = self.stride
            c[6], c[7] = self.dilation
            c[8], c[9] = self.out_hw
            c[10], c[11] = self.groups, cg
            c[12], c[13], c[14], c[15] = kh, kw, self.stride[0], self.stride[1]
            c[16], c[17], c[18] = ho, wo, cg
            # im2col's cfg; channel offset (g * Cg) and row range set per call
            self.cols_cfg = np.array(
                [self.pads[0], self.pads[2], kh, kw, self.stride[0], self.stride[1],
                 self.dilation[0], self.dilation[1], self.out_hw[0], self.out_hw[1],
                 0, cg, 0, 0], np.int64)
            # blocks of output rows whose patches fit in L2 (~512 KiB)
            self.block_rows = max(1, (512 * 1024) // max(1, 4 * kh * kw * cg * self.out_hw[1]))
            macs = ho * wo * nout * kh * kw * cg
        self.check_epilogue(nout)
        self.check_size(ho * wo * nout * 4)
        self.macs_per_sample = macs
        if macs > MAX_MACS:
            raise self.bad(f"{macs} MACs per sample exceed the limit")

    def __call__(self, env, ctx) -> None:
        if self.replayed(env, ctx):
            return
        x0 = env[self.inputs[0]]
        # a conv on a padded copy reads any strides: no channels-last copy first
        x = x0.transpose(0, 2, 3, 1) if self.pads_input and x0.dtype == _F32 else nhwc(x0)
        if x.shape[1:] != self.in_shape:
            raise self.mismatch(x, f"[M, {', '.join(map(str, self.in_shape))}] (NHWC)")
        m = x.shape[0]
        ho, wo = self.out_hw
        res = (m, ho, wo, self.nout)
        y, q, cfg = self.alloc_outputs(ctx, m, ho, wo, self.nout)
        r1, r2 = self.residuals(env, res)
        ep = (self.ep, r1, r2, y, q, cfg, ctx.nt)
        views = (x, r1, r2)  # what the calls read of the inputs
        if self.reads_planar(x0):
            kern = K.conv_small_planar(self.nout, self.cin, *self.kernel, self.stride[1],
                                       ctx.k is K.PARALLEL)
            calls = [(kern, (x0, self.w_planar) + ep)]
            views = (x0, r1, r2)
        elif self.pads_input:
            # the border stays as filled: a replay refills the inside only, and not even
            # that where the producer wrote its output there (``pad_in_place``)
            xp = self.pad_buffer(ctx, m)
            calls = [] if _same_view(x, self.inside(xp)) else [
                (ctx.k.pad_nhwc, (x, xp, self.pads[0], self.pads[2], ctx.nt))]
            if self.depthwise:
                calls.append((ctx.k.dwconv_padded, (xp, self.w) + ep))
            else:
                kern = K.conv_small(self.nout, self.kernel[1] * self.cin, ctx.k is K.PARALLEL)
                calls.append((kern, (xp, self.w[0]) + ep))
        elif self.depthwise:
            calls = [(ctx.k.dwconv, (x, self.w, self.pad_value) + ep)]
        elif self.direct:
            calls = [(ctx.k.conv1x1_small, (x, self.w[0]) + ep)]
        elif self.pointwise and self.nout % K.FMA_LANES == 0 and x.flags.c_contiguous:
            calls = [(ctx.k.conv1x1, (x, self.w[0]) + ep)]
        else:
            raw, calls = self.gemm(ctx, x)
            calls.append((ctx.k.epilogue_nhwc, (raw.reshape(m, ho, wo, self.nout),) + ep))
            if self.pointwise and not x.flags.c_contiguous:
                views = None  # the product reads a channels-last copy: stale next run
        self.issue(calls)
        self.store(env, ctx, y, q)
        self.remember(env, ctx, calls, views)

    def gemm(self, ctx, x: np.ndarray) -> tuple[np.ndarray, list]:
        """The raw conv sums [M * Ho * Wo, O] (a kept buffer) and the calls that make them:
        im2col, then per group the register-blocked ``dense`` (one group) or a BLAS
        GEMM (several: their output columns are strided). Blocks of output rows keep
        the patches in cache. BLAS ran these small products (BinaryFaceNet's heads:
        16 x 576 x 128, 1 x 2048 x 128) at 2-3x the time, worse on a cold first call."""
        m = x.shape[0]
        ho, wo = self.out_hw
        ng, kk, og = self.w.shape
        rows = m * ho * wo
        raw = self.buffer(ctx, "raw", (rows, ng * og))

        def product(a, g, out):
            if ng == 1 and a.flags.c_contiguous:
                return ctx.k.dense, (a, self.w[0], _NO_BIAS, out, ctx.nt)
            return _matmul_into, (a, self.w[g], out)

        if self.pointwise:
            return raw, [product(x.reshape(rows, -1), 0, raw)]
        qn = m * ho  # output image rows
        step = min(self.block_rows, qn)
        cols = self.buffer(ctx, "cols", (step * wo, kk))
        calls = []
        for g in range(ng):
            for q0 in range(0, qn, step):
                q1 = min(q0 + step, qn)
                cfg_g = self.cols_cfg.copy()
                cfg_g[10] = g * cfg_g[11]
                cfg_g[12], cfg_g[13] = q0, q1
                nr = (q1 - q0) * wo
                calls += [(ctx.k.im2col, (x, cols, self.pad_value, cfg_g, ctx.nt)),
                          product(cols[:nr], g, raw[q0 * wo:q1 * wo, g * og:(g + 1) * og])]
        return raw, calls

    def reads_planar(self, x: np.ndarray) -> bool:
        """Whether this small conv reads its NCHW input ``x`` as it is (a C-contiguous
        image batch: the stem's), with no padded channels-last copy first."""
        return (self.small and self.pad_value == 0 and x.dtype == _F32
                and x.flags.c_contiguous and K.conv_small_planar_fits(self.nout))

    @property
    def w_planar(self) -> np.ndarray:
        """The weights [Cin * kh * kw, O] in the planar kernel's order, made once and
        aligned as the file's weights are (a 16-float load on one cache line)."""
        wp = self.__dict__.get("_w_planar")
        if wp is None:
            kh, kw = self.kernel
            wp = self.w[0].reshape(kh, kw, self.cin, self.nout).transpose(2, 0, 1, 3)
            self._w_planar = wp = aligned_copy(wp.reshape(-1, self.nout))
        return wp

    @property
    def pads_input(self) -> bool:
        """Whether the conv reads its input from a padded copy (:meth:`pad_buffer`)."""
        return self.small or (self.depthwise and self.blocked_dw)

    def inside(self, xp: np.ndarray) -> np.ndarray:
        """The view of the padded buffer ``xp`` where the input goes (the same object
        for the same buffer, so a producer writing there replays)."""
        last = self.__dict__.get("_inside")
        if last is None or last[0] is not xp:
            h, w, _ = self.in_shape
            t, l = self.pads[0], self.pads[2]
            self._inside = last = (xp, xp[:, t:t + h, l:l + w])
        return last[1]

    def pad_buffer(self, ctx, m: int) -> np.ndarray:
        """A kept buffer for the input (NHWC, batch ``m``) with the conv's padding (pad
        value) around it, as large as what the windows read (and at least the input);
        the input is copied :meth:`inside` with ``pad_nhwc``, or written there by its
        producer."""
        h, w, c = self.in_shape
        t, b, l, r = self.pads
        kh, kw = self.kernel
        (ho, wo), (sh, sw) = self.out_hw, self.stride
        hp, wp = (ho - 1) * sh + kh, (wo - 1) * sw + kw  # what the windows read
        xp = self.buffer(ctx, "xpad", (m, max(hp, t + h), max(wp, l + w), c))
        if (t or b or l or r) and self.__dict__.get("_filled") is not xp:
            xp.fill(self.pad_value)  # once per buffer: pad_nhwc writes only the inside
            self._filled = xp
        return xp


class GatedConvOp(ConvOp):
    """A few-channel conv (an RGB stem) recomputed where a squeeze-excite gate packs its
    output: signs of ``act(conv(x)) * gate[n, c]``, straight from the epilogue.

    Built at load (:func:`gated_conv`) in place of a ``pack`` whose float input was
    such a conv's output: that conv then keeps only its own packed output, and the
    float map (BinaryFaceNet: 64 x 112 x 112, 3.2 MB written and read back) is never
    stored. Recomputing the conv is cheaper than that round trip, and gives the
    same bits: the same kernel and epilogue, then the same float product the ``pack``
    took. Inputs: x, gate [N, C] (any shape of N x C values), the conv's residual.
    """

    n_main_inputs = 2

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        if self.nres > 1 or self.pack is None or self.out_float:
            raise self.bad("a gated conv packs its output, with at most one residual")
        self.cfg[K.EP_GATE] = 1

    def residuals(self, env: dict, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
        r1 = super().residuals(env, shape)[0]
        g = env[self.inputs[1]]
        m, c = shape[0], shape[3]
        if g.size != m * c or g.shape[0] != m:
            raise self.bad(f"gate {self.inputs[1]!r} has shape {list(g.shape)}, not "
                           f"({m}, {c}, ...)")
        return r1, np.ascontiguousarray(g.reshape(m, 1, 1, c), dtype=_F32)

    def remember(self, env, ctx, calls, views) -> None:
        """Replays when the gate is a view of a kept buffer (the gate's sigmoid keeps
        one); its inputs are x, gate, residual, so the views go in that order."""
        if views is None:
            super().remember(env, ctx, calls, None)
            return
        x, r1, r2 = views
        super().remember(env, ctx, calls, (x, r2, r1))


def gated_conv(conv: ConvOp, pack: Op, gate: str, tensors, graph) -> GatedConvOp:
    """The :class:`GatedConvOp` that replaces ``pack`` (signs of ``conv``'s float output
    times ``gate``)."""
    pk = {k: pack.attrs[k] for k in ("mode", "groups", "cg", "pads") if k in pack.attrs}
    attrs = {**conv.attrs, "out_float": False, "pack": pk}
    node = {"op": "conv", "name": f"{conv.name}+{pack.name}",
            "in": [conv.inputs[0], gate, *conv.inputs[1:]], "out": list(pack.outputs),
            "attrs": attrs}
    return GatedConvOp(node, tensors, graph)


def _same_view(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` are the same elements of the same memory."""
    return (a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


def _matmul_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    np.matmul(a, b, out=out)


class EwiseOp(_ConvLike):
    """Per-channel chain (BatchNorm, PReLU / ReLU, residual adds) on a 4-D tensor, one pass."""

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        ep = self.tensor("ep", _F32, ndim=2)
        self.check_epilogue(ep.shape[1])

    def __call__(self, env, ctx) -> None:
        if self.replayed(env, ctx):
            return
        x = nhwc(env[self.inputs[0]])
        m, h, w, c = x.shape
        if c != self.nout:
            raise self.mismatch(x, f"{self.nout} channels")
        y, q, cfg = self.alloc_outputs(ctx, m, h, w, c)
        r1, r2 = self.residuals(env, (m, h, w, c))
        calls = [(ctx.k.epilogue_nhwc, (x, self.ep, r1, r2, y, q, cfg, ctx.nt))]
        self.issue(calls)
        self.store(env, ctx, y, q)
        self.remember(env, ctx, calls, (x, r1, r2))


class PoolOp(Op):
    """Max or average pooling, optionally with a per-channel chain before and after."""

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        a = self.attrs
        kind = 0 if node["op"] == "maxpool" else 1
        kernel, stride, dil, p, self.in_shape, self.out_hw = _float_window(
            self, bool(a.get("ceil_mode", False)))
        nch = self.in_shape[2]
        self.pre = self.tensor("pre_ep", _F32, (6, nch), required=False)
        self.post = self.tensor("post_ep", _F32, (6, nch), required=False)
        divisor = a.get("divisor") or 0
        if not isinstance(divisor, int) or not 0 <= divisor <= MAX_INT:
            raise self.bad(f"attribute 'divisor' must be a positive integer, not {divisor!r}")
        self.check_size(self.out_hw[0] * self.out_hw[1] * nch * 4)
        self.cfg = np.array([kind, kernel[0], kernel[1], stride[0], stride[1], p[0], p[2],
                             dil[0], dil[1], int(bool(a.get("count_include_pad", True))),
                             divisor, p[1], p[3], int(self.pre is not None),
                             int(self.post is not None), 0, 0, *self.out_hw], np.int64)
        self.pre = _DUMMY_EP if self.pre is None else self.pre
        self.post = _DUMMY_EP if self.post is None else self.post

    def __call__(self, env, ctx) -> None:
        if self.replayed(env, ctx):
            return
        x = nhwc(env[self.inputs[0]])
        if x.shape[1:] != self.in_shape:
            raise self.mismatch(x, f"[M, {', '.join(map(str, self.in_shape))}] (NHWC)")
        m = x.shape[0]
        into, cfg = self.__dict__.get("_into"), self.cfg
        if into is not None and not ctx.fresh:  # inside the next conv's padded input
            yb = into.pad_buffer(ctx, m)
            y = into.inside(yb)
            cfg = self.cfg.copy()
            cfg[15], cfg[16] = into.pads[0], into.pads[2]
        else:
            y = yb = self.buffer(ctx, "y", (m, self.out_hw[0], self.out_hw[1], x.shape[3]))
        calls = [(ctx.k.pool_nhwc, (x, yb, self.pre, self.post, cfg, ctx.nt))]
        self.issue(calls)
        env[self.outputs[0]] = self.kept_view(y, ctx.n, as_nchw)
        self.remember(env, ctx, calls, (x,))
