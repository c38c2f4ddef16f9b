"""Quantisation-aware training (``train.qat=int8``) with PyTorch's own fake-quant modules.

Every float ``nn.Conv2d`` / ``nn.Linear`` of a model (exactly those types: binface's
binary and DoReFa layers subclass them and keep their own quantizers) becomes a
:class:`QATConv2d` / :class:`QATLinear` that fake-quantises

- its weight per output channel, symmetric int8 (``torch.ao.quantization.FakeQuantize``
  over a ``MovingAveragePerChannelMinMaxObserver``: PyTorch's default QAT weight
  recipe), and
- its input per tensor, affine uint8 (``FakeQuantize`` over a
  ``MovingAverageMinMaxObserver``), the same places ONNX Runtime's QDQ format puts a
  QuantizeLinear / DequantizeLinear pair;
- and the output of a BatchNorm that directly follows such a conv (found by one probe
  forward), as :class:`QATBatchNorm2d`: at export that BatchNorm folds into the conv
  (``binface.runtime.int8``), and this range becomes the conv's output quantisation,
  which is what lets ONNX Runtime run the conv as ``QLinearConv``.

Activations are uint8 and weights int8 (U8S8), ONNX Runtime's format on x86-64: with
int8 activations its S8-to-U8 rewrite skips a QuantizeLinear that feeds two nodes (a
PReLU decomposed for speed does), and the conv before it then stays float.

Eager module swapping, not ``torch.ao.quantization.quantize_fx.prepare_qat_fx``: FX
cannot trace binface's models (their forward checks the input's shape in Python), and
a swap keeps every parameter name, so a QAT checkpoint's state dict is the float
model's plus the fake-quant buffers (scales, zero points, observed ranges).

Observers run only in training mode: evaluation, profiling and export read the
learned ranges without moving them. torch.onnx exports the fake-quant ops as
QuantizeLinear / DequantizeLinear with those scales (``binface.runtime.int8``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import (
    FakeQuantize,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
)

from binface.nn.layers import WeightSpec
from binface.nn.norm import BatchNorm2d

__all__ = ["QAT_MODES", "QATBatchNorm2d", "QATConv2d", "QATLinear", "is_qat", "prepare_qat",
           "qat_layers"]

QAT_MODES = ("none", "int8")
# the full ranges torch.onnx exports the fake-quant ops with: int8 [-128, 127] for
# weights, uint8 [0, 255] for activations
QMIN, QMAX = -128, 127
AMIN, AMAX = 0, 255


def weight_fake_quant() -> FakeQuantize:
    """Per-output-channel symmetric int8 weights (zero point 0), PyTorch's QAT default."""
    return FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=QMIN,
                        quant_max=QMAX, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                        ch_axis=0, reduce_range=False)


def activation_fake_quant() -> FakeQuantize:
    """Per-tensor affine uint8 activations over a moving average of the observed range."""
    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=AMIN, quant_max=AMAX,
                        dtype=torch.quint8, qscheme=torch.per_tensor_affine, reduce_range=False)


class _QATMixin:
    """Fake-quantised input and weight; observers follow the module's training mode."""

    input_fake_quant: FakeQuantize
    weight_fake_quant: FakeQuantize

    def _attach(self) -> None:
        device = self.weight.device  # type: ignore[attr-defined]
        self.input_fake_quant = activation_fake_quant().to(device)
        self.weight_fake_quant = weight_fake_quant().to(device)
        with torch.no_grad():  # weight ranges need no data: per-channel scales from the start
            self.weight_fake_quant(self.weight.detach())  # type: ignore[attr-defined]
        self.train(self.training)

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)  # type: ignore[misc]
        for fq in (self.input_fake_quant, self.weight_fake_quant):
            fq.enable_observer(mode)
        return self

    def profile_weights(self) -> list[WeightSpec]:
        """The profiler's view: an 8-bit weight times an 8-bit input (docs/counting.md)."""
        return [WeightSpec("weight", self.weight, 8, 8, False)]  # type: ignore[attr-defined]

    def profile_scales(self) -> int:
        """Float numbers the int8 layer stores beside its weight: one scale per output
        channel and the input's scale (zero points are not counted: 0 for the weight, one
        byte for the input)."""
        return int(self.weight.shape[0]) + 1  # type: ignore[attr-defined]

    @property
    def observed(self) -> bool:
        """Whether both ranges have been observed (a fresh layer has scale 1)."""
        return all(fq.activation_post_process.min_val.numel() > 0
                   for fq in (self.input_fake_quant, self.weight_fake_quant))


