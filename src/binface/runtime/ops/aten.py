"""The capture's ATen -> IR converters, one per IR op of ``ops/table.py`` (torch side).

``CONVERTERS`` maps an ATen op name (``aten.relu.default`` -> ``relu``) to its
converter: the ATen names come from the op table (and, for ``unary`` / ``binary``
/ ``reduce``, from ``ops/functions.py``); a converter serving several ATen ops
reads the name when their arguments differ. ATen ops that make no IR node
(aliases, assertions, dtype no-ops) or that are refused are listed here.
A converter is called as ``fn(converter, node, *node.args, **node.kwargs)``.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from binface.runtime.errors import UnsupportedOpError
from binface.runtime.ir import Dim
from binface.runtime.ops.functions import BINARY, REDUCE, UNARY, by_aten
from binface.runtime.ops.table import OPDEFS

if TYPE_CHECKING:
    from binface.runtime.capture import _Converter

# python operators on batch-dependent sizes: kept as symbolic scalars, not IR nodes
SYM_OPS = {operator.mul, operator.add, operator.sub, operator.floordiv, operator.truediv}


# ---------------------------------------------------------------- dims
def sym_dim(v: Any) -> Dim:
    """An int, or [a, b] for a * N + b, from an int or a SymInt of the batch symbol."""
    if isinstance(v, int):
        return int(v)
    if isinstance(v, torch.SymInt):
        expr = v.node.expr
        if expr.is_number:
            return int(expr)
        syms = list(expr.free_symbols)
        if len(syms) == 1:
            import sympy

            poly = sympy.Poly(expr, syms[0])
            if poly.degree() == 1:
                a, b = (int(c) for c in poly.all_coeffs())
                return [a, b]
    raise UnsupportedOpError(f"shape expression {v} is not linear in the batch size")


def value_shape(val: Any) -> list:
    """The IR shape of a traced value (its ``meta["val"]``)."""
    return [sym_dim(s) for s in val.shape]


# ---------------------------------------------------------------- registration
_BY_OP: dict[str, Callable] = {}


def converts(op: str):
    """Register the converter of IR op ``op`` (its ATen names are in the op table)."""
    def deco(fn):
        _BY_OP[op] = fn
        return fn
    return deco


def _aten(node) -> str:
    return node.target.__name__.split(".")[0]


def _ints(v, n: int = 2) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    v = [int(a) for a in v]
    return v * n if len(v) == 1 else v


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


# ---------------------------------------------------------------- ATen ops without an IR node
def _c_identity(c: _Converter, node, x, *a, **k):
    c.alias(node, x)


def _c_skip(c: _Converter, node, *a, **k):
    c.env[node.name] = None


def _c_to(c: _Converter, node, x, *a, **k):
    val = node.meta.get("val")
    if val is not None and val.dtype != torch.float32:
        raise UnsupportedOpError(f"conversion to {val.dtype} is not supported")
    c.alias(node, x)


def _c_where(c: _Converter, node, cond, a, b):
    raise UnsupportedOpError("where on activations is not supported by the packed engine")


PASSTHROUGH: dict[str, Callable] = {
    **dict.fromkeys(("identity", "detach", "alias", "clone", "contiguous", "lift_fresh_copy",
                     "dropout", "feature_dropout", "alpha_dropout"), _c_identity),
    **dict.fromkeys(("_assert_tensor_metadata", "_assert_scalar",
                     "sym_constrain_range_for_size"), _c_skip),
    **dict.fromkeys(("to", "_to_copy", "type_as"), _c_to),
    "where": _c_where,
}


# ---------------------------------------------------------------- float layers
@converts("conv")
def _c_conv2d(c: _Converter, node, x, w, b=None, stride=1, padding=0, dilation=1, groups=1,
              *rest):
    if node.target.__name__.startswith("convolution"):
        transposed = rest[0] if rest else False
        if transposed:
            raise UnsupportedOpError("transposed convolution is not supported")
        groups = rest[2] if len(rest) > 2 else groups
    if isinstance(padding, str):
        raise UnsupportedOpError(f"conv2d padding={padding!r} is not supported")
    w_t = c.concrete(w)
    if not isinstance(w_t, torch.Tensor) or w_t.dim() != 4:
        raise UnsupportedOpError("conv2d with a non-constant or non-2-D kernel")
    p = _ints(padding)
    attrs = {"weight": c.value(w), "stride": _ints(stride), "dilation": _ints(dilation),
             "pads": [p[0], p[0], p[1], p[1]], "pad_value": 0.0, "groups": int(groups)}
    if b is not None:
        attrs["bias"] = c.value(b)
    c.emit("conv", [c.value(x)], node, attrs)


@converts("linear")
def _c_linear(c: _Converter, node, x, w, b=None):
    if c.is_dynamic(w):
        raise UnsupportedOpError("linear with a non-constant weight")
    attrs = {"weight": c.value(w)}
    if b is not None:
        attrs["bias"] = c.value(b)
    c.emit("linear", [c.value(x)], node, attrs)


@converts("affine")
def _c_batch_norm(c: _Converter, node, x, w, b, mean, var, *rest):
    if node.target.__name__.startswith("_native"):
        eps = rest[1]
    else:
        training, eps = rest[0], rest[2]
        if training:
            raise UnsupportedOpError("batch_norm in training mode (call model.eval())")
    mean, var = c.concrete(mean), c.concrete(var)
    w = c.concrete(w) if w is not None else torch.ones_like(mean)
    b = c.concrete(b) if b is not None else torch.zeros_like(mean)
    # as ATen's CPU inference kernel, so that the engine's fma(x, alpha, beta) is bit-exact:
    # alpha = (1 / sqrt(var + eps)) * w, beta = fma(-mean, alpha, b)
    invstd = 1.0 / torch.sqrt(var.float() + float(eps))
    alpha = (invstd * w.float()).float()
    beta = (b.double() - mean.double() * alpha.double()).float()
    outs = c.emit("affine", [c.value(x)], node,
                  {"scale": c.const(alpha), "shift": c.const(beta), "axis": 1})
    if node.target.__name__.startswith(("_native", "native")):  # tuple output
        c.env[node.name] = [("v", outs[0]), None, None]


@converts("group_norm")
def _c_group_norm(c: _Converter, node, x, groups, w=None, b=None, eps=1e-5, *a):
    attrs = {"groups": int(groups), "eps": float(eps)}
    if w is not None:
        attrs["weight"] = c.value(w)
    if b is not None:
        attrs["bias"] = c.value(b)
    c.emit("group_norm", [c.value(x)], node, attrs)


@converts("layer_norm")
def _c_layer_norm(c: _Converter, node, x, shape, w=None, b=None, eps=1e-5, *a):
    attrs = {"ndim": len(shape), "eps": float(eps)}
    if w is not None:
        attrs["weight"] = c.value(w)
    if b is not None:
        attrs["bias"] = c.value(b)
    c.emit("layer_norm", [c.value(x)], node, attrs)


@converts("softmax")
def _c_softmax(c: _Converter, node, x, dim, *a):
    c.emit("softmax", [c.value(x)], node, {"dim": int(dim)})


@converts("matmul")
def _c_matmul(c: _Converter, node, a, b):
    c.emit("matmul", [c.value(a), c.value(b)], node)


# ---------------------------------------------------------------- element-wise
_UNARY_ATEN = by_aten(UNARY)
_BINARY_ATEN = by_aten(BINARY)
_REDUCE_ATEN = by_aten(REDUCE)


@converts("unary")
def _c_unary(c: _Converter, node, x, *a, **k):
    fn = _UNARY_ATEN[_aten(node)]
    if fn == "gelu" and k.get("approximate", a[0] if a else "none") == "tanh":
        fn = "gelu_tanh"
    c.emit("unary", [c.value(x)], node, {"fn": fn})


@converts("binary")
def _c_binary(c: _Converter, node, a, b=None, *rest, alpha=1, rounding_mode=None, **k):
    name = _aten(node)
    if rounding_mode is not None or (rest and isinstance(rest[0], str)):
        raise UnsupportedOpError(f"{name} with rounding_mode on activations is not supported")
    if name == "rsub":
        a, b, name = b, a, "sub"
    if alpha != 1:
        b_val = c.concrete(b) if not c.is_dynamic(b) else None
        if b_val is None:
            raise UnsupportedOpError(f"{name} with alpha on activations is not supported")
        b = b_val * alpha
    c.emit("binary", [c.value(a), c.value(b)], node, {"fn": _BINARY_ATEN[name]})


@converts("clamp")
def _c_clamp(c: _Converter, node, x, lo=None, hi=None):
    name = _aten(node)
    if name == "hardtanh":
        lo = -1.0 if lo is None else lo
        hi = 1.0 if hi is None else hi
    elif name == "clamp_max":
        lo, hi = None, lo
    if c.is_dynamic([lo, hi]) or isinstance(lo, torch.fx.Node) or isinstance(hi, torch.fx.Node):
        raise UnsupportedOpError("clamp with tensor bounds is not supported")
    c.emit("clamp", [c.value(x)], node, {"min": None if lo is None else float(lo),
                                         "max": None if hi is None else float(hi)})


@converts("prelu")
def _c_prelu(c: _Converter, node, x, *a, **k):
    if _aten(node) == "leaky_relu":
        _leaky_relu(c, node, x, *a, **k)
    else:
        _prelu(c, node, x, *a, **k)


def _leaky_relu(c: _Converter, node, x, slope=0.01):
    c.emit("prelu", [c.value(x)], node, {"slope": c.const(torch.tensor(float(slope))), "axis": 1})


def _prelu(c: _Converter, node, x, w):
    c.emit("prelu", [c.value(x)], node, {"slope": c.value(w), "axis": 1})


@converts("full_like")
def _c_full_like(c: _Converter, node, x, *a, **k):
    fill = {"ones_like": 1.0, "zeros_like": 0.0}.get(_aten(node))
    if fill is None:
        fill = float(a[0])
    c.emit("full_like", [c.value(x)], node, {"value": fill})


# ---------------------------------------------------------------- shapes and layouts
@converts("reshape")
def _c_reshape(c: _Converter, node, x, *a, **k):
    c.emit("reshape", [c.value(x)], node, {"shape": value_shape(node.meta["val"])})


@converts("expand")
def _c_expand(c: _Converter, node, x, *a, **k):
    c.emit("expand", [c.value(x)], node, {"shape": value_shape(node.meta["val"])})


@converts("permute")
def _c_permute(c: _Converter, node, x, *a):
    if _aten(node) == "permute":
        _permute(c, node, x, *a)
    else:
        _transpose(c, node, x, *a)


def _permute(c: _Converter, node, x, dims):
    c.emit("permute", [c.value(x)], node, {"dims": [int(d) for d in dims]})


def _transpose(c: _Converter, node, x, d0=0, d1=1):
    n = len(c.g.shapes[c.value(x)])
    dims = list(range(n))
    dims[d0], dims[d1] = dims[d1], dims[d0]
    c.emit("permute", [c.value(x)], node, {"dims": dims})


@converts("cat")
def _c_cat(c: _Converter, node, xs, dim=0):
    c.emit("cat", [c.value(x) for x in xs], node, {"dim": int(dim)})


@converts("stack")
def _c_stack(c: _Converter, node, xs, dim=0):
    c.emit("stack", [c.value(x) for x in xs], node, {"dim": int(dim)})


@converts("slice")
def _c_slice(c: _Converter, node, x, dim=0, start=None, end=None, step=1):
    if c.is_dynamic([start, end]):
        raise UnsupportedOpError("slice with batch-dependent bounds is not supported")
    c.emit("slice", [c.value(x)], node, {"dim": int(dim), "start": start, "end": end,
                                         "step": int(step)})


@converts("select")
def _c_select(c: _Converter, node, x, dim, index):
    c.emit("select", [c.value(x)], node, {"dim": int(dim), "index": int(index)})


@converts("split")
def _c_split(c: _Converter, node, x, *a, **k):
    vals = node.meta["val"]
    name = _aten(node)
    dim = int(k.get("dim", a[1] if len(a) > 1 else 0)) if name != "unbind" else int(
        a[0] if a else k.get("dim", 0))
    nd = len(c.g.shapes[c.value(x)])
    dim %= nd
    sizes = [1] * len(vals) if name == "unbind" else [sym_dim(v.shape[dim]) for v in vals]
    if any(isinstance(s, list) for s in sizes):
        raise UnsupportedOpError(f"{name} along the batch dimension is not supported")
    c.emit("split", [c.value(x)], node, {"dim": dim, "sizes": sizes, "squeeze": name == "unbind"},
           n_out=len(vals))


@converts("pad")
def _c_pad(c: _Converter, node, x, pads, mode="constant", value=None):
    if mode != "constant":
        raise UnsupportedOpError(f"pad mode {mode!r} is not supported")
    c.emit("pad", [c.value(x)], node, {"pads": [int(p) for p in pads],
                                       "value": 0.0 if value is None else float(value)})


# ---------------------------------------------------------------- reductions, pooling, resizing
@converts("reduce")
def _c_reduce(c: _Converter, node, x, dims=None, keepdim=False, *a, **k):
    nd = len(c.g.shapes[c.value(x)])
    dims = list(range(nd)) if dims is None else [int(d) % nd for d in _as_list(dims)]
    c.emit("reduce", [c.value(x)], node, {"fn": _REDUCE_ATEN[_aten(node)], "dims": dims,
                                          "keepdim": bool(keepdim)})


@converts("vector_norm")
def _c_norm(c: _Converter, node, x, ord=2, dims=None, keepdim=False, *a, **k):
    nd = len(c.g.shapes[c.value(x)])
    dims = list(range(nd)) if dims is None else [int(d) % nd for d in _as_list(dims)]
    c.emit("vector_norm", [c.value(x)], node, {"ord": float(ord), "dims": dims,
                                               "keepdim": bool(keepdim)})


@converts("maxpool")
def _c_maxpool(c: _Converter, node, x, kernel, stride=None, padding=0, dilation=1,
               ceil_mode=False):
    k = _ints(kernel)
    s = _ints(stride) if stride else k
    p = _ints(padding)
    outs = c.emit("maxpool", [c.value(x)], node, {
        "kernel": k, "stride": s, "pads": [p[0], p[0], p[1], p[1]], "dilation": _ints(dilation),
        "ceil_mode": bool(ceil_mode)})
    if node.target.__name__.startswith("max_pool2d_with_indices"):
        c.env[node.name] = [("v", outs[0]), None]


@converts("avgpool")
def _c_avgpool(c: _Converter, node, x, kernel, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    k = _ints(kernel)
    s = _ints(stride) if stride else k
    p = _ints(padding)
    c.emit("avgpool", [c.value(x)], node, {
        "kernel": k, "stride": s, "pads": [p[0], p[0], p[1], p[1]], "ceil_mode": bool(ceil_mode),
        "count_include_pad": bool(count_include_pad), "divisor": divisor_override})


@converts("adaptive_avgpool")
def _c_adaptive(c: _Converter, node, x, size):
    c.emit("adaptive_avgpool", [c.value(x)], node, {"size": _ints(size)})


@converts("interpolate")
def _c_upsample(c: _Converter, node, x, size=None, align_corners=False, *a, **k):
    name = _aten(node)
    out = value_shape(node.meta["val"])
    attrs = {"mode": "bilinear" if "bilinear" in name else "nearest", "size": out[2:]}
    if "bilinear" in name:
        attrs["align_corners"] = bool(align_corners)
    c.emit("interpolate", [c.value(x)], node, attrs)


# ---------------------------------------------------------------- the dispatch table
CONVERTERS: dict[str, Callable] = {
    **PASSTHROUGH,
    **{a: _BY_OP[d.name] for d in OPDEFS.values() for a in d.aten},
}
