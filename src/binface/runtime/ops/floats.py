"""The engine's thin float ops: numpy semantics of the PyTorch op of the same name.

The element-wise functions (``unary``, ``binary``, ``reduce``) come from
:mod:`binface.runtime.ops.functions`.
"""

from __future__ import annotations

import math

import numpy as np

from binface.runtime import kernels as K
from binface.runtime.errors import UnsupportedOpError
from binface.runtime.ops.base import MAX_MACS, Op
from binface.runtime.ops.functions import BINARY, REDUCE, UNARY
from binface.runtime.ops.layout import _F32, _NO_BIAS, as_nchw, like, nhwc, resolve, rows3


def _check_matmul(op: Op, ctx, a_shape: tuple, b_shape: tuple) -> None:
    """Refuse, before numpy allocates it, a product beyond the size or time limits."""
    if len(a_shape) < 1 or len(b_shape) < 2:
        return
    batch = np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
    out = (*batch, *a_shape[-2:-1], b_shape[-1])
    op.room(ctx, out)
    if math.prod(out) * a_shape[-1] > MAX_MACS * max(ctx.n, 1):
        raise op.bad(f"a product of {list(a_shape)} and {list(b_shape)} exceeds the limit of "
                     f"{MAX_MACS} MACs per sample")


class LinearOp(Op):
    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        self.w = self.tensor("weight", _F32, ndim=2)  # [K, O]
        self.b = self.t("bias")

    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        _check_matmul(self, ctx, x.shape, self.w.shape)
        if (x.ndim == 2 and x.dtype == _F32 and x.flags.c_contiguous and x.shape[1] ==
                self.w.shape[0] and (self.b is None or self.b.size == self.w.shape[1])):
            if self.replayed(env, ctx):
                return
            y = self.buffer(ctx, "y", (x.shape[0], self.w.shape[1]))
            b = _NO_BIAS if self.b is None else self.b.reshape(-1).astype(_F32, copy=False)
            calls = [(ctx.k.dense, (x, self.w, b, y, ctx.nt))]
            self.issue(calls)
            env[self.outputs[0]] = y
            self.remember(env, ctx, calls, (x,))
            return
        self._fast = None
        y = np.matmul(x, self.w)
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
        if self.replayed(env, ctx):
            return
        x = env[self.inputs[0]]
        s = _channel_shape(x.ndim, self.axis)
        scale, shift = self.scale.reshape(s), self.shift.reshape(s)
        self._fast = None
        if ew_kernel(self, env, ctx, (x, scale), K.EW_MUL, then=(shift, K.EW_ADD)):
            return
        env[self.outputs[0]] = x * scale + shift


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


class UnaryOp(Op):
    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        fn = self.attrs["fn"]
        if fn not in UNARY:
            raise UnsupportedOpError(f"packed engine: unary function {fn!r} is not supported")
        self.fn = UNARY[fn].np
        self.code = K.EW_SIGMOID if fn == "sigmoid" else None  # a row kernel of its own

    def __call__(self, env, ctx) -> None:
        if self.replayed(env, ctx):
            return
        x = env[self.inputs[0]]
        self._fast = None
        if self.code is None or not ew_kernel(self, env, ctx, (x, x), self.code):
            kept_result(self, env, ctx, x, self.fn)


def kept_result(op: Op, env: dict, ctx, x: np.ndarray, fn) -> None:
    """``y = fn(x)`` by numpy, into a kept buffer, so the op replays (and the flat
    replay reaches the ops after it): the unary functions without a row kernel, and
    what the row kernels leave to numpy. The caller has tried :meth:`Op.replayed`."""
    y = np.asarray(fn(x))
    if ctx.fresh or y.dtype != _F32:
        env[op.outputs[0]] = y
        return
    out = op.buffer(ctx, "y", y.shape)
    np.copyto(out, y)
    env[op.outputs[0]] = out
    op.remember(env, ctx, [(_unary_into, (fn, x, out))], (x,))


def _unary_into(fn, x: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out, fn(x))


_EW_CODES = {"add": K.EW_ADD, "sub": K.EW_SUB, "mul": K.EW_MUL, "div": K.EW_DIV}
_EW_UFUNCS = {code: BINARY[fn].np for fn, code in _EW_CODES.items()}  # the fallbacks