class QATConv2d(_QATMixin, nn.Conv2d):
    """``nn.Conv2d`` with int8 fake-quantised input and weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_fake_quant(x), self.weight_fake_quant(self.weight),
                                  self.bias)


class QATLinear(_QATMixin, nn.Linear):
    """``nn.Linear`` with int8 fake-quantised input and weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_fake_quant(x), self.weight_fake_quant(self.weight), self.bias)


class _QATOutputMixin:
    """A BatchNorm whose output is fake-quantised (the conv it folds into at export)."""

    output_fake_quant: FakeQuantize

    def _attach(self) -> None:
        self.output_fake_quant = activation_fake_quant().to(self.weight.device)  # type: ignore[attr-defined]
        self.train(self.training)

    def train(self, mode: bool = True):  # type: ignore[override]
        super().train(mode)  # type: ignore[misc]
        self.output_fake_quant.enable_observer(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_fake_quant(super().forward(x))  # type: ignore[misc]


class QATBatchNorm2d(_QATOutputMixin, BatchNorm2d):
    """binface's ``BatchNorm2d`` after a fake-quant conv: its output fake-quantised."""


class _QATTorchBatchNorm2d(_QATOutputMixin, nn.BatchNorm2d):
    """The same for a plain ``nn.BatchNorm2d``."""


_SWAP: dict[type, type] = {nn.Conv2d: QATConv2d, nn.Linear: QATLinear}
_SWAP_BN: dict[type, type] = {BatchNorm2d: QATBatchNorm2d, nn.BatchNorm2d: _QATTorchBatchNorm2d}


def prepare_qat(model: nn.Module, mode: str = "int8") -> nn.Module:
    """Turn ``model``'s float conv and dense layers into fake-quant ones, in place.

    The swap changes each layer's class and adds its fake-quant children; the
    parameters are the same objects, so an optimiser built before or after sees the
    same tensors. Returns ``model``; ``mode="none"`` leaves it as it is.
    """
    if mode not in QAT_MODES:
        raise ValueError(f"qat mode must be one of {', '.join(QAT_MODES)}, not {mode!r}")
    if mode == "none":
        return model
    bns = _bn_after_conv(model)
    for m in list(model.modules()):
        cls = _SWAP.get(type(m))
        if cls is None:
            continue
        m.__class__ = cls
        m._attach()
    for m in bns:
        m.__class__ = _SWAP_BN[type(m)]
        m._attach()
    model.qat = mode
    return model


def _bn_after_conv(model: nn.Module) -> list[nn.Module]:
    """The BatchNorms whose input is the output of a float ``nn.Conv2d``, and only its
    (one probe forward in eval mode with hooks; the model's own ``input_size`` or
    112x112). A model the probe cannot run gets no output quantisation (its convs then
    stay float in ONNX Runtime, as before)."""
    convs = [m for m in model.modules() if type(m) is nn.Conv2d]
    bns = [m for m in model.modules() if type(m) in _SWAP_BN]
    if not convs or not bns:
        return []
    made: dict[int, torch.Tensor] = {}  # id -> conv output (held: ids are not reused)
    found: list[nn.Module] = []
    hooks = [c.register_forward_hook(lambda _m, _i, out: made.setdefault(id(out), out))
             for c in convs]
    hooks += [b.register_forward_pre_hook(
        lambda m, inp: found.append(m) if id(inp[0]) in made else None) for b in bns]
    size = tuple(getattr(model, "input_size", None) or (112, 112))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, *size, device=next(model.parameters()).device))
    except Exception:  # noqa: BLE001 - a model the probe cannot run is quantised without it
        found = []
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return list({id(m): m for m in found}.values())


def qat_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) of every fake-quantised layer."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _QATMixin)]


def is_qat(model: nn.Module) -> bool:
    return bool(qat_layers(model))
