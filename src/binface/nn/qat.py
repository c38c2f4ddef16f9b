"""Quantisation-aware training (``train.qat=int8``) with PyTorch's own fake-quant modules.

Every float ``nn.Conv2d`` / ``nn.Linear`` of a model (exactly those types: binface's
binary and DoReFa layers subclass them and keep their own quantizers) becomes a
:class:`QATConv2d` / :class:`QATLinear` that fake-quantises

- its weight per output channel, symmetric int8 (``torch.ao.quantization.FakeQuantize``
  over a ``MovingAveragePerChannelMinMaxObserver``: PyTorch's default QAT weight
  recipe), and
- its input per tensor, affine int8 (``FakeQuantize`` over a
  ``MovingAverageMinMaxObserver``), the same places ONNX Runtime's QDQ format puts a
  QuantizeLinear / DequantizeLinear pair.

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

__all__ = ["QAT_MODES", "QATConv2d", "QATLinear", "is_qat", "prepare_qat", "qat_layers"]

QAT_MODES = ("none", "int8")
# int8 over the full range: ONNX QuantizeLinear's int8 is [-128, 127], the only signed
# range torch.onnx exports the fake-quant ops with
QMIN, QMAX = -128, 127


def weight_fake_quant() -> FakeQuantize:
    """Per-output-channel symmetric int8 weights (zero point 0), PyTorch's QAT default."""
    return FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=QMIN,
                        quant_max=QMAX, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                        ch_axis=0, reduce_range=False)


def activation_fake_quant() -> FakeQuantize:
    """Per-tensor affine int8 activations over a moving average of the observed range."""
    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=QMIN, quant_max=QMAX,
                        dtype=torch.qint8, qscheme=torch.per_tensor_affine, reduce_range=False)


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


_SWAP: dict[type, type] = {nn.Conv2d: QATConv2d, nn.Linear: QATLinear}


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
    for m in list(model.modules()):
        cls = _SWAP.get(type(m))
        if cls is None:
            continue
        m.__class__ = cls
        m._attach()
    model.qat = mode
    return model


def qat_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, module) of every fake-quantised layer."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _QATMixin)]


def is_qat(model: nn.Module) -> bool:
    return bool(qat_layers(model))