def _ew_call(ctx, y: np.ndarray, a: np.ndarray, b: np.ndarray, code: int) -> tuple:
    """The call that makes ``y = a (code) b`` (EW_COPY: ``y = a``): the ``ew`` row
    kernel, or numpy's ufunc into ``y`` (the same bits, one thread) where the operands'
    layouts do not fold to three strided dims."""
    views = rows3(y, a, b)
    if views is not None:
        return K.ew(code, ctx.k is K.PARALLEL), (views[1], views[2], views[0], ctx.nt)
    if code == K.EW_COPY:
        return np.copyto, (y, a)
    return _EW_UFUNCS[code], (a, b, y)


def ew_kernel(op: Op, env: dict, ctx, ab: tuple, code: int, then: tuple | None = None) -> bool:
    """``y = a (code) b`` (and then ``y = y (code2) c`` for ``then = (c, code2)``) as
    ``ew`` row kernels into a kept buffer laid out as numpy would lay out the result;
    the op's output, and its calls kept for replays. False (nothing done) for trace
    runs and other dtypes."""
    a, b = ab
    extra = () if then is None else (then[0],)
    if ctx.fresh or any(v.dtype != _F32 for v in (a, b, *extra)):
        return False
    shape = np.broadcast_shapes(a.shape, b.shape, *(v.shape for v in extra))
    ref = a if a.shape == shape else b if b.shape == shape else None
    mem, axes = like(ref, shape) if ref is not None else (shape, tuple(range(len(shape))))
    buf = op.buffer(ctx, "y:" + ",".join(map(str, axes)), mem)
    y = op.kept_view(buf, ctx.n, lambda t: t.transpose(axes))
    calls = [_ew_call(ctx, y, a, b, code)]
    if then is not None:
        calls.append(_ew_call(ctx, y, y, then[0], then[1]))
    op.issue(calls)
    env[op.outputs[0]] = y
    op.remember(env, ctx, calls, ab[:op.n_main_inputs])
    return True


class BinaryOp(Op):
    n_inputs = (2, 2)
    n_main_inputs = 2  # replays check both operands

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        fn = self.attrs["fn"]
        if fn not in BINARY:
            raise UnsupportedOpError(f"packed engine: binary function {fn!r} is not supported")
        self.fn = BINARY[fn].np
        self.code = _EW_CODES.get(fn)

    def __call__(self, env, ctx) -> None:
        if self.replayed(env, ctx):
            return
        a, b = env[self.inputs[0]], env[self.inputs[1]]
        if a.shape != b.shape:
            self.room(ctx, np.broadcast_shapes(a.shape, b.shape))
        self._fast = None
        if self.code is not None and ew_kernel(self, env, ctx, (a, b), self.code):
            return
        y = self.fn(a, b)
        env[self.outputs[0]] = y if y.dtype == _F32 else y.astype(_F32)


class ClampOp(Op):
    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        lo, hi = self.attrs.get("min"), self.attrs.get("max")
        # (bound, EW_MAX / EW_MIN) pairs for the row kernels: numpy's clip is
        # minimum(maximum(x, lo), hi)
        self.steps = [(np.array(v, _F32), code) for v, code in
                      ((lo, K.EW_MAX), (hi, K.EW_MIN)) if isinstance(v, (int, float))]

    def __call__(self, env, ctx) -> None:
        if self.replayed(env, ctx):
            return
        x = env[self.inputs[0]]
        self._fast = None
        if self.steps:
            (b, code), then = self.steps[0], self.steps[1] if len(self.steps) > 1 else None
            if ew_kernel(self, env, ctx, (x, b), code, then=then):
                return
        kept_result(self, env, ctx, x, self.clamp)

    def clamp(self, x: np.ndarray) -> np.ndarray:
        lo, hi = self.attrs.get("min"), self.attrs.get("max")
        return np.clip(x, None if lo is None else _F32(lo), None if hi is None else _F32(hi))


