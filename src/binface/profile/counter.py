"""Complexity accounting in the larq convention (the seed's Table 2), from the real forward pass.

Rules (docs/counting.md):

- MACs are counted for convolutions and dense layers only: for every non-bias
  weight tensor, elements x output pixels (H x W for a conv, the token count for a
  dense layer on tokens, 1 for a dense layer on vectors), at precision
  max(input precision (32 if the layer has no input quantizer), weight precision).
- Parameters: every tensor at its precision; BatchNorm counts only its moving mean
  and variance (gamma and beta fold into them); biases, PReLU slopes and fixed
  kernels count as 32-bit. Memory = sum(bits x count) / 8 bytes.
- An int8 layer (``binface.nn.qat``: a QAT model, or ``precision="int8"``) counts
  8-bit MACs and an 8-bit weight, plus its scales (one per output channel and one
  for the input) as 32-bit parameters; the fake-quant observers' state is not counted.
- On top of the larq count: "runtime-binary" MACs, whose two operands are both
  +-1 when the network runs (what xor + popcount executes), and "matmul" MACs,
  activation-by-activation products (attention) that the larq convention leaves
  out; a module declares them with ``extra_macs(inputs, output)``: an int
  (32-bit products) or ``{bits: count}``. A product of two +-1 tensors is 1-bit
  (``macs_matmul_1bit``); every other one is ``macs_matmul_32bit`` (the runtimes
  keep non-binary activations in float). ``macs_matmul`` is their sum.

The walk uses forward hooks on a real forward pass at batch 1, so what is counted
is what runs, including output sizes that depend on padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.ao.quantization import FakeQuantizeBase
from torch.ao.quantization.observer import ObserverBase
from torch.nn.modules.batchnorm import _BatchNorm

from binface.nn.layers import WeightSpec

PRECISIONS = ("float", "int8")


@dataclass
class LayerProfile:
    """What one module contributes: MACs and parameters by precision (bits -> count)."""

    name: str
    kind: str
    output_shape: tuple[int, ...] | None = None
    input_precision: int | None = None
    weight_precision: int | None = None
    macs: dict[int, int] = field(default_factory=dict)
    macs_runtime_binary: int = 0
    matmul: dict[int, int] = field(default_factory=dict)  # activation products by precision
    params: dict[int, int] = field(default_factory=dict)
    calls: int = 0

    @property
    def memory_bytes(self) -> float:
        return sum(bits * n for bits, n in self.params.items()) / 8

    @property
    def macs_1bit(self) -> int:
        return self.macs.get(1, 0)

    @property
    def macs_32bit(self) -> int:
        return self.macs.get(32, 0)

    @property
    def macs_matmul_1bit(self) -> int:
        return self.matmul.get(1, 0)

    @property
    def macs_matmul_32bit(self) -> int:
        return sum(n for b, n in self.matmul.items() if b != 1)

    @property
    def macs_matmul(self) -> int:
        return self.macs_matmul_1bit + self.macs_matmul_32bit

    @property
    def macs_kbit(self) -> int:
        return sum(n for b, n in self.macs.items() if b not in (1, 32))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.kind,
            "output_shape": list(self.output_shape) if self.output_shape else None,
            "input_bits": self.input_precision,
            "weight_bits": self.weight_precision,
            "macs_1bit": self.macs_1bit,
            "macs_kbit": self.macs_kbit,
            "macs_32bit": self.macs_32bit,
            "macs_runtime_binary": self.macs_runtime_binary,
            "macs_matmul": self.macs_matmul,
            "macs_matmul_1bit": self.macs_matmul_1bit,
            "macs_matmul_32bit": self.macs_matmul_32bit,
            "params_1bit": self.params.get(1, 0),
            "params_kbit": sum(n for b, n in self.params.items() if b not in (1, 32)),
            "params_32bit": self.params.get(32, 0),
            "memory_bytes": self.memory_bytes,
        }


@dataclass
class Profile:
    """Per-layer and total complexity of a model at one input size."""

    model_name: str
    input_size: tuple[int, int]
    layers: list[LayerProfile]

    @property
    def totals(self) -> dict[str, float]:
        rows = [layer.to_dict() for layer in self.layers]
        keys = ("macs_1bit", "macs_kbit", "macs_32bit", "macs_runtime_binary", "macs_matmul",
                "macs_matmul_1bit", "macs_matmul_32bit", "params_1bit", "params_kbit",
                "params_32bit")
        t: dict[str, float] = {k: int(sum(r[k] for r in rows)) for k in keys}
        t["macs_total"] = t["macs_1bit"] + t["macs_kbit"] + t["macs_32bit"]
        t["params_total"] = t["params_1bit"] + t["params_kbit"] + t["params_32bit"]
        memory = sum(r["memory_bytes"] for r in rows)
        t["memory_bytes"] = memory
        t["memory_kib"] = memory / 1024
        return t

    @property
    def kbit_widths(self) -> list[int]:
        """The bit widths counted in the k-bit columns (8 for an int8 model)."""
        return sorted({b for layer in self.layers for b in (*layer.macs, *layer.params)
                       if b not in (1, 32)})

    def to_dict(self, per_layer: bool = False) -> dict:
        d: dict = {"model": self.model_name, "input_size": list(self.input_size),
                   "convention": "larq (MACs of conv and dense layers; BN counts mean+var)",
                   "kbit_widths": self.kbit_widths}
        d.update(self.totals)
        if per_layer:
            d["layers"] = [layer.to_dict() for layer in self.layers]
        return d


def _weight_specs(module: nn.Module) -> list[WeightSpec] | None:
    """The MAC-carrying weights of a module, or None if it carries no MACs."""
    specs = getattr(module, "profile_weights", None)
    if callable(specs):
        return specs()
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        return [WeightSpec("weight", module.weight, 32, 32, False)]
    return None


def _output_pixels(module: nn.Module, output: torch.Tensor) -> int:
    """H x W of a conv output (NCHW); the token count of a dense output (N, ..., F)."""
    shape = tuple(output.shape)
    dims = shape[1:-1] if isinstance(module, nn.Linear) else shape[2:]
    n = 1
    for d in dims:
        n *= int(d)
    return n


def _own_params(
    module: nn.Module, specs: list[WeightSpec] | None
) -> list[tuple[torch.Tensor, int]]:
    """(tensor, bits) for the tensors a module owns directly, by the larq rules."""
    if isinstance(module, _BatchNorm):
        return [(t, 32) for t in (module.running_mean, module.running_var) if t is not None]
    if isinstance(module, (FakeQuantizeBase, ObserverBase)):
        return []  # training state of a QAT layer; its scales are counted by the layer
    out: list[tuple[torch.Tensor, int]] = []
    special = {id(s.tensor): s.precision for s in specs or []}
    for t in module.parameters(recurse=False):
        out.append((t, special.get(id(t), 32)))
    for _name, t in module.named_buffers(recurse=False):
        if t is not None and t.is_floating_point():
            out.append((t, special.get(id(t), 32)))
    return out


def _by_precision(extra: int | dict) -> dict[int, int]:
    """``extra_macs``'s answer as {bits: count}: a bare int is 32-bit products."""
    if isinstance(extra, dict):
        return {int(b): int(n) for b, n in extra.items()}
    return {32: int(extra)}


