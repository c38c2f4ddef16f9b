"""The LCE builder: writes a binface IR graph as TensorFlow ops on an NHWC input.

Which method translates which IR op is declared in the op table
(``binface.runtime.ops.table``, field ``lce``); the TensorFlow form of each
element-wise function is in ``ops/functions.py``. The graph is written in the
patterns LCE's converter matches (docs/lce.md). ``tf`` is passed in: importing
this module loads no TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from binface.runtime.errors import UnsupportedOpError
from binface.runtime.lce.plan import conv_padding, resolve_plans, same_pads
from binface.runtime.ops.functions import BINARY, REDUCE, UNARY
from binface.runtime.ops.table import OPDEFS

NHWC = (0, 2, 3, 1)


@dataclass
class _V:
    """A TensorFlow tensor and its layout: physical axis j holds logical axis perm[j]."""

    t: Any
    perm: tuple


def _identity(n: int) -> tuple:
    return tuple(range(n))


def _drop_axes(perm: tuple, removed: list[int]) -> tuple:
    """The layout after removing the logical axes ``removed`` (and renumbering)."""
    keep = [d for d in perm if d not in removed]
    return tuple(d - sum(1 for r in removed if r < d) for d in keep)


class TFBuilder:
    """Writes one IR graph as TensorFlow ops on an NHWC input of batch ``n``."""

    def __init__(self, ir, tf, n: int = 1) -> None:
        self.ir = ir
        self.tf = tf
        self.n = n
        self.shapes, self.plans = resolve_plans(ir, n)
        self.env: dict[str, _V] = {}
        self.neg_inf_pads: dict[str, tuple] = {}

    # -- layouts
    def to_perm(self, v: _V, target: tuple):
        if v.perm == target:
            return v.t
        return self.tf.transpose(v.t, [v.perm.index(d) for d in target])

    def canon(self, v: _V):
        return self.to_perm(v, _identity(len(v.perm)))

    def nhwc(self, name: str):
        v = self.env[name]
        if len(v.perm) != 4:
            raise UnsupportedOpError(f"expected a 4-D tensor for {name}, got rank {len(v.perm)}")
        return self.to_perm(v, NHWC)

    def const_like(self, arr: np.ndarray, rank: int, perm: tuple):
        """A constant with logical (numpy-broadcast) shape, laid out as ``perm``."""
        a = np.asarray(arr, np.float32)
        a = a.reshape((1,) * (rank - a.ndim) + a.shape)
        return self.tf.constant(np.ascontiguousarray(a.transpose(perm)))

    def channel_vec(self, arr: np.ndarray, v: _V, axis: int):
        """A per-channel vector broadcast along logical ``axis`` of ``v``."""
        rank = len(v.perm)
        shape = [1] * rank
        shape[v.perm.index(axis)] = -1
        while len(shape) > 1 and shape[0] == 1:  # (C,) on the last axis: LCE fuses only 1-D
            shape.pop(0)
        return self.tf.constant(np.asarray(arr, np.float32).reshape(shape))

    def set(self, name: str, t, perm: tuple) -> None:
        self.env[name] = _V(t, tuple(perm))

    # -- driver
    def build(self, x_nhwc):
        self.set(self.ir.input, x_nhwc, NHWC if len(self.shapes[self.ir.input]) == 4
                 else _identity(len(self.shapes[self.ir.input])))
        for i, node in enumerate(self.ir.nodes):
            d = OPDEFS.get(node.op)
            if d is None or d.lce is None:
                why = f" ({d.lce_refusal})" if d is not None and d.lce_refusal else ""
                raise UnsupportedOpError(f"LCE export: op {node.op!r} is not supported{why}")
            fn = getattr(self, d.lce)
            with self.tf.name_scope(f"n{i}"):
                fn(node, **node.attrs)
        if len(self.ir.outputs) != 1:
            raise UnsupportedOpError("LCE export: models with several outputs are not supported")
        return self.canon(self.env[self.ir.outputs[0]])

    def x(self, node) -> _V:
        name = node.inputs[0]
        if name in self.ir.consts and name not in self.env:
            arr = self.ir.consts[name].astype(np.float32)
            self.set(name, self.tf.constant(arr), _identity(arr.ndim))
        return self.env[name]

    def out(self, node, t, perm) -> None:
        self.set(node.outputs[0], t, perm)

    # -- quantizers and convolutions
    def quantize(self, t, q: dict, binary_pattern: bool):
        tf = self.tf
        kind = q["kind"]
        if kind == "none":
            return t
        if kind == "pos":
            if binary_pattern:  # larq's ste_sign: the pattern LCE turns into LceQuantize
                return tf.sign(tf.sign(t) + 0.1)
            return tf.cast(t >= 0, tf.float32) * 2.0 - 1.0
        if kind == "neg":  # one-bit DoReFa: sign with sign(0) = -1, a float op for LCE
            return tf.cast(t > 0, tf.float32) * 2.0 - 1.0
        if kind == "dorefa":
            levels = float(2 ** q["k_bit"] - 1)
            return tf.round(tf.clip_by_value(t, 0.0, 1.0) * levels) / levels
        raise UnsupportedOpError(f"LCE export: quantizer kind {kind!r} is not supported")

    def conv2d(self, t, w: np.ndarray, stride, dilation, pads, pad_value: float, groups: int,
               in_hw: tuple[int, int]):
        """NHWC conv of ``t`` with a torch (O, Cg, kh, kw) kernel."""
        tf = self.tf
        o, cg, kh, kw = w.shape
        c = cg * groups
        padding, crop = "VALID", None
        if any(pads):
            padding, pads, crop = conv_padding(in_hw, (kh, kw), stride, dilation, list(pads),
                                                pad_value)
            if padding == "VALID":
                t = tf.pad(t, [[0, 0], pads[:2], pads[2:], [0, 0]],
                           constant_values=float(pad_value))
        strides = [1, int(stride[0]), int(stride[1]), 1]
        dil = [1, int(dilation[0]), int(dilation[1]), 1]
        if groups > 1 and cg == 1 and stride[0] == stride[1]:
            mult = o // c
            f = w.reshape(c, mult, kh, kw).transpose(2, 3, 0, 1)  # kh, kw, C, mult
            y = tf.nn.depthwise_conv2d(t, tf.constant(np.ascontiguousarray(f, np.float32)),
                                       strides, padding, dilations=dil[1:3])
        else:
            f = np.ascontiguousarray(w.transpose(2, 3, 1, 0), np.float32)  # kh, kw, Cg, O
            y = tf.nn.conv2d(t, tf.constant(f), strides, padding, dilations=dil)
        return y if crop is None else y[:, :crop[0], :crop[1], :]

    def dense(self, v: _V, w: np.ndarray, b: np.ndarray | None):
        """x @ w.T (+ b) on the last logical axis, as a 2-D matmul (TFLite FULLY_CONNECTED)."""
        tf = self.tf
        t = self.canon(v)
        shape = list(t.shape)
        k = shape[-1]
        # (O, K) weights with transpose_b: TFLite's FULLY_CONNECTED layout, no folded copy
        y = tf.matmul(tf.reshape(t, [-1, k]), tf.constant(np.ascontiguousarray(w, np.float32)),
                      transpose_b=True)
        if b is not None:
            y = y + tf.constant(np.asarray(b, np.float32))
        return tf.reshape(y, [*shape[:-1], w.shape[0]])

    def op_qlayer(self, node, layer, **a) -> None:
        plan = self.plans[node.outputs[0]]
        consts = self.ir.consts
        shift = consts.get(a["in_shift"]) if "in_shift" in a else None
        bias = consts.get(a["bias"]) if "bias" in a else None
        if layer == "linear":
            v = self.x(node)
            t = self.canon(v)
            if shift is not None:
                t = t + self.tf.constant(shift.reshape(-1).astype(np.float32))
            t = self.quantize(t, a["in_q"], False)
            y = self.dense(_V(t, _identity(len(v.perm))), consts[a["weight"]], bias)
            self.out(node, y, _identity(len(v.perm)))
            return
        t = self.nhwc(node.inputs[0])
        hw = tuple(self.shapes[node.inputs[0]][2:4])
        if shift is not None:
            t = t + self.tf.constant(shift.reshape(-1).astype(np.float32))
        t = self.quantize(t, a["in_q"], plan.binary)
        if layer == "sep":
            dw = consts[a["dw_weight"]]
            t = self.conv2d(t, dw, a["stride"], a["dilation"], a["pads"], a["pad_value"],
                            int(a["groups"]), hw)
            y = self.conv2d(t, consts[a["pw_weight"]], (1, 1), (1, 1), [0, 0, 0, 0], 0.0, 1,
                            tuple(t.shape[1:3]))
        else:
            y = self.conv2d(t, consts[a["weight"]], a["stride"], a["dilation"], a["pads"],
                            a["pad_value"], int(a["groups"]), hw)
        if bias is not None:
            y = y + self.tf.constant(np.asarray(bias, np.float32))
        self.out(node, y, NHWC)

    def op_quant(self, node, q, **a) -> None:
        v = self.x(node)
        t = v.t
        if "shift" in a:
            t = t + self.channel_vec(self.ir.consts[a["shift"]], v, 1)
        # a free quantizer feeding a binary layer keeps the pattern (e.g. before a max-pool)
        self.out(node, self.quantize(t, q, True), v.perm)

    def op_conv(self, node, weight, stride, dilation, pads, pad_value, groups, bias=None):
        t = self.nhwc(node.inputs[0])
        y = self.conv2d(t, self.ir.consts[weight], stride, dilation, pads, pad_value, groups,
                        tuple(self.shapes[node.inputs[0]][2:4]))
        if bias is not None:
            y = y + self.tf.constant(self.ir.consts[bias].astype(np.float32))
        self.out(node, y, NHWC)

    def op_linear(self, node, weight, bias=None):
        v = self.x(node)
        b = self.ir.consts[bias] if bias is not None else None
        self.out(node, self.dense(v, self.ir.consts[weight], b), _identity(len(v.perm)))

    # -- per-channel and element-wise ops
    def op_affine(self, node, scale, shift, axis):
        v = self.x(node)
        c = self.ir.consts
        y = v.t * self.channel_vec(c[scale], v, axis) + self.channel_vec(c[shift], v, axis)
        self.out(node, y, v.perm)

    def op_prelu(self, node, slope, axis):
        tf = self.tf
        v = self.x(node)
        s = self.ir.consts[slope]
        a = (tf.constant(np.float32(s.reshape(-1)[0])) if s.size == 1
             else self.channel_vec(s, v, axis))
        self.out(node, tf.maximum(v.t, 0.0) + a * tf.minimum(v.t, 0.0), v.perm)

    def op_unary(self, node, fn):
        v = self.x(node)
        entry = UNARY.get(fn)
        if entry is None or entry.tf is None:
            why = f" ({entry.lce_refusal})" if entry is not None else ""
            raise UnsupportedOpError(f"LCE export: unary {fn!r} is not supported{why}")
        self.out(node, entry.tf(self.tf, v.t), v.perm)

    def op_clamp(self, node, min=None, max=None):  # noqa: A002 - IR attribute names
        tf = self.tf
        v = self.x(node)
        t = v.t
        if min is not None:
            t = tf.maximum(t, float(min))
        if max is not None:
            t = tf.minimum(t, float(max))
        self.out(node, t, v.perm)

    def operands(self, node) -> tuple[list, tuple]:
        """Both operands of an element-wise op in one layout (constants laid out to match)."""
        names = node.inputs
        dyn = [n for n in names if n not in self.ir.consts]
        vs = [self.env[n] for n in dyn]
        rank = max(len(self.shapes[n]) for n in names)
        if all(len(v.perm) == rank and v.perm == vs[0].perm for v in vs):
            perm = vs[0].perm
        else:
            perm = _identity(rank)
        out = []
        for n in names:
            if n in self.ir.consts:
                out.append(self.const_like(self.ir.consts[n], rank, perm))
            else:
                v = self.env[n]
                t = self.canon(v) if v.perm != perm else v.t
                if len(v.perm) < rank:
                    t = self.tf.reshape(t, (1,) * (rank - len(v.perm)) + tuple(t.shape))
                out.append(t)
        return out, perm

    def op_binary(self, node, fn):
        (a, b), perm = self.operands(node)
        self.out(node, BINARY[fn].tf(self.tf, a, b), perm)

    def op_softmax(self, node, dim):
        v = self.x(node)
        self.out(node, self.tf.nn.softmax(v.t, axis=v.perm.index(dim % len(v.perm))), v.perm)

    def op_matmul(self, node):
        tf = self.tf
        ts = []
        for n in node.inputs:
            ts.append(tf.constant(self.ir.consts[n].astype(np.float32)) if n in self.ir.consts
                      else self.canon(self.env[n]))
        y = tf.matmul(*ts)
        self.out(node, y, _identity(len(self.shapes[node.outputs[0]])))

    # -- shapes and layouts
    def op_reshape(self, node, shape):
        v = self.x(node)
        in_shape = self.shapes[node.inputs[0]]
        target = list(self.shapes[node.outputs[0]])
        nonunit = [d for d in v.perm if in_shape[d] != 1]
        t = v.t if nonunit == sorted(nonunit) else self.canon(v)  # same element order: no copy
        self.out(node, self.tf.reshape(t, target), _identity(len(target)))

    def op_expand(self, node, shape):
        v = self.x(node)
        target = list(self.shapes[node.outputs[0]])
        t = self.canon(v)
        if len(v.perm) < len(target):
            t = self.tf.reshape(t, (1,) * (len(target) - len(v.perm)) + tuple(t.shape))
        self.out(node, self.tf.broadcast_to(t, target), _identity(len(target)))

    def op_permute(self, node, dims):
        v = self.x(node)
        dims = [d % len(v.perm) for d in dims]
        self.out(node, v.t, tuple(dims.index(d) for d in v.perm))

    def op_cat(self, node, dim):
        dyn = [self.env[n] for n in node.inputs if n not in self.ir.consts]
        rank = len(self.shapes[node.outputs[0]])
        perm = dyn[0].perm if dyn and len(dyn[0].perm) == rank else _identity(rank)
        ts = [self.const_like(self.ir.consts[n], rank, perm) if n in self.ir.consts
              else self.to_perm(self.env[n], perm) for n in node.inputs]
        self.out(node, self.tf.concat(ts, axis=perm.index(dim % rank)), perm)

    def op_stack(self, node, dim):
        ts = [self.tf.constant(self.ir.consts[n].astype(np.float32)) if n in self.ir.consts
              else self.canon(self.env[n]) for n in node.inputs]
        rank = len(self.shapes[node.outputs[0]])
        self.out(node, self.tf.stack(ts, axis=dim % rank), _identity(rank))

    def op_slice(self, node, dim, start, end, step):
        v = self.x(node)
        rank = len(v.perm)
        dim %= rank
        size = self.shapes[node.inputs[0]][dim]
        s, e, st = slice(start, end, step).indices(size)
        idx = [slice(None)] * rank
        idx[v.perm.index(dim)] = slice(s, e, st)
        self.out(node, v.t[tuple(idx)], v.perm)

    def op_select(self, node, dim, index):
        v = self.x(node)
        rank = len(v.perm)
        dim %= rank
        index %= self.shapes[node.inputs[0]][dim]
        idx: list = [slice(None)] * rank
        idx[v.perm.index(dim)] = index
        self.out(node, v.t[tuple(idx)], _drop_axes(v.perm, [dim]))

    def op_split(self, node, dim, sizes, squeeze):
        tf = self.tf
        v = self.x(node)
        dim %= len(v.perm)
        ax = v.perm.index(dim)
        parts = tf.split(v.t, [int(s) for s in sizes], axis=ax)
        perm = v.perm
        if squeeze:
            parts = [tf.squeeze(p, axis=ax) for p in parts]
            perm = _drop_axes(v.perm, [dim])
        for name, p in zip(node.outputs, parts, strict=True):
            self.set(name, p, perm)

    def op_reduce(self, node, fn, dims, keepdim):
        v = self.x(node)
        axes = [v.perm.index(d) for d in dims]
        y = REDUCE[fn].tf(self.tf, v.t, axes, bool(keepdim))
        self.out(node, y, v.perm if keepdim else _drop_axes(v.perm, list(dims)))

    def op_vector_norm(self, node, ord, dims, keepdim):  # noqa: A002 - IR attribute name
        tf = self.tf
        v = self.x(node)
        axes = [v.perm.index(d) for d in dims]
        kd = bool(keepdim)
        if ord == 2:
            y = tf.sqrt(tf.reduce_sum(v.t * v.t, axis=axes, keepdims=kd))
        elif ord == 1:
            y = tf.reduce_sum(tf.abs(v.t), axis=axes, keepdims=kd)
        elif math.isinf(ord) and ord > 0:
            y = tf.reduce_max(tf.abs(v.t), axis=axes, keepdims=kd)
        else:
            y = tf.pow(tf.reduce_sum(tf.pow(tf.abs(v.t), ord), axis=axes, keepdims=kd), 1 / ord)
        self.out(node, y, v.perm if kd else _drop_axes(v.perm, list(dims)))

    # -- pooling, padding, resizing
    def _pool_pads(self, in_hw, kernel, stride, pads, ceil_mode) -> list[int]:
        """Explicit [t, b, l, r] pads, with the extra bottom/right that ceil_mode adds."""
        out = list(pads)
        if ceil_mode:
            for i, (n, k, s) in enumerate(zip(in_hw, kernel, stride, strict=True)):
                lo, hi = pads[2 * i], pads[2 * i + 1]
                o = math.ceil((n + lo + hi - k) / s) + 1
                if (o - 1) * s >= n + lo:  # torch: the last window must start inside
                    o -= 1
                out[2 * i + 1] = max(hi, (o - 1) * s + k - n - lo)
        return out

    def op_maxpool(self, node, kernel, stride, pads, dilation, ceil_mode):
        tf = self.tf
        if list(dilation) != [1, 1]:
            raise UnsupportedOpError("LCE export: dilated max-pool is not supported")
        name = node.inputs[0]
        hw = tuple(self.shapes[name][2:4])
        pads = self._pool_pads(hw, kernel, stride, pads, ceil_mode)
        padding = "VALID"
        pre = self.neg_inf_pads.get(name)
        if not any(pads) and pre is not None:
            src, p, src_hw = pre
            if p == same_pads(*src_hw, kernel, stride, (1, 1)):
                t, padding = src, "SAME"  # TF's "same" max-pool ignores the padding
        if padding == "VALID":
            t = self.nhwc(name)
            if any(pads):
                t = tf.pad(t, [[0, 0], pads[:2], pads[2:], [0, 0]], constant_values=-np.inf)
        y = tf.nn.max_pool2d(t, list(kernel), list(stride), padding)
        self.out(node, y, NHWC)

    def op_avgpool(self, node, kernel, stride, pads, ceil_mode, count_include_pad, divisor):
        tf = self.tf
        name = node.inputs[0]
        hw = tuple(self.shapes[name][2:4])
        t = self.nhwc(name)
        full = self._pool_pads(hw, kernel, stride, pads, ceil_mode)
        if full != list(pads):
            raise UnsupportedOpError("LCE export: avg-pool with ceil_mode is not supported")
        padding = "VALID"
        if any(pads):
            if count_include_pad:
                t = tf.pad(t, [[0, 0], pads[:2], pads[2:], [0, 0]])
            elif pads == same_pads(*hw, kernel, stride, (1, 1)):
                padding = "SAME"
            else:
                raise UnsupportedOpError("LCE export: avg-pool padding that excludes the pad "
                                         "and is not TensorFlow's 'same' is not supported")
        y = tf.nn.avg_pool2d(t, list(kernel), list(stride), padding)
        if divisor:
            y = y * (kernel[0] * kernel[1] / float(divisor))
        self.out(node, y, NHWC)

    def op_adaptive_avgpool(self, node, size):
        tf = self.tf
        name = node.inputs[0]
        h, w = self.shapes[name][2:4]
        oh, ow = size
        t = self.nhwc(name)
        if (oh, ow) == (1, 1):
            y = tf.reduce_mean(t, axis=[1, 2], keepdims=True)
        elif h % oh == 0 and w % ow == 0:
            y = tf.nn.avg_pool2d(t, [h // oh, w // ow], [h // oh, w // ow], "VALID")
        else:
            rows = []
            for i in range(oh):
                r0, r1 = (i * h) // oh, -(-((i + 1) * h) // oh)
                cols = [tf.reduce_mean(t[:, r0:r1, (j * w) // ow:-(-((j + 1) * w) // ow)],
                                       axis=[1, 2], keepdims=True) for j in range(ow)]
                rows.append(tf.concat(cols, axis=2))
            y = tf.concat(rows, axis=1)
        self.out(node, y, NHWC)

    def op_pad(self, node, pads, value):
        tf = self.tf
        v = self.x(node)
        rank = len(v.perm)
        logical = [[0, 0] for _ in range(rank)]
        for i in range(len(pads) // 2):
            logical[rank - 1 - i] = [int(pads[2 * i]), int(pads[2 * i + 1])]
        if any(p < 0 for pr in logical for p in pr):
            raise UnsupportedOpError("LCE export: negative padding is not supported")
        phys = [logical[d] for d in v.perm]
        y = tf.pad(v.t, phys, constant_values=float(value))
        self.out(node, y, v.perm)
        if rank == 4 and value == -np.inf and all(p == [0, 0] for p in logical[:2]):
            hw = tuple(self.shapes[node.inputs[0]][2:4])
            self.neg_inf_pads[node.outputs[0]] = (self.nhwc(node.inputs[0]),
                                                  [*logical[2], *logical[3]], hw)

    def op_interpolate(self, node, mode, size, align_corners=False):
        tf = self.tf
        t = self.nhwc(node.inputs[0])
        if mode == "nearest":
            y = tf.compat.v1.image.resize_nearest_neighbor(t, list(size), align_corners=False,
                                                           half_pixel_centers=False)
        else:
            y = tf.compat.v1.image.resize_bilinear(t, list(size), align_corners=align_corners,
                                                   half_pixel_centers=not align_corners)
        self.out(node, y, NHWC)

    def op_full_like(self, node, value):
        v = self.x(node)
        self.out(node, self.tf.zeros_like(v.t) + float(value), v.perm)

    # -- normalisation
    def op_layer_norm(self, node, ndim, eps, weight=None, bias=None):
        tf = self.tf
        v = self.x(node)
        rank = len(v.perm)
        tail = list(range(rank - ndim, rank))
        t = v.t if list(v.perm[rank - ndim:]) == tail else None
        perm = v.perm if t is not None else _identity(rank)
        t = t if t is not None else self.canon(v)
        axes = list(range(rank - ndim, rank))
        mean = tf.reduce_mean(t, axis=axes, keepdims=True)
        d = t - mean
        var = tf.reduce_mean(d * d, axis=axes, keepdims=True)
        y = d * tf.math.rsqrt(var + float(eps))
        if weight is not None:
            y = y * tf.constant(self.ir.consts[weight].astype(np.float32))
        if bias is not None:
            y = y + tf.constant(self.ir.consts[bias].astype(np.float32))
        self.out(node, y, perm)

    def op_group_norm(self, node, groups, eps, weight=None, bias=None):
        tf = self.tf
        v = self.x(node)
        shape = self.shapes[node.inputs[0]]
        t = self.canon(v)
        g = tf.reshape(t, [shape[0], int(groups), -1])
        mean = tf.reduce_mean(g, axis=2, keepdims=True)
        d = g - mean
        var = tf.reduce_mean(d * d, axis=2, keepdims=True)
        y = tf.reshape(d * tf.math.rsqrt(var + float(eps)), list(shape))
        vc = _V(y, _identity(len(shape)))
        if weight is not None:
            y = y * self.channel_vec(self.ir.consts[weight], vc, 1)
        if bias is not None:
            y = y + self.channel_vec(self.ir.consts[bias], vc, 1)
        self.out(node, y, _identity(len(shape)))