class QuantOp(Op):
    """A free-standing quantizer on floats (when no binary layer consumes it)."""

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        self.q = self.attrs.get("q")
        if not isinstance(self.q, dict):
            raise self.bad("attribute 'q' is not a JSON object")
        if self.q.get("kind") == "dorefa":
            self.int_attr("k_bit", 1, 32, where=self.q)
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
        if self.replayed(env, ctx):
            return
        x = env[self.inputs[0]]
        d = int(self.attrs["dim"])
        self._fast = None
        if ctx.fresh or x.dtype != _F32 or not x.size or not -x.ndim <= d < x.ndim:
            env[self.outputs[0]] = _softmax_into(x, d, None)
            return
        xt = np.moveaxis(x, d, -1)  # rows along the softmax's axis
        buf = self.buffer(ctx, "y", xt.shape)
        y = self.kept_view(buf, ctx.n, lambda t: np.moveaxis(t, -1, d))
        x2 = _no_copy(xt, (-1, xt.shape[-1]))
        calls = [(ctx.k.softmax_rows, (x2, buf.reshape(x2.shape), ctx.nt)) if x2 is not None
                 else (_softmax_into, (x, d, y))]
        self.issue(calls)
        env[self.outputs[0]] = y
        self.remember(env, ctx, calls, (x,))


def _softmax_into(x: np.ndarray, d: int, out: np.ndarray | None) -> np.ndarray:
    e = np.exp(x - x.max(axis=d, keepdims=True))
    return np.divide(e, e.sum(axis=d, keepdims=True), out=out)


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
    n_inputs = (2, 2)

    def __call__(self, env, ctx) -> None:
        a, b = env[self.inputs[0]], env[self.inputs[1]]
        _check_matmul(self, ctx, a.shape, b.shape)
        env[self.outputs[0]] = np.matmul(a, b)


def _no_copy(x: np.ndarray, shape: tuple) -> np.ndarray | None:
    """``x.reshape(shape)`` if numpy can make it a view, else None (numpy before 2.1
    has no ``reshape(copy=False)``; this runs once per op, not in replays)."""
    y = x.reshape(shape)
    return y if np.may_share_memory(y, x) or not x.size else None


_RED_CODES = {"sum": K.RED_SUM, "mean": K.RED_MEAN, "amax": K.RED_MAX, "amin": K.RED_MIN}


class ReshapeOp(Op):
    def __call__(self, env, ctx) -> None:
        if self.replayed(env, ctx):
            return
        x = env[self.inputs[0]]
        shape = resolve(self.attrs["shape"], ctx.n)
        last = self.__dict__.get("_yl")
        if last is not None and last[0] is x and last[1] == ctx.n:
            y, calls = last[2], last[3]
        else:
            y, calls = _no_copy(x, shape), []
            if y is None and (ctx.fresh or x.dtype != _F32):
                self._yl = self._fast = None  # a fresh copy: stale next run
                env[self.outputs[0]] = x.reshape(shape)
                return
            if y is None:  # numpy would copy: a copy into a kept buffer, replayed
                y = self.buffer(ctx, "y", shape)
                calls = [_ew_call(ctx, y.reshape(x.shape), x, x, K.EW_COPY)]
            self._yl = (x, ctx.n, y, calls)
        self.issue(calls)
        env[self.outputs[0]] = y
        self.remember(env, ctx, calls, (x,))


class _ViewOp(Op):
    """An op whose output is always a view of its input: kept while the input is the
    same object, and replayed with no calls to make."""

    def view(self, x: np.ndarray, n: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, env, ctx) -> None:
        if self.replayed(env, ctx):
            return
        x = env[self.inputs[0]]
        env[self.outputs[0]] = self.kept_view(x, ctx.n, lambda a: self.view(a, ctx.n))
        self.remember(env, ctx, [], (x,))


class ExpandOp(_ViewOp):
    def view(self, x, n):
        return np.broadcast_to(x, resolve(self.attrs["shape"], n))


class PermuteOp(_ViewOp):
    def view(self, x, n):
        return x.transpose(self.attrs["dims"])


