"""Trace a PyTorch model into binface's runtime IR (torch side of the exporters).

``torch.export`` gives an ATen graph with a symbolic batch dimension. Before
tracing, every quantized layer (``QuantConv2d``, ``BinarySeparableConv2d``,
``QuantLinear``) and every free-standing quantizer is swapped, for the duration of
the trace, for an opaque custom op, so the graph keeps one node per binary layer
instead of its sign / pad / conv decomposition; the lowering (``lower.py``) then
turns each such node into a packed xor + popcount op. Every other ATen op is
mapped to an IR op with numpy semantics; subgraphs that depend on constants only
(positional encodings, reshaped weights) are folded with torch here.

The IR types are in ``ir.py``; the ATen converters, one per IR op of the op
table (``ops/table.py``), in ``ops/aten.py``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import operator
import types
import warnings
from typing import Any

import torch
from torch import nn

from binface.errors import BinfaceError
from binface.nn.layers import BinarySeparableConv2d, QuantConv2d, QuantLinear, same_padding
from binface.nn.quantizers import (
    ApproxSign,
    DoReFa,
    MagnitudeAwareSign,
    Quantizer,
    RSign,
    SteSign,
    SwishSign,
)
from binface.runtime.errors import UnsupportedOpError
from binface.runtime.ir import IRGraph, Node
from binface.runtime.ops.aten import CONVERTERS as _CONVERTERS
from binface.runtime.ops.aten import SYM_OPS as _SYM_OPS
from binface.runtime.ops.aten import value_shape as _shape


# ---------------------------------------------------------------- quantizer kinds
def quantizer_kind(q: Quantizer | None) -> dict:
    """What a quantizer computes, in runtime terms.

    ``pos``: sign with sign(0) = +1; ``neg``: sign with sign(0) = -1 (DoReFa at one
    bit); ``dorefa``: k-bit DoReFa activations, a float op; ``none``: no quantizer.
    RSign's learned shift is returned as ``shift`` (added before the sign).

    DoReFa's float formula also sends positive values below 2^-24 max|tanh x| (of the
    whole batch) to -1, as 0.5 + tiny rounds to 0.5; ``neg`` does not copy that
    rounding artefact (it needs a batch-wide max before any sign).
    """
    if q is None:
        return {"kind": "none"}
    if isinstance(q, RSign):
        return {"kind": "pos", "shift": q.shift.detach().float().numpy().copy()}
    if isinstance(q, (SteSign, ApproxSign, SwishSign)):
        return {"kind": "pos"}
    if isinstance(q, DoReFa):
        if q.k_bit == 1 and q.mode == "weights":
            return {"kind": "neg"}
        if q.mode == "activations":
            return {"kind": "dorefa", "k_bit": q.k_bit}
    if isinstance(q, MagnitudeAwareSign):
        raise UnsupportedOpError("MagnitudeAwareSign as an input quantizer is not supported "
                                 "by the packed engine (its scale depends on the batch)")
    raise UnsupportedOpError(f"quantizer {type(q).__name__} ({q.extra_repr()}) is not "
                             "supported by the packed engine")


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
        if isinstance(mod, (QuantConv2d, QuantLinear)) and mod.kernel_quantizer is not None:
            mod.weight.copy_(mod.kernel_quantizer(mod.weight))
            mod.kernel_quantizer = None
        elif isinstance(mod, BinarySeparableConv2d):
            for wname, qname in (("depthwise_weight", "depthwise_quantizer"),
                                 ("pointwise_weight", "pointwise_quantizer")):
                q = getattr(mod, qname)
                if q is not None:
                    getattr(mod, wname).copy_(q(getattr(mod, wname)))
                    setattr(mod, qname, None)
    return m


# ---------------------------------------------------------------- opaque layers
_LAYERS: dict[int, nn.Module] = {}


def _out_hw(h: int, w: int, k, s, d, mode: str) -> tuple[int, int]:
    if mode == "same":
        return math.ceil(h / s[0]), math.ceil(w / s[1])
    return ((h - (d[0] * (k[0] - 1) + 1)) // s[0] + 1, (w - (d[1] * (k[1] - 1) + 1)) // s[1] + 1)


def _layer_out_shape(m: nn.Module, x: torch.Tensor) -> list:
    if isinstance(m, QuantLinear):
        return [*x.shape[:-1], m.out_features]
    if isinstance(m, Quantizer):
        return list(x.shape)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ho, wo = _out_hw(h, w, m.kernel_size, m.stride, m.dilation, m.pad_mode)
    return [x.shape[0], m.out_channels, ho, wo]


@torch.library.custom_op("binface_rt::qlayer", mutates_args=())
def _qlayer(x: torch.Tensor, index: int) -> torch.Tensor:
    return _LAYERS[index]._binface_forward(x)


@_qlayer.register_fake
def _qlayer_fake(x: torch.Tensor, index: int) -> torch.Tensor:
    return x.new_empty(_layer_out_shape(_LAYERS[index], x))


def _is_opaque(m: nn.Module) -> bool:
    return isinstance(m, (QuantConv2d, BinarySeparableConv2d, QuantLinear, Quantizer))


@contextlib.contextmanager
def opaque_quantized_layers(model: nn.Module):
    """Swap quantized layers and free quantizers for one opaque op while tracing."""
    patched: list[nn.Module] = []
    inner: set[int] = set()
    for m in model.modules():
        if isinstance(m, (QuantConv2d, BinarySeparableConv2d, QuantLinear)):
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
                self.g.nodes[-1].attrs["shift"] = self.const(torch.from_numpy(k["shift"]))
            return
        with torch.no_grad():
            if isinstance(m, BinarySeparableConv2d):
                attrs = {
                    "layer": "sep", "in_q": None,
                    "dw_weight": self.const(_qw(m.depthwise_quantizer, m.depthwise_weight)),
                    "pw_weight": self.const(_qw(m.pointwise_quantizer, m.pointwise_weight)),
                    "dw_binary": m.depthwise_quantizer is not None
                    and bool(m.depthwise_quantizer.pm_one),
                    "pw_binary": m.pointwise_quantizer is not None
                    and bool(m.pointwise_quantizer.pm_one),
                    "groups": m.in_channels,
                }
            elif isinstance(m, QuantConv2d):
                attrs = {"layer": "conv", "weight": self.const(m.quantized_weight()),
                         "groups": m.groups}
            else:
                attrs = {"layer": "linear", "weight": self.const(m.quantized_weight())}
            attrs["w_binary"] = bool(getattr(m, "runtime_binary", False)) or (
                attrs["layer"] == "sep" and attrs["dw_binary"] and attrs["pw_binary"])
            attrs["module"] = type(m).__name__
            attrs["source"] = self.paths.get(id(m), "")
            k = quantizer_kind(m.input_quantizer)
            attrs["in_q"] = _jsonable_q(k)
            if "shift" in k:
                attrs["in_shift"] = self.const(torch.from_numpy(k["shift"]))
            if m.bias is not None:
                attrs["bias"] = self.const(m.bias)
            if attrs["layer"] != "linear":
                kh, kw = m.kernel_size
                sh, sw = m.stride
                dh, dw = m.dilation
                h, w = shape_in[2], shape_in[3]
                if m.pad_mode == "same":
                    pt, pb = same_padding(h, kh, sh, dh)
                    pl, pr = same_padding(w, kw, sw, dw)
                else:
                    pt = pb = pl = pr = 0
                attrs.update(kernel=[kh, kw], stride=[sh, sw], dilation=[dh, dw],
                             pads=[pt, pb, pl, pr], pad_value=float(m.pad_values))
        self.emit("qlayer", [x], node, attrs)


def _qw(q: Quantizer | None, w: torch.Tensor) -> torch.Tensor:
    return q(w) if q is not None else w


def _jsonable_q(k: dict) -> dict:
    return {a: b for a, b in k.items() if a != "shift"}