def _first_tensor(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def profile(
    model: nn.Module,
    input_size: tuple[int, int] = (112, 112),
    in_channels: int = 3,
    name: str | None = None,
    precision: str = "float",
) -> Profile:
    """Count MACs, parameters and memory of ``model`` by running one forward pass.

    The model runs once in eval mode under ``torch.no_grad`` on a batch of one
    random image of ``in_channels x input_size``; its training mode is restored.
    ``precision="int8"`` counts a copy whose float conv and dense layers are int8
    (as ``train.qat=int8`` or ``binface export --int8`` makes them); a QAT model
    counts as int8 either way.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    name = name or getattr(model, "model_name", type(model).__name__)
    if precision == "int8":
        import copy

        from binface.nn.qat import is_qat, prepare_qat

        if not is_qat(model):
            model = prepare_qat(copy.deepcopy(model))
    records: dict[int, LayerProfile] = {}
    order: list[int] = []
    seen_tensors: set[int] = set()

    def record_for(mod_name: str, module: nn.Module) -> LayerProfile:
        key = id(module)
        if key not in records:
            records[key] = LayerProfile(mod_name, type(module).__name__)
            order.append(key)
        return records[key]

    def make_hook(mod_name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            specs = _weight_specs(module)
            extra = getattr(module, "extra_macs", None)
            if specs is None and not callable(extra) and id(module) not in owners:
                return
            rec = record_for(mod_name, module)
            rec.calls += 1
            out = _first_tensor(output)
            if out is not None:
                rec.output_shape = tuple(int(d) for d in out.shape[1:])
            if specs and out is not None:
                pixels = _output_pixels(module, out)
                for s in specs:
                    bits = max(s.input_precision, s.precision)
                    n = s.tensor.numel() * pixels
                    rec.macs[bits] = rec.macs.get(bits, 0) + n
                    if s.runtime_binary:
                        rec.macs_runtime_binary += n
                rec.input_precision = specs[0].input_precision
                rec.weight_precision = specs[0].precision
            if callable(extra):
                for bits, n in _by_precision(extra(inputs, output)).items():
                    rec.matmul[bits] = rec.matmul.get(bits, 0) + n

        return hook

    # modules that own tensors get a row in forward order even without MACs (BN, PReLU)
    owners = {id(m) for m in model.modules() if _own_params(m, None)}
    handles = [m.register_forward_hook(make_hook(n)) for n, m in model.named_modules()]
    was_training = model.training
    model.eval()
    try:
        x = torch.randn(1, in_channels, *input_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    # parameters: every tensor once, attributed to the module that owns it
    for mod_name, module in model.named_modules():
        for t, bits in _own_params(module, _weight_specs(module)):
            if id(t) in seen_tensors:
                continue
            seen_tensors.add(id(t))
            rec = record_for(mod_name or type(model).__name__, module)
            rec.params[bits] = rec.params.get(bits, 0) + t.numel()
        scales = getattr(module, "profile_scales", None)
        if callable(scales):  # an int8 layer's float scales, which are not tensors of it
            rec = record_for(mod_name or type(model).__name__, module)
            rec.params[32] = rec.params.get(32, 0) + int(scales())

    layers = [records[k] for k in order]
    return Profile(name, tuple(input_size), layers)