class CatOp(Op):
    """Concatenation; a DenseNet-style chain appends into one buffer (linear, not quadratic).

    In a chain (``attrs["chain"]``) each cat's first input is the previous cat's
    output: the head allocates the whole buffer, every cat copies only its new
    channels and outputs a view of the channels so far.
    """

    n_inputs = (1, 1 << 16)
    n_main_inputs = 2  # a chain's cat: the chain so far and the new map

    def __call__(self, env, ctx) -> None:
        chain = self.attrs.get("chain")
        if chain is not None:
            self.append(env, ctx, chain)
            return
        if self.replayed(env, ctx):
            return
        xs = [env[i] for i in self.inputs]
        self.room(ctx, (sum(x.size for x in xs),))
        d = int(self.attrs["dim"]) % xs[0].ndim
        self._fast = None
        if self.copies(env, ctx, xs, d):
            return
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


    def copies(self, env, ctx, xs: list[np.ndarray], d: int) -> bool:
        """The concatenation as copies (``ew``) into a kept buffer (channels-last for a
        4-D channel cat), kept for replays; False for trace runs and mismatched inputs
        (numpy's concatenation then says what is wrong)."""
        first = xs[0]
        if ctx.fresh or any(x.dtype != _F32 or x.ndim != first.ndim or
                            x.shape[:d] + x.shape[d + 1:] != first.shape[:d] + first.shape[d + 1:]
                            for x in xs):
            return False
        shape = list(first.shape)
        shape[d] = sum(x.shape[d] for x in xs)
        if first.ndim == 4 and d == 1:
            buf = self.buffer(ctx, "y", (shape[0], shape[2], shape[3], shape[1]))
            y = self.kept_view(buf, ctx.n, as_nchw)
        else:
            y = self.buffer(ctx, "y", tuple(shape))
        calls, c = [], 0
        for x in xs:
            part = y[(slice(None),) * d + (slice(c, c + x.shape[d]),)]
            calls.append(_ew_call(ctx, part, x, x, K.EW_COPY))
            c += x.shape[d]
        self.issue(calls)
        env[self.outputs[0]] = y
        self.remember(env, ctx, calls, tuple(xs))
        return True

    def append(self, env, ctx, chain) -> None:
        out = self.outputs[0]
        head = self.attrs.get("head")
        if self.replayed(env, ctx):  # the copies again, into the same buffer
            buf, end = self._base
            ctx.bases[out] = self._base
            if head:
                ctx.chains[chain] = buf
            return
        first, new = env[self.inputs[0]], env[self.inputs[1]]
        n, c0, h, w = first.shape
        total, offset = int(self.attrs["total"]), int(self.attrs["offset"])
        first_t, new_t = first.transpose(0, 2, 3, 1), new.transpose(0, 2, 3, 1)
        calls = []
        if head:
            self.room(ctx, (n, h, w, total))
            buf = self.buffer(ctx, "chain", (n, h, w, total))
            calls.append(_ew_call(ctx, buf[..., :c0], first_t, first_t, K.EW_COPY))
            ctx.chains[chain] = buf
        else:
            buf = ctx.chains[chain]
        end = offset + new.shape[1]
        calls.append(_ew_call(ctx, buf[..., offset:end], new_t, new_t, K.EW_COPY))
        self.issue(calls)
        env[out] = self.kept_view(buf, n, lambda b: as_nchw(b[..., :end]))
        ctx.bases[out] = self._base = (buf, end)
        # replayable when the chain so far is this chain's buffer (a later cat's first
        # input is the previous cat's view of it) and the new map a kept buffer
        self.remember(env, ctx, calls, (buf if not head else first_t, new_t))


class StackOp(Op):
    n_inputs = (1, 1 << 16)

    def __call__(self, env, ctx) -> None:
        xs = [env[i] for i in self.inputs]
        self.room(ctx, (sum(x.size for x in xs),))
        env[self.outputs[0]] = np.stack(xs, axis=self.attrs["dim"])


class SliceOp(_ViewOp):
    def view(self, x, n):
        a = self.attrs
        d = int(a["dim"]) % x.ndim
        return x[(slice(None),) * d + (slice(a["start"], a["end"], a["step"]),)]


class SelectOp(Op):
    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        env[self.outputs[0]] = np.take(x, self.attrs["index"], axis=self.attrs["dim"])


class SplitOp(Op):
    n_outputs = (1, 1 << 16)

    def __call__(self, env, ctx) -> None:
        if self.replayed(env, ctx):
            return
        x = env[self.inputs[0]]
        parts = self.kept_view(x, ctx.n, self.split)
        for name, part in zip(self.outputs, parts, strict=True):
            env[name] = part
        # views of the input: a replay has no calls to make
        self.remember(env, ctx, [], (x,))

    def split(self, x: np.ndarray) -> list[np.ndarray]:
        d = int(self.attrs["dim"])
        cuts = np.cumsum(self.attrs["sizes"])[:-1]
        parts = np.split(x, cuts, axis=d)
        return [part.squeeze(d) if self.attrs.get("squeeze") else part for part in parts]


