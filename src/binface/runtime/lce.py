"""ARM deployment through the Larq Compute Engine (LCE), and LCE as a measured peer.

LCE converts TensorFlow graphs, so a binface model goes PyTorch -> binface IR
(``capture.py``, the same trace the packed engine lowers) -> TensorFlow ops in
NHWC -> LCE converter (target "arm") -> ``.tflite``. The TensorFlow graph is
written in the patterns LCE's converter matches (REFERENCE section 5):

- a sign-type binary activation as ``sign(sign(x) + 0.1)`` (larq's ``ste_sign``);
- binary weights as +-1 (or +-scale per output channel) constants, HWIO;
- "same" padding with +1 as an explicit ``PadV2(1)`` before a "valid" conv, with 0
  as TF's "same" padding;
- BatchNorm as a multiply/add after the conv, which LCE folds into the binary
  conv's output transform; max-pool followed by a sign becomes a binary max-pool.

Layers LCE cannot run in binary (DoReFa inputs, binary depthwise / separable /
dense layers, grouped binary convs with < 32 channels per group) are written with
a sign formula LCE does not match, so they convert to plain float TFLite ops
instead of failing; :func:`layer_report` reads the converted flatbuffer and says
for every conv, dense and max-pool layer which kernel LCE really runs.

TensorFlow is imported only here, only when asked for (the ``lce`` extra).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from binface.errors import BinfaceError, InputShapeError
from binface.runtime.errors import RuntimeUnavailableError, UnsupportedOpError

LCE_HINT = "the lce format and runtime need the `lce` extra: pip install 'binface[lce]'"
BINARY_OPS = ("LceBconv2d", "LceBMaxPool2d")
NHWC = (0, 2, 3, 1)


# ---------------------------------------------------------------- imports
@contextlib.contextmanager
def _quiet_fd2():
    """Silence C++ logging on stderr (TF start-up, MLIR diagnostics) for a block."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (embedded): nothing to silence
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_lce():
    """(tensorflow, larq_compute_engine), or a one-line error saying how to get them.

    ``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow loads: LCE 0.16's
    converter imports ``tensorflow.python.keras``.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if int(np.__version__.split(".")[0]) >= 2:
        try:
            import larq_compute_engine  # noqa: F401
        except ImportError:
            raise RuntimeUnavailableError(LCE_HINT) from None
        raise RuntimeUnavailableError(
            f"LCE 0.16's interpreter needs numpy < 2 (found {np.__version__}): "
            "pip install 'binface[lce]' installs a matching numpy")
    try:
        with _quiet_fd2():
            import larq_compute_engine as lce
            import tensorflow as tf
    except ImportError:
        raise RuntimeUnavailableError(LCE_HINT) from None
    return tf, lce


def lce_available() -> bool:
    """True when the ``lce`` extra is installed and usable."""
    try:
        import_lce()
    except RuntimeUnavailableError:
        return False
    return True


# ---------------------------------------------------------------- which layers run binary
@dataclass
class Plan:
    """What LCE should do with one quantized layer: binary or float, and why."""

    binary: bool
    reason: str = ""
    note: str = ""


def _same_pads(h: int, w: int, kernel, stride, dilation) -> list[int]:
    from binface.nn.layers import same_padding

    pt, pb = same_padding(h, kernel[0], stride[0], dilation[0])
    pl, pr = same_padding(w, kernel[1], stride[1], dilation[1])
    return [pt, pb, pl, pr]


def plan_qlayer(node, shapes: dict, consts: dict) -> Plan:
    """Whether LCE 0.16 can run a ``qlayer`` node as ``LceBconv2d`` (REFERENCE section 5)."""
    from binface.runtime.lower import sign_scale

    a = node.attrs
    kind = a["in_q"]["kind"]
    if a["layer"] == "linear":
        return Plan(False, "dense layer: LCE has no binary dense kernel")
    if a["layer"] == "sep":
        return Plan(False, "separable conv: LCE runs binary depthwise/separable convs in float")
    if kind == "none":
        return Plan(False, "float input (no input quantizer)")
    if kind == "neg":
        return Plan(False, "DoReFa input quantizer: LCE binarises sign-type quantizers only")
    if kind == "dorefa":
        return Plan(False, f"{a['in_q']['k_bit']}-bit DoReFa activations")
    w = consts[a["weight"]]
    if sign_scale(w) is None:
        return Plan(False, "float (not +-1) kernel")
    groups = int(a["groups"])
    cg = w.shape[1]
    note = ""
    if groups > 1:
        if cg == 1:
            return Plan(False, "binary depthwise conv: LCE runs it in float")
        if cg % 32:
            return Plan(False, f"grouped binary conv with {cg} input channels per group "
                               "(LCE needs a multiple of 32)")
        note = "grouped: needs LCE's indirect BGEMM kernel"
    pads = a["pads"]
    if any(pads):
        h, w_ = shapes[node.inputs[0]][2], shapes[node.inputs[0]][3]
        if pads != _same_pads(h, w_, a["kernel"], a["stride"], a["dilation"]):
            return Plan(False, "padding that is not TensorFlow's 'same'")
    return Plan(True, "", note)


def resolve_plans(ir, n: int = 1) -> tuple[dict, dict[str, Plan]]:
    """Concrete shapes for batch ``n`` and the plan of every ``qlayer`` node."""
    from binface.runtime.engine import resolve

    shapes = {k: resolve(v, n) for k, v in ir.shapes.items()}
    plans = {node.outputs[0]: plan_qlayer(node, shapes, ir.consts) for node in ir.nodes
             if node.op == "qlayer"}
    return shapes, plans


def _lce_sees_same(before: int, after: int, size: int, out: int, stride: int) -> bool:
    """LCE 0.16's test for "this explicit pad is 'same'" (``IsSamePadding1D``).

    It ignores the kernel size, so e.g. torch's (1, 1) pads of a stride-2 3x3 conv
    on an even size pass, although TF's "same" pads (0, 1) there; LCE then fuses
    the pad into a "same" conv and shifts the output by one pixel.
    """
    total = before + after
    return out == -(-size // stride) and before == total // 2 and after == (total + 1) // 2


def _conv_padding(in_hw, kernel, stride, dilation, pads: list[int], pad_value: float
                  ) -> tuple[str, list[int], tuple[int, int] | None]:
    """("SAME" | "VALID", explicit pads, crop) for a conv with torch-style ``pads``.

    Pads no window reaches are dropped. When LCE would wrongly fuse the explicit
    pad into a "same" conv (see :func:`_lce_sees_same`), the pad grows by one
    stride at the bottom/right, so the output is one larger and cannot pass LCE's
    test, and ``crop`` cuts the extra row and column off again.
    """
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=True)]
    outs = [(n + pads[2 * i] + pads[2 * i + 1] - eff[i]) // stride[i] + 1
            for i, n in enumerate(in_hw)]
    trimmed = list(pads)
    for i, n in enumerate(in_hw):
        need = max(0, (outs[i] - 1) * stride[i] + eff[i] - (n + pads[2 * i]))
        trimmed[2 * i + 1] = min(pads[2 * i + 1], need)
    same = _same_pads(*in_hw, kernel, stride, dilation)
    if pad_value == 0.0 and trimmed == same:
        return "SAME", trimmed, None
    fooled = all(_lce_sees_same(trimmed[2 * i], trimmed[2 * i + 1], n, outs[i], stride[i])
                 for i, n in enumerate(in_hw))
    if pad_value == 0.0 and fooled:
        trimmed[1] += stride[0]
        trimmed[3] += stride[1]
        return "VALID", trimmed, (outs[0], outs[1])
    return "VALID", trimmed, None


# ---------------------------------------------------------------- IR -> TensorFlow
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
            fn = getattr(self, f"op_{node.op}", None)
            if fn is None:
                raise UnsupportedOpError(f"LCE export: op {node.op!r} is not supported")
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
            padding, pads, crop = _conv_padding(in_hw, (kh, kw), stride, dilation, list(pads),
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
        tf = self.tf
        t = self.x(node).t
        table = {
            "relu": tf.nn.relu, "relu6": tf.nn.relu6, "sigmoid": tf.sigmoid, "tanh": tf.tanh,
            "silu": lambda z: z * tf.sigmoid(z),
            "hardswish": lambda z: z * tf.nn.relu6(z + 3.0) / 6.0,
            "hardsigmoid": lambda z: tf.nn.relu6(z + 3.0) / 6.0,
            # this form converts to TFLite's GELU op (tf.nn.gelu needs an Erfc custom op)
            "gelu": lambda z: z * 0.5 * (1.0 + tf.math.erf(z * 0.7071067811865476)),
            "gelu_tanh": lambda z: tf.nn.gelu(z, approximate=True),
            "neg": tf.negative, "exp": tf.exp, "sqrt": tf.sqrt, "rsqrt": tf.math.rsqrt,
            "abs": tf.abs, "erf": tf.math.erf, "reciprocal": lambda z: 1.0 / z, "log": tf.math.log,
            "sin": tf.sin, "cos": tf.cos, "sign_raw": tf.sign,
        }
        if fn not in table:
            raise UnsupportedOpError(f"LCE export: unary {fn!r} is not supported")
        self.out(node, table[fn](t), self.x(node).perm)

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
        tf = self.tf
        (a, b), perm = self.operands(node)
        ops = {"add": tf.add, "sub": tf.subtract, "mul": tf.multiply, "div": tf.divide,
               "pow": tf.pow, "maximum": tf.maximum, "minimum": tf.minimum}
        self.out(node, ops[fn](a, b), perm)

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
        tf = self.tf
        v = self.x(node)
        axes = [v.perm.index(d) for d in dims]
        f = {"mean": tf.reduce_mean, "sum": tf.reduce_sum, "amax": tf.reduce_max,
             "amin": tf.reduce_min}[fn]
        y = f(v.t, axis=axes, keepdims=bool(keepdim))
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
            if p == _same_pads(*src_hw, kernel, stride, (1, 1)):
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
            elif pads == _same_pads(*hw, kernel, stride, (1, 1)):
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


# ---------------------------------------------------------------- conversion
def convert_ir(ir, input_shape_nhwc: tuple[int, ...]) -> bytes:
    """The LCE flatbuffer (target "arm") of an IR graph on an NHWC float input."""
    tf, lce = import_lce()
    builder = TFBuilder(ir, tf, n=input_shape_nhwc[0])
    untranslatable: list[BinfaceError] = []

    class _Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec(list(input_shape_nhwc), tf.float32)])
        def __call__(self, x):
            try:
                return builder.build(x)
            except BinfaceError as exc:  # tf.function re-raises it as "StagingError: in user code"
                untranslatable.append(exc)
                raise

    module = _Model()
    with tempfile.TemporaryDirectory(prefix="binface-lce-") as tmp, _quiet_fd2():
        try:
            tf.saved_model.save(module, tmp)
            return lce.convert_saved_model(tmp, target="arm")
        except BinfaceError:
            raise
        except Exception as exc:  # noqa: BLE001 - TensorFlow's messages run for pages
            if untranslatable:
                raise untranslatable[0] from None
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
            raise UnsupportedOpError(f"LCE conversion failed: {type(exc).__name__}: "
                                     f"{first[:200]}") from None


# ---------------------------------------------------------------- reading the flatbuffer
def tflite_ops(flatbuffer: bytes, name: str = "the model") -> list[dict]:
    """The ops of a ``.tflite`` in execution order: code, tensor shapes/types, names."""
    import_lce()
    from tensorflow.lite.python import schema_py_generated as schema

    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    except Exception:  # noqa: BLE001 - a corrupt flatbuffer raises anything
        raise BinfaceError(f"{name}: not a TFLite flatbuffer") from None
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for oc in model.operatorCodes:
        if oc.customCode:
            codes.append(oc.customCode.decode())
        else:
            code = max(int(oc.builtinCode), int(getattr(oc, "deprecatedBuiltinCode", 0) or 0))
            codes.append(builtin.get(code, str(code)))
    sg = model.subgraphs[0]

    def tensor(i: int) -> dict:
        t = sg.tensors[i]
        shape = [] if t.shape is None else [int(s) for s in t.shape]
        return {"shape": shape, "type": int(t.type), "name": (t.name or b"").decode()}

    ops = []
    for op in sg.operators:
        ins = [tensor(i) if i >= 0 else None for i in op.inputs]
        outs = [tensor(i) for i in op.outputs]
        ops.append({"code": codes[op.opcodeIndex], "inputs": ins, "outputs": outs})
    return ops


# ---------------------------------------------------------------- per-layer report
@dataclass
class LayerRow:
    index: int
    source: str
    kind: str
    lce_op: str
    binary: bool
    macs: int
    reason: str = ""
    note: str = ""


@dataclass
class LceReport:
    rows: list[LayerRow] = field(default_factory=list)

    @property
    def totals(self) -> dict:
        b = [r for r in self.rows if r.binary]
        return {"layers": len(self.rows), "binary_layers": len(b),
                "float_layers": len(self.rows) - len(b),
                "binary_macs": int(sum(r.macs for r in b)),
                "float_macs": int(sum(r.macs for r in self.rows if not r.binary))}

    def to_dict(self) -> dict:
        return {"layers": [asdict(r) for r in self.rows], "totals": self.totals}

    def render(self) -> str:
        lines = [f"{'#':>3}  {'layer':<34} {'kind':<22} {'LCE op':<18} {'runs':<6} "
                 f"{'MACs':>12}  note"]
        for r in self.rows:
            note = r.reason or r.note
            lines.append(f"{r.index:>3}  {r.source[-34:]:<34} {r.kind:<22} {r.lce_op:<18} "
                         f"{'binary' if r.binary else 'float':<6} {r.macs:>12,}  {note}")
        t = self.totals
        all_macs = max(1, t["binary_macs"] + t["float_macs"])
        lines.append(f"LCE runs {t['binary_layers']} of {t['layers']} conv/dense/pool layers in "
                     f"binary: {t['binary_macs']:,} binary MACs "
                     f"({100 * t['binary_macs'] / all_macs:.1f}% of all layer MACs), "
                     f"{t['float_macs']:,} float MACs")
        return "\n".join(lines) + "\n"


def _conv_key(o: int, kh: int, kw: int, ho: int, wo: int) -> tuple:
    return ("conv", o, kh, kw, ho, wo)


def _tflite_key(op: dict) -> tuple | None:
    code = op["code"]
    out = op["outputs"][0]["shape"]
    if code in ("LceBconv2d", "CONV_2D"):
        f = op["inputs"][1]["shape"]  # O, kh, kw, (words | Cg)
        return _conv_key(f[0], f[1], f[2], out[1], out[2])
    if code == "DEPTHWISE_CONV_2D":
        f = op["inputs"][1]["shape"]  # 1, kh, kw, O
        return _conv_key(f[3], f[1], f[2], out[1], out[2])
    if code == "FULLY_CONNECTED":
        f = op["inputs"][1]["shape"]
        return ("fc", f[0], f[1])
    if code in ("MAX_POOL_2D", "LceBMaxPool2d"):
        return ("pool", out[1], out[2])
    return None


def _ir_layers(ir, shapes: dict) -> list[dict]:
    """Every conv, dense and max-pool node of the IR, with its expected TFLite keys."""
    sources = ir.meta.get("sources", {})
    layers = []
    for node in ir.nodes:
        out = node.outputs[0]
        a = node.attrs
        so = shapes[out]
        src = a.get("source") or sources.get(out, "") or out
        layer = a.get("layer", node.op)
        if layer == "linear":  # a float dense node or a quantized dense layer
            w = ir.consts[a["weight"]]
            layers.append({"node": node, "source": src,
                           "kind": "binary dense" if a.get("w_binary") else "dense",
                           "keys": [("fc", w.shape[0], w.shape[1])],
                           "macs": int(np.prod(so[:-1])) * w.size})
        elif node.op in ("qlayer", "conv"):
            ho, wo = so[2], so[3]
            if layer == "sep":
                dw, pw = ir.consts[a["dw_weight"]], ir.consts[a["pw_weight"]]
                kh, kw = dw.shape[2:]
                layers.append({"node": node, "source": src,
                               "kind": f"binary separable {kh}x{kw}",
                               "keys": [_conv_key(dw.shape[0], kh, kw, ho, wo),
                                        _conv_key(pw.shape[0], 1, 1, ho, wo)],
                               "macs": ho * wo * (dw.size + pw.size)})
                continue
            w = ir.consts[a["weight"]]
            o, cg, kh, kw = w.shape
            groups = int(a["groups"])
            prefix = "binary " if node.op == "qlayer" and a.get("w_binary") else ""
            shape = "depthwise" if groups > 1 and cg == 1 else (
                f"grouped({groups})" if groups > 1 else "conv")
            layers.append({"node": node, "source": src, "kind": f"{prefix}{shape} {kh}x{kw}",
                           "keys": [_conv_key(o, kh, kw, ho, wo)], "macs": ho * wo * w.size,
                           "cin": cg if groups == 1 else None})
        elif node.op == "maxpool":
            k = a["kernel"]
            layers.append({"node": node, "source": src, "kind": f"max-pool {k[0]}x{k[1]}",
                           "keys": [("pool", so[2], so[3])], "macs": 0})
    return layers


def layer_report(ir, flatbuffer: bytes, batch: int = 1) -> LceReport:
    """Which kernel LCE runs for every conv, dense and max-pool layer of ``ir``."""
    shapes, plans = resolve_plans(ir, batch)
    ops = [(i, op, _tflite_key(op)) for i, op in enumerate(tflite_ops(flatbuffer))]
    used: set[int] = set()
    report = LceReport()
    for idx, layer in enumerate(_ir_layers(ir, shapes)):
        found = []
        for key in layer["keys"]:
            alts = [key]
            if key[0] == "conv" and key[2:4] == (1, 1):  # TFLite may run a 1x1 conv as dense
                alts.append(("fc", key[1], layer.get("cin")))
            hit = next((i for i, op, k in ops if k in alts and i not in used), None)
            if hit is not None:
                used.add(hit)
                found.append(ops[hit][1]["code"])
        node = layer["node"]
        plan = plans.get(node.outputs[0])
        binary = bool(found) and all(c in BINARY_OPS for c in found)
        reason = ""
        if not found:
            reason = "not in the converted model (folded or merged by the converter)"
        elif not binary:
            if plan is not None and not plan.binary:
                reason = plan.reason
            elif plan is not None:
                reason = "LCE did not match the binary pattern"
            elif node.op == "maxpool":
                reason = "its output does not feed a binary layer"
        report.rows.append(LayerRow(
            index=idx, source=layer["source"], kind=layer["kind"],
            lce_op="+".join(found) or "-", binary=binary, macs=int(layer["macs"]),
            reason=reason, note=plan.note if plan is not None and binary else ""))
    return report


# ---------------------------------------------------------------- export and run
def export_lce(model, path: str | os.PathLike, input_size: tuple[int, int] | None = None,
               name: str | None = None, channels: int = 3) -> dict:
    """Trace ``model``, translate it to TensorFlow, convert with LCE (target "arm")
    and write the ``.tflite`` atomically; returns a summary with the per-layer report.

    The file takes one NHWC float32 image of batch 1, normalised as the PyTorch model
    expects (binface models take (x - 127.5) / 128).
    """
    import torch

    from binface.fileio import write_bytes
    from binface.models.loading import load_model
    from binface.runtime.capture import capture

    import_lce()
    lm = load_model(model, input_size)
    if name:
        lm.name = name
    with torch.no_grad():
        ir = capture(lm.model, lm.input_size, channels=channels)
    h, w = lm.input_size
    fb = convert_ir(ir, (1, h, w, channels))
    report = layer_report(ir, fb)
    path = Path(path)
    write_bytes(path, fb)
    return {"model": lm.name, "path": str(path), "bytes": len(fb), "format": "lce",
            "input_shape": [1, h, w, channels], "report": report}


class LceRunner:
    """A ``.tflite`` in LCE's Python interpreter; ``run`` takes NCHW like the other runtimes.

    The file is batch 1; a batch is run image by image. Grouped binary convs need
    LCE's indirect BGEMM kernel, chosen here when the file has one.
    """

    def __init__(self, path_or_bytes: str | os.PathLike | bytes, threads: int = 1,
                 use_xnnpack: bool = False) -> None:
        import_lce()
        if isinstance(path_or_bytes, bytes):
            fb = path_or_bytes
        else:
            from binface.data.files import read_bytes

            fb = read_bytes(Path(path_or_bytes), "no such TFLite model")
        ops = tflite_ops(fb, "the model" if isinstance(path_or_bytes, bytes)
                         else str(path_or_bytes))
        indirect = any(_grouped_bconv(op) for op in ops)
        from larq_compute_engine.tflite.python.interpreter import Interpreter

        try:
            with _quiet_fd2():
                self.interpreter = Interpreter(fb, num_threads=int(threads),
                                               use_indirect_bgemm=indirect,
                                               use_xnnpack=use_xnnpack)
        except RuntimeError as exc:
            raise RuntimeUnavailableError(f"LCE cannot load the model: {str(exc)[:200]}") \
                from None
        self.input_shape = tuple(int(d) for d in self.interpreter.input_shapes[0])
        self.ops = ops

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        want = self.input_shape
        if x.ndim != 4 or (x.shape[1], x.shape[2], x.shape[3]) != (want[3], want[1], want[2]):
            raise InputShapeError(f"input of shape {tuple(x.shape)} does not fit this model: "
                                  f"it takes (N, {want[3]}, {want[1]}, {want[2]})")
        pred = self.interpreter.interpreter.predict
        outs = [pred([np.ascontiguousarray(x[i:i + 1].transpose(0, 2, 3, 1))])[0]
                for i in range(x.shape[0])]
        return np.concatenate(outs, axis=0)


def _grouped_bconv(op: dict) -> bool:
    if op["code"] != "LceBconv2d":
        return False
    x, f = op["inputs"][0], op["inputs"][1]
    words_in = x["shape"][-1] if x["type"] == 2 else -(-x["shape"][-1] // 32)  # 2: INT32
    return f["shape"][-1] != words_in


def load_lce(path: str | os.PathLike, threads: int = 1) -> LceRunner:
    """A ``.tflite`` file written by :func:`export_lce`, ready to ``run(x)``."""
    return LceRunner(path, threads)
