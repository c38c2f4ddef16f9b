"""Trace a PyTorch model into binface's runtime IR (torch side of the exporters).

``torch.export`` gives an ATen graph with a symbolic batch dimension. Before
tracing, every quantized layer (a ``binface.nn.layers.QuantizedLayer``) and every
free-standing quantizer is swapped, for the duration of the trace, for an opaque
custom op, so the graph keeps one node per binary layer
instead of its sign / pad / conv decomposition; the lowering (``lower.py``) then
turns each such node into a packed xor + popcount op. Every other ATen op is
mapped to an IR op with numpy semantics; subgraphs that depend on constants only
(positional encodings, reshaped weights) are folded with torch here.

IR: ``IRGraph.nodes`` is a list of ``Node(op, inputs, outputs, attrs)`` in
topological order; values are named; constants live in ``IRGraph.consts`` as
numpy arrays; ``IRGraph.shapes`` gives each value's shape, a dimension being an
int or ``[a, b]`` meaning ``a * N + b`` for batch size ``N``.
"""

from __future__ import annotations

import contextlib
import copy
import operator
import types
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from binface.errors import BinfaceError
from binface.nn.layers import QuantizedLayer
from binface.nn.quantizers import Quantizer, runtime_spec_of
from binface.runtime.errors import UnsupportedOpError

Dim = int | list  # int, or [a, b] = a * N + b


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)


@dataclass
class IRGraph:
    nodes: list[Node] = field(default_factory=list)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, list] = field(default_factory=dict)
    input: str = "input"
    outputs: list[str] = field(default_factory=list)
    batch_dynamic: bool = True
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------- quantizer kinds
def quantizer_kind(q: Quantizer | None) -> dict:
    """What a quantizer computes, in runtime terms: the quantizer says it itself.

    ``pos``: sign with sign(0) = +1; ``neg``: sign with sign(0) = -1 (DoReFa at one
    bit); ``dorefa``: k-bit DoReFa activations, a float op; ``none``: no quantizer.
    RSign's learned shift is ``shift`` (added before the sign). See
    ``Quantizer.runtime_spec`` and docs/quantizers.md.
    """
    return runtime_spec_of(q)