class ReduceOp(Op):
    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        fn = self.attrs["fn"]
        if fn not in REDUCE:
            raise UnsupportedOpError(f"packed engine: reduction {fn!r} is not supported")
        self.fn = REDUCE[fn].np
        self.code = _RED_CODES[fn]

    def __call__(self, env, ctx) -> None:
        if self.replayed(env, ctx):
            return
        x = env[self.inputs[0]]
        self._fast = None
        if not ctx.fresh and x.dtype == _F32 and reduce_rows(
                self, env, ctx, x, self.attrs["dims"], bool(self.attrs["keepdim"]), self.code,
                self.fn):
            return
        y = self.fn(x, axis=tuple(self.attrs["dims"]), keepdims=self.attrs["keepdim"])
        env[self.outputs[0]] = np.asarray(y, _F32)


def reduce_rows(op: Op, env: dict, ctx, x: np.ndarray, dims: list, keep: bool, code: int,
                np_fn) -> bool:
    """A reduction of ``x`` over ``dims`` into a kept buffer, kept for replays:
    ``reduce3`` (function ``code``) on an (outer, reduced, inner) view of ``x`` where
    one exists without a copy (the kept dims split around the reduced ones in memory
    order, inner ones preferred: then the sums run along rows), else ``np_fn(x, axis=,
    keepdims=)`` copied in. False for a reduction over no dims or of nothing (the
    caller's numpy path)."""
    if not dims or not x.size or not all(-x.ndim <= d < x.ndim for d in dims):
        return False
    red = sorted({d % x.ndim for d in dims}, key=lambda d: -x.strides[d])
    kept = sorted((d for d in range(x.ndim) if d not in red), key=lambda d: -x.strides[d])
    for cut in range(len(kept) + 1):
        outer, inner = kept[:cut], kept[cut:]
        sizes = [math.prod(x.shape[d] for d in g) for g in (outer, red, inner)]
        x3 = _no_copy(x.transpose(outer + red + inner), tuple(sizes))
        if x3 is not None:
            break
    else:  # no such view: numpy's reduction into a kept buffer (one thread)
        outer, inner = [d for d in range(x.ndim) if d not in red], []
    order = outer + inner
    buf = op.buffer(ctx, "y", tuple(x.shape[d] for d in order))

    def logical(t):
        t = t.transpose(np.argsort(order))  # the kept dims in their logical order
        return np.expand_dims(t, tuple(sorted(red))) if keep else t

    y = op.kept_view(buf, ctx.n, logical)
    calls = [(ctx.k.reduce3, (x3, buf.reshape(sizes[0], sizes[2]), code, ctx.nt))
             if x3 is not None else (_reduce_into, (np_fn, x, tuple(red), keep, y))]
    op.issue(calls)
    env[op.outputs[0]] = y
    op.remember(env, ctx, calls, (x,))
    return True


def _reduce_into(fn, x: np.ndarray, axes: tuple, keep: bool, out: np.ndarray) -> None:
    np.copyto(out, fn(x, axis=axes, keepdims=keep))


class VectorNormOp(Op):
    def __call__(self, env, ctx) -> None:
        if self.replayed(env, ctx):
            return
        x = env[self.inputs[0]]
        self._fast = None
        if float(self.attrs["ord"]) == 2 and not ctx.fresh and x.dtype == _F32 and reduce_rows(
                self, env, ctx, x, self.attrs["dims"], bool(self.attrs["keepdim"]),
                K.RED_L2, self.norm_of):  # the L2 norm as a row kernel
            return
        kept_result(self, env, ctx, x, self.norm)

    def norm_of(self, x: np.ndarray, axis: tuple, keepdims: bool) -> np.ndarray:
        return self.norm(x)

    def norm(self, x: np.ndarray) -> np.ndarray:
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
        return np.asarray(y, _F32)


class AdaptiveAvgPoolOp(Op):
    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        oh, ow = self.ints_attr("size", 2, 1, 1024)
        if oh * ow > 1 << 16:  # a Python loop over the output positions
            raise self.bad(f"output size {[oh, ow]} is beyond the limit")

    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        oh, ow = self.attrs["size"]
        h, w = x.shape[2:]
        self.room(ctx, x.shape[:2] + (oh, ow))
        if oh == 1 and ow == 1:
            xn = nhwc(x)  # no copy when x is the NCHW view of a channels-last output
            y = np.empty((xn.shape[0], xn.shape[3]), _F32)
            K.mean_hw(xn, y)  # numpy's mean over a transposed view took 25-30 us
            env[self.outputs[0]] = y.reshape(y.shape + (1, 1))
            return
        y = np.empty(x.shape[:2] + (oh, ow), _F32)
        for i in range(oh):
            h0, h1 = (i * h) // oh, -((-(i + 1) * h) // oh)
            for j in range(ow):
                w0, w1 = (j * w) // ow, -((-(j + 1) * w) // ow)
                y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
        env[self.outputs[0]] = y


