"""Trace a PyTorch model into binface's runtime IR (torch side of the exporters).

``torch.export`` gives an ATen graph with a symbolic batch dimension. Before
tracing, every quantized layer (a ``binface.nn.layers.QuantizedLayer``) and every
free-standing quantizer is swapped, for the duration of the trace, for an opaque
custom op, so the graph keeps one node per binary layer
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
import operator
import types
import warnings
from typing import Any

import torch
from torch import nn

from binface.errors import BinfaceError
from binface.nn.layers import QuantizedLayer
from binface.nn.quantizers import Quantizer, runtime_spec_of
from binface.runtime.errors import UnsupportedOpError
from binface.runtime.ir import IRGraph, Node
from binface.runtime.ops.aten import CONVERTERS as _CONVERTERS
from binface.runtime.ops.aten import SYM_OPS as _SYM_OPS
from binface.runtime.ops.aten import value_shape as _shape


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