# ---------------------------------------------------------------- inference copies
@torch.no_grad()
def inference_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy whose kernel quantizers are applied once, ahead of time.

    The forward values are unchanged; what goes is re-quantizing every weight
    tensor at every call, which is most of a binary model's eager time (QuickNet:
    190 ms eager against 17 ms frozen). This is the fair float baseline and what
    the ONNX exporter sees.
    """
    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if isinstance(mod, QuantizedLayer):
            mod.freeze_weights()
    return m


# ---------------------------------------------------------------- opaque layers
_LAYERS: dict[int, nn.Module] = {}


def _layer_out_shape(m: nn.Module, x: torch.Tensor) -> list:
    return m.output_shape(x.shape) if isinstance(m, QuantizedLayer) else list(x.shape)


@torch.library.custom_op("binface_rt::qlayer", mutates_args=())
def _qlayer(x: torch.Tensor, index: int) -> torch.Tensor:
    return _LAYERS[index]._binface_forward(x)


@_qlayer.register_fake
def _qlayer_fake(x: torch.Tensor, index: int) -> torch.Tensor:
    return x.new_empty(_layer_out_shape(_LAYERS[index], x))


def _is_opaque(m: nn.Module) -> bool:
    return isinstance(m, (QuantizedLayer, Quantizer))


@contextlib.contextmanager
def opaque_quantized_layers(model: nn.Module):
    """Swap quantized layers and free quantizers for one opaque op while tracing."""
    patched: list[nn.Module] = []
    inner: set[int] = set()
    for m in model.modules():
        if isinstance(m, QuantizedLayer):
            inner.update(id(q) for q in m.modules() if q is not m)
    try:
        for m in model.modules():
            if not _is_opaque(m) or id(m) in inner:
                continue
            index = max(_LAYERS, default=-1) + 1
            _LAYERS[index] = m
            m._binface_forward = m.forward
            m.forward = types.MethodType(lambda self, x, _i=index: _qlayer(x, _i), m)
            patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward
            del m._binface_forward
        for k in [k for k, v in _LAYERS.items() if any(v is m for m in patched)]:
            del _LAYERS[k]


# ---------------------------------------------------------------- dims
def _dim(v: Any) -> Dim:
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


def _shape(val: Any) -> list:
    return [_dim(s) for s in val.shape]


# ---------------------------------------------------------------- capture
def capture(model: nn.Module, input_size: tuple[int, int], batch: int = 2,
            channels: int = 3) -> IRGraph:
    """Trace ``model`` (eval mode) for (N, channels, H, W) input into an :class:`IRGraph`."""
    from torch.export import Dim as TDim
    from torch.export import export

    model = model.eval()
    x = torch.randn(batch, channels, *input_size)
    dynamic = True
    with opaque_quantized_layers(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ep = export(model, (x,), dynamic_shapes=({0: TDim("batch", min=1, max=4096)},))
        except BinfaceError:
            raise
        except Exception:  # noqa: BLE001 - the model fixes its batch size: trace at batch 1
            dynamic = False
            try:
                ep = export(model, (x[:1],))
            except Exception as exc:  # noqa: BLE001 - torch.export's messages run for pages
                first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                raise UnsupportedOpError(f"torch.export cannot trace "
                                         f"{type(model).__name__}: {type(exc).__name__}: "
                                         f"{first}") from None
        g = _Converter(ep, model).run()
    g.batch_dynamic = dynamic
    return g


class _Converter:
    """ATen graph -> IR graph."""

    def __init__(self, ep, model: nn.Module) -> None:
        self.ep = ep
        self.model = model
        self.g = IRGraph()
        self.env: dict[str, Any] = {}  # fx name -> ("v", ir name) | torch const | python
        self.n_const = 0
        self.paths = {id(m): name for name, m in model.named_modules()}

    # -- values
    def const(self, t: torch.Tensor) -> str:
        name = f"const{self.n_const}"
        self.n_const += 1
        self.g.consts[name] = t.detach().cpu().contiguous().numpy().copy()
        self.g.shapes[name] = list(self.g.consts[name].shape)
        return name

    def value(self, a: Any) -> str:
        """IR value name of an fx argument (a dynamic value or a constant tensor)."""
        v = self.env[a.name] if isinstance(a, torch.fx.Node) else a
        if isinstance(v, tuple) and v and v[0] == "v":
            return v[1]
        if isinstance(v, torch.Tensor):
            return self.const(v)
        if isinstance(v, (int, float)):
            return self.const(torch.tensor(v, dtype=torch.float32))
        raise UnsupportedOpError(f"cannot use {v!r} as a tensor")

    def is_dynamic(self, a: Any) -> bool:
        if isinstance(a, torch.fx.Node):
            v = self.env[a.name]
            return (isinstance(v, tuple) and v and v[0] == "v") or isinstance(v, torch.SymInt)
        if isinstance(a, (list, tuple)):
            return any(self.is_dynamic(b) for b in a)
        return False

    def concrete(self, a: Any) -> Any:
        """Python/torch value of a constant argument (recursively)."""
        if isinstance(a, torch.fx.Node):
            v = self.env[a.name]
            if isinstance(v, tuple) and v and v[0] == "v":
                raise UnsupportedOpError(f"{a.name} is not a constant")
            return v
        if isinstance(a, (list, tuple)):
            return type(a)(self.concrete(b) for b in a)
        return a

    def emit(self, op: str, inputs: list[str], node: torch.fx.Node, attrs: dict | None = None,
             n_out: int = 1) -> list[str]:
        outs = [node.name] if n_out == 1 else [f"{node.name}_{i}" for i in range(n_out)]
        self.g.nodes.append(Node(op, inputs, outs, attrs or {}))
        stack = node.meta.get("nn_module_stack") or {}
        if stack:  # the innermost module's path, for per-layer reports
            path = str(list(stack.values())[-1][0])
            self.g.meta.setdefault("sources", {})[outs[0]] = path
        val = node.meta.get("val")
        if n_out == 1:
            self.g.shapes[outs[0]] = _shape(val)
            self.env[node.name] = ("v", outs[0])
        else:
            for o, v in zip(outs, val, strict=True):
                self.g.shapes[o] = _shape(v)
            self.env[node.name] = [("v", o) for o in outs]
        return outs

    def alias(self, node: torch.fx.Node, src: Any) -> None:
        self.env[node.name] = self.env[src.name] if isinstance(src, torch.fx.Node) else src

    # -- driver
    def run(self) -> IRGraph:
        ep = self.ep
        sig = ep.graph_signature
        state = ep.state_dict
        consts = getattr(ep, "constants", {})
        user_inputs = []
        for spec in sig.input_specs:
            name = spec.arg.name
            kind = spec.kind.name
            if kind in ("PARAMETER", "BUFFER"):
                self.env[name] = state[spec.target] if spec.target in state else consts[spec.target]
            elif kind in ("CONSTANT_TENSOR", "CUSTOM_OBJ"):
                self.env[name] = consts[spec.target]
            else:
                user_inputs.append(name)
        if len(user_inputs) != 1:
            raise UnsupportedOpError("models with more than one input are not supported")
        for node in ep.graph.nodes:
            if node.op == "placeholder":
                if node.name == user_inputs[0]:
                    self.env[node.name] = ("v", "input")
                    self.g.shapes["input"] = _shape(node.meta["val"])
                continue
            if node.op == "output":
                outs = node.args[0]
                outs = outs if isinstance(outs, (list, tuple)) else [outs]
                self.g.outputs = [self.value(o) for o in outs]
                continue
            if node.op != "call_function":
                raise UnsupportedOpError(f"graph node {node.op} {node.target} is not supported")
            self.convert(node)
        return self.g

    def convert(self, node: torch.fx.Node) -> None:
        target = node.target
        args, kwargs = node.args, node.kwargs
        if target is operator.getitem:
            src = self.env[args[0].name]
            self.env[node.name] = src[args[1]]
            return
        if target is torch.ops.binface_rt.qlayer.default:
            self.qlayer(node)
            return
        if not self.is_dynamic(list(args)) and not self.is_dynamic(list(kwargs.values())):
            with torch.no_grad():
                self.env[node.name] = target(*self.concrete(list(args)),
                                             **self.concrete(dict(kwargs)))
            return
        if isinstance(node.meta.get("val"), torch.SymInt) or target in _SYM_OPS:
            self.env[node.name] = node.meta["val"]  # a batch-dependent scalar
            return
        key = getattr(target, "__name__", str(target))
        packet = key.split(".")[0]
        fn = _CONVERTERS.get(key) or _CONVERTERS.get(packet)
        if fn is None:
            raise UnsupportedOpError(f"op {target} is not supported by the packed engine")
        fn(self, node, *args, **kwargs)

    # -- binary layers
    def qlayer(self, node: torch.fx.Node) -> None:
        x_arg, index = node.args
        m = _LAYERS[index]
        x = self.value(x_arg)
        shape_in = self.g.shapes[x]
        if isinstance(m, Quantizer):
            k = quantizer_kind(m)
            self.emit("quant", [x], node, {"q": _jsonable_q(k)})
            if "shift" in k:
                self.g.nodes[-1].attrs["shift"] = self.const(k["shift"])
            return
        with torch.no_grad():
            spec = m.runtime_layer(shape_in)
            attrs = {"layer": spec.kind}
            attrs.update({name: self.const(w) for name, w in spec.weights.items()})
            attrs["w_binary"] = spec.binary
            attrs["module"] = type(m).__name__
            attrs["source"] = self.paths.get(id(m), "")
            attrs["in_q"] = _jsonable_q(spec.input)
            if "shift" in spec.input:
                attrs["in_shift"] = self.const(spec.input["shift"])
            if spec.bias is not None:
                attrs["bias"] = self.const(spec.bias)
            attrs.update(spec.attrs)
        self.emit("qlayer", [x], node, attrs)


def _jsonable_q(k: dict) -> dict:
    return {a: b for a, b in k.items() if a != "shift"}


_SYM_OPS = {operator.mul, operator.add, operator.sub, operator.floordiv, operator.truediv}


# ---------------------------------------------------------------- ATen converters
_CONVERTERS: dict[str, Any] = {}


def _conv(*names: str):
    def deco(fn):
        for n in names:
            _CONVERTERS[n] = fn
        return fn
    return deco


def _ints(v, n: int = 2) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    v = [int(a) for a in v]
    return v * n if len(v) == 1 else v


@_conv("identity", "detach", "alias", "clone", "contiguous", "lift_fresh_copy", "dropout",
       "feature_dropout", "alpha_dropout")
def _c_identity(c: _Converter, node, x, *a, **k):
    c.alias(node, x)


@_conv("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size")
def _c_skip(c: _Converter, node, *a, **k):
    c.env[node.name] = None


@_conv("to", "_to_copy", "type_as")
def _c_to(c: _Converter, node, x, *a, **k):
    val = node.meta.get("val")
    if val is not None and val.dtype != torch.float32:
        raise UnsupportedOpError(f"conversion to {val.dtype} is not supported")
    c.alias(node, x)


@_conv("conv2d", "convolution")
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


@_conv("linear")
def _c_linear(c: _Converter, node, x, w, b=None):
    if c.is_dynamic(w):
        raise UnsupportedOpError("linear with a non-constant weight")
    attrs = {"weight": c.value(w)}
    if b is not None:
        attrs["bias"] = c.value(b)
    c.emit("linear", [c.value(x)], node, attrs)


@_conv("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm")
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


@_conv("group_norm")
def _c_group_norm(c: _Converter, node, x, groups, w=None, b=None, eps=1e-5, *a):
    attrs = {"groups": int(groups), "eps": float(eps)}
    if w is not None:
        attrs["weight"] = c.value(w)
    if b is not None:
        attrs["bias"] = c.value(b)
    c.emit("group_norm", [c.value(x)], node, attrs)


@_conv("layer_norm")
def _c_layer_norm(c: _Converter, node, x, shape, w=None, b=None, eps=1e-5, *a):
    attrs = {"ndim": len(shape), "eps": float(eps)}
    if w is not None:
        attrs["weight"] = c.value(w)
    if b is not None:
        attrs["bias"] = c.value(b)
    c.emit("layer_norm", [c.value(x)], node, attrs)


_UNARY = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "silu": "silu",
          "hardswish": "hardswish", "hardsigmoid": "hardsigmoid", "neg": "neg", "exp": "exp",
          "sqrt": "sqrt", "rsqrt": "rsqrt", "abs": "abs", "erf": "erf", "reciprocal": "reciprocal",
          "log": "log", "sin": "sin", "cos": "cos", "relu6": "relu6", "sign": "sign_raw"}


def _c_unary(c: _Converter, node, x, *a, **k):
    c.emit("unary", [c.value(x)], node, {"fn": _UNARY[node.target.__name__.split(".")[0]]})


for _k in _UNARY:
    _CONVERTERS[_k] = _c_unary


@_conv("gelu")
def _c_gelu(c: _Converter, node, x, approximate="none"):
    c.emit("unary", [c.value(x)], node, {"fn": "gelu_tanh" if approximate == "tanh" else "gelu"})


@_conv("hardtanh", "clamp", "clamp_min", "clamp_max")
def _c_clamp(c: _Converter, node, x, lo=None, hi=None):
    name = node.target.__name__.split(".")[0]
    if name == "hardtanh":
        lo = -1.0 if lo is None else lo
        hi = 1.0 if hi is None else hi
    elif name == "clamp_max":
        lo, hi = None, lo
    if c.is_dynamic([lo, hi]) or isinstance(lo, torch.fx.Node) or isinstance(hi, torch.fx.Node):
        raise UnsupportedOpError("clamp with tensor bounds is not supported")
    c.emit("clamp", [c.value(x)], node, {"min": None if lo is None else float(lo),
                                         "max": None if hi is None else float(hi)})


@_conv("leaky_relu")
def _c_leaky(c: _Converter, node, x, slope=0.01):
    c.emit("prelu", [c.value(x)], node, {"slope": c.const(torch.tensor(float(slope))), "axis": 1})


@_conv("prelu", "_prelu_kernel")
def _c_prelu(c: _Converter, node, x, w):
    c.emit("prelu", [c.value(x)], node, {"slope": c.value(w), "axis": 1})


_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "pow": "pow",
           "maximum": "maximum", "minimum": "minimum", "rsub": "rsub"}


@_conv(*_BINARY)
def _c_binary(c: _Converter, node, a, b=None, *rest, alpha=1, rounding_mode=None, **k):
    name = node.target.__name__.split(".")[0]
    if rounding_mode is not None or (rest and isinstance(rest[0], str)):
        raise UnsupportedOpError(f"{name} with rounding_mode on activations is not supported")
    if name == "rsub":
        a, b, name = b, a, "sub"
    if alpha != 1:
        b_val = c.concrete(b) if not c.is_dynamic(b) else None
        if b_val is None:
            raise UnsupportedOpError(f"{name} with alpha on activations is not supported")
        b = b_val * alpha
    c.emit("binary", [c.value(a), c.value(b)], node, {"fn": _BINARY[name]})


@_conv("softmax", "_softmax")
def _c_softmax(c: _Converter, node, x, dim, *a):
    c.emit("softmax", [c.value(x)], node, {"dim": int(dim)})


@_conv("matmul", "bmm", "mm")
def _c_matmul(c: _Converter, node, a, b):
    c.emit("matmul", [c.value(a), c.value(b)], node)


def _reshape_like(c: _Converter, node, x, *a, **k):
    c.emit("reshape", [c.value(x)], node, {"shape": _shape(node.meta["val"])})


for _k in ("view", "reshape", "flatten", "unsqueeze", "squeeze", "_unsafe_view",
           "unflatten", "view_as", "reshape_as"):
    _CONVERTERS[_k] = _reshape_like


@_conv("expand", "expand_as", "broadcast_to")
def _c_expand(c: _Converter, node, x, *a, **k):
    c.emit("expand", [c.value(x)], node, {"shape": _shape(node.meta["val"])})


@_conv("permute")
def _c_permute(c: _Converter, node, x, dims):
    c.emit("permute", [c.value(x)], node, {"dims": [int(d) for d in dims]})


@_conv("transpose", "t")
def _c_transpose(c: _Converter, node, x, d0=0, d1=1):
    n = len(c.g.shapes[c.value(x)])
    dims = list(range(n))
    dims[d0], dims[d1] = dims[d1], dims[d0]
    c.emit("permute", [c.value(x)], node, {"dims": dims})


@_conv("cat", "concat")
def _c_cat(c: _Converter, node, xs, dim=0):
    c.emit("cat", [c.value(x) for x in xs], node, {"dim": int(dim)})


@_conv("stack")
def _c_stack(c: _Converter, node, xs, dim=0):
    c.emit("stack", [c.value(x) for x in xs], node, {"dim": int(dim)})


@_conv("slice")
def _c_slice(c: _Converter, node, x, dim=0, start=None, end=None, step=1):
    if c.is_dynamic([start, end]):
        raise UnsupportedOpError("slice with batch-dependent bounds is not supported")
    c.emit("slice", [c.value(x)], node, {"dim": int(dim), "start": start, "end": end,
                                         "step": int(step)})


@_conv("select")
def _c_select(c: _Converter, node, x, dim, index):
    c.emit("select", [c.value(x)], node, {"dim": int(dim), "index": int(index)})


@_conv("split_with_sizes", "split", "chunk", "unbind", "tensor_split")
def _c_split(c: _Converter, node, x, *a, **k):
    vals = node.meta["val"]
    name = node.target.__name__.split(".")[0]
    dim = int(k.get("dim", a[1] if len(a) > 1 else 0)) if name != "unbind" else int(
        a[0] if a else k.get("dim", 0))
    nd = len(c.g.shapes[c.value(x)])
    dim %= nd
    sizes = [1] * len(vals) if name == "unbind" else [_dim(v.shape[dim]) for v in vals]
    if any(isinstance(s, list) for s in sizes):
        raise UnsupportedOpError(f"{name} along the batch dimension is not supported")
    c.emit("split", [c.value(x)], node, {"dim": dim, "sizes": sizes, "squeeze": name == "unbind"},
           n_out=len(vals))


@_conv("mean", "sum", "amax", "amin")
def _c_reduce(c: _Converter, node, x, dims=None, keepdim=False, *a, **k):
    name = node.target.__name__.split(".")[0]
    nd = len(c.g.shapes[c.value(x)])
    dims = list(range(nd)) if dims is None else [int(d) % nd for d in _as_list(dims)]
    c.emit("reduce", [c.value(x)], node, {"fn": name, "dims": dims, "keepdim": bool(keepdim)})


@_conv("linalg_vector_norm")
def _c_norm(c: _Converter, node, x, ord=2, dims=None, keepdim=False, *a, **k):
    nd = len(c.g.shapes[c.value(x)])
    dims = list(range(nd)) if dims is None else [int(d) % nd for d in _as_list(dims)]
    c.emit("vector_norm", [c.value(x)], node, {"ord": float(ord), "dims": dims,
                                               "keepdim": bool(keepdim)})


def _as_list(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


@_conv("max_pool2d", "max_pool2d_with_indices")
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


@_conv("avg_pool2d")
def _c_avgpool(c: _Converter, node, x, kernel, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    k = _ints(kernel)
    s = _ints(stride) if stride else k
    p = _ints(padding)
    c.emit("avgpool", [c.value(x)], node, {
        "kernel": k, "stride": s, "pads": [p[0], p[0], p[1], p[1]], "ceil_mode": bool(ceil_mode),
        "count_include_pad": bool(count_include_pad), "divisor": divisor_override})


@_conv("adaptive_avg_pool2d", "_adaptive_avg_pool2d")
def _c_adaptive(c: _Converter, node, x, size):
    c.emit("adaptive_avgpool", [c.value(x)], node, {"size": _ints(size)})


@_conv("pad", "constant_pad_nd")
def _c_pad(c: _Converter, node, x, pads, mode="constant", value=None):
    if mode != "constant":
        raise UnsupportedOpError(f"pad mode {mode!r} is not supported")
    c.emit("pad", [c.value(x)], node, {"pads": [int(p) for p in pads],
                                       "value": 0.0 if value is None else float(value)})


@_conv("upsample_bilinear2d", "upsample_nearest2d")
def _c_upsample(c: _Converter, node, x, size=None, align_corners=False, *a, **k):
    name = node.target.__name__.split(".")[0]
    out = _shape(node.meta["val"])
    attrs = {"mode": "bilinear" if "bilinear" in name else "nearest", "size": out[2:]}
    if "bilinear" in name:
        attrs["align_corners"] = bool(align_corners)
    c.emit("interpolate", [c.value(x)], node, attrs)


@_conv("ones_like", "zeros_like", "full_like")
def _c_full_like(c: _Converter, node, x, *a, **k):
    name = node.target.__name__.split(".")[0]
    fill = {"ones_like": 1.0, "zeros_like": 0.0}.get(name)
    if fill is None:
        fill = float(a[0])
    c.emit("full_like", [c.value(x)], node, {"value": fill})


@_conv("where")
def _c_where(c: _Converter, node, cond, a, b):
    raise UnsupportedOpError("where on activations is not supported by the packed engine")