class PoolDenseOp(Op):
    """An embedding head as one op: global average pool, flatten, dense (+ bias), and a
    per-feature affine (a BatchNorm1d) if one follows; built at load
    (:func:`pool_dense`) from the four ops it replaces, with their own kernels and
    arithmetic (the same bits), as one replayed call list: one op instead of four
    (each small op cost 5-20 us of Python on the first call of a run)."""

    def __init__(self, node, tensors, graph, linear: LinearOp, affine: AffineOp | None
                 ) -> None:
        super().__init__(node, tensors, graph)
        self.w = linear.w
        self.b = _NO_BIAS if linear.b is None else linear.b.reshape(-1)
        self.affine = affine
        self.macs_per_sample = int(self.w.shape[0] * self.w.shape[1])

    def __call__(self, env, ctx) -> None:
        if self.replayed(env, ctx):
            return
        x = nhwc(env[self.inputs[0]])
        k, o = self.w.shape
        if x.ndim != 4 or x.shape[3] != k or x.dtype != _F32:
            raise self.mismatch(x, f"[M, H, W, {k}] float32 (NHWC)")
        m = x.shape[0]
        pooled, y = self.buffer(ctx, "pooled", (m, k)), self.buffer(ctx, "y", (m, o))
        calls = [(K.mean_hw, (x, pooled)), (ctx.k.dense, (pooled, self.w, self.b, y, ctx.nt))]
        if self.affine is not None:
            z = self.buffer(ctx, "z", (m, o))
            calls.append((K.affine_rows, (y, self.affine.scale.reshape(-1),
                                          self.affine.shift.reshape(-1), z)))
            y = z
        self.issue(calls)
        env[self.outputs[0]] = y
        self.remember(env, ctx, calls, (x,))


def pool_dense(ops: list[Op], graph: dict, tensors: dict) -> Op | None:
    """The :class:`PoolDenseOp` for ``ops`` = [adaptive_avgpool to 1 x 1, reshape to
    (N, C), linear, optional affine on axis 1], or None where they do not fit it."""
    pool, reshape, linear, *rest = ops
    affine = rest[0] if rest else None
    shape = reshape.attrs.get("shape")
    if (type(pool) is not AdaptiveAvgPoolOp or list(pool.attrs.get("size", ())) != [1, 1]
            or type(reshape) is not ReshapeOp or type(linear) is not LinearOp
            or not isinstance(shape, list) or len(shape) != 2 or shape[1] != linear.w.shape[0]
            or linear.w.dtype != _F32 or not linear.w.flags.c_contiguous
            or (linear.b is not None and (linear.b.size != linear.w.shape[1]
                                          or linear.b.dtype != _F32))):
        return None
    if affine is not None:
        o = linear.w.shape[1]
        if (type(affine) is not AffineOp or affine.axis != 1 or affine.scale is None
                or affine.shift is None or affine.scale.size != o or affine.shift.size != o
                or affine.scale.dtype != _F32 or affine.shift.dtype != _F32):
            return None
    last = affine or linear
    node = {"op": "head", "name": "+".join(op.name for op in ops), "in": list(pool.inputs),
            "out": list(last.outputs), "attrs": {}}
    return PoolDenseOp(node, tensors, graph, linear, affine)


class PadOp(Op):
    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        p = self.attrs["pads"]
        width = [(0, 0)] * x.ndim
        for i in range(len(p) // 2):
            width[x.ndim - 1 - i] = (p[2 * i], p[2 * i + 1])
        if any(a < 0 or b < 0 for a, b in width):
            raise UnsupportedOpError("packed engine: negative padding (cropping) is not supported")
        self.room(ctx, tuple(d + a + b for d, (a, b) in zip(x.shape, width, strict=True)))
        env[self.outputs[0]] = np.pad(x, width, constant_values=_F32(self.attrs["value"]))


class InterpolateOp(Op):
    def __call__(self, env, ctx) -> None:
        x = env[self.inputs[0]]
        oh, ow = self.attrs["size"]
        h, w = x.shape[2:]
        self.room(ctx, x.shape[:2] + (oh, ow))
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
