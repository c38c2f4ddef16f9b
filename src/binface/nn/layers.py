"""Binary (quantized) layers in the larq style, NCHW.

A quantized layer applies ``input_quantizer`` to its input and a kernel quantizer
to each of its latent float kernels at every forward pass, so training updates the
latent weights through the quantizers' straight-through gradients. Latent weights
are clipped after each optimiser step by :func:`apply_weight_clip`.

Every quantized layer derives from :class:`QuantizedLayer`, which holds what they
share, written once (as larq's layers share their quantizer mixins): quantizer and
clip arguments, weight clipping, the profiler hook (:meth:`~QuantizedLayer.profile_weights`:
each kernel with its precision and whether both operands are +-1 when it runs) and
the runtime hooks (:meth:`~QuantizedLayer.freeze_weights`, ``output_shape``,
``runtime_layer``) through which the exporters ask a layer what it computes,
without knowing its class. :class:`QuantizedConv` adds the padding rules of the
convolutions.

Padding is "valid", "same" or an integer (pair) as ``nn.Conv2d`` takes it. "same"
follows TensorFlow (extra row/column at the bottom/right); an integer padding that
equals it (stride 1 and (k - 1) x dilation = 2 x padding) is "same". The
*quantized* input is padded with ``pad_values`` (+1 or 0), which is what LCE and
the packed runtime execute. See docs/quantizers.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from binface.nn.quantizers import (
    Quantizer,
    get_quantizer,
    is_pm_one,
    precision_of,
    runtime_spec_of,
)

QuantizerArg = str | Quantizer | None
PaddingArg = str | int | tuple[int, int]


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow "same" padding (before, after) along one axis."""
    eff = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def pad_same(
    x: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
    value: float = 0.0,
) -> torch.Tensor:
    """Pad an NCHW tensor for a TensorFlow-"same" convolution or pooling."""
    top, bottom = same_padding(x.shape[-2], kernel[0], stride[0], dilation[0])
    left, right = same_padding(x.shape[-1], kernel[1], stride[1], dilation[1])
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def padding_mode(
    padding: PaddingArg,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[str, tuple[int, int]]:
    """("same" | "valid" | "explicit", (rows, cols) of explicit padding) of a padding argument.

    An integer padding is symmetric zero-or-``pad_values`` padding, as in
    ``nn.Conv2d``; where it equals TensorFlow's "same" (stride 1) or is 0 it is
    named so, which keeps one name per padding for the exporters.
    """
    if isinstance(padding, str):
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid', 'same' or an int (pair), got {padding!r}")
        return padding, (0, 0)
    try:
        pads = _pair(padding)
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"padding must be 'valid', 'same' or an int (pair), "
                         f"got {padding!r}") from None
    if min(pads) < 0:
        raise ValueError(f"padding must not be negative, got {padding!r}")
    if pads == (0, 0):
        return "valid", (0, 0)
    if stride == (1, 1) and all((k - 1) * d == 2 * p
                                for k, d, p in zip(kernel, dilation, pads, strict=True)):
        return "same", (0, 0)
    return "explicit", pads


@dataclass(frozen=True)
class WeightSpec:
    """One MAC-carrying weight tensor of a layer, as the profiler sees it."""

    name: str
    tensor: torch.Tensor
    precision: int  # bits of the weight value
    input_precision: int  # bits of the operand it multiplies (32 for float)
    runtime_binary: bool  # both operands +-1 when the network runs


@dataclass(frozen=True)
class RuntimeLayer:
    """A quantized layer in a runtime's terms: what the exporters record for it.

    ``kind``: "conv", "linear" or "sep" (depthwise then pointwise conv).
    ``input``: the input quantizer's :meth:`~binface.nn.quantizers.Quantizer.runtime_spec`.
    ``weights``: each kernel's forward value, by its name in the runtime IR.
    ``binary``: some of the layer's products have two +-1 operands (xor + popcount).
    ``attrs``: the rest, by IR name: groups and, for convolutions, kernel, stride,
    dilation, pads (top, bottom, left, right) and pad_value.
    """

    kind: str
    input: dict[str, Any]
    weights: dict[str, torch.Tensor]
    bias: torch.Tensor | None
    binary: bool
    attrs: dict[str, Any] = field(default_factory=dict)


class QuantizedLayer(nn.Module):
    """What every quantized layer shares: quantizers, clipping, profiler and runtime hooks.

    A subclass names its kernels in ``kernels`` ((weight attribute, quantizer
    attribute) pairs), calls :meth:`_init_quantizers` once its parameters exist, and
    implements ``forward``, :meth:`output_shape` and :meth:`runtime_layer`.
    """

    kernels: ClassVar[tuple[tuple[str, str], ...]] = (("weight", "kernel_quantizer"),)
    #: False during the first stage of two-stage training (real weights, binary inputs)
    quantize_kernel: bool = True
    input_quantizer: Quantizer | None
    bias: torch.Tensor | None

    def _init_quantizers(
        self,
        input_quantizer: QuantizerArg,
        kernel_quantizers: Sequence[QuantizerArg],
        kernel_clip: float | None,
        bias_clip: float | None,
    ) -> None:
        """Quantizers (one per kernel, in ``kernels`` order) and clip values."""
        self.input_quantizer = get_quantizer(input_quantizer)
        for (_, attr), q in zip(self.kernels, kernel_quantizers, strict=True):
            setattr(self, attr, get_quantizer(q))
        self.kernel_clip = kernel_clip
        self.bias_clip = bias_clip

    # -- what the profiler reads
    @property
    def input_precision(self) -> int:
        return precision_of(self.input_quantizer)

    @property
    def kernel_precision(self) -> int:
        """Bits of the (first) kernel's value."""
        return precision_of(getattr(self, self.kernels[0][1]))

    def profile_weights(self) -> list[WeightSpec]:
        """Each kernel at its precision; runtime-binary when it and the input are +-1."""
        xq = self.input_quantizer
        return [WeightSpec(w, getattr(self, w), precision_of(getattr(self, q)),
                           self.input_precision, is_pm_one(xq) and is_pm_one(getattr(self, q)))
                for w, q in self.kernels]

    @property
    def runtime_binary(self) -> bool:
        """Some of this layer's products have two +-1 operands: they run as xor + popcount."""
        return any(s.runtime_binary for s in self.profile_weights())

    # -- forward helpers
    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def quantized_weight(self, name: str | None = None) -> torch.Tensor:
        """The value a kernel (the first by default) has in the forward pass."""
        name = name or self.kernels[0][0]
        w = getattr(self, name)
        q = getattr(self, dict(self.kernels)[name])
        if q is None or not self.quantize_kernel:
            return w
        return q(w)

    @torch.no_grad()
    def clip_weights(self) -> None:
        """Clip the latent kernels to [-kernel_clip, kernel_clip] (the bias to bias_clip)."""
        if self.kernel_clip is not None:
            for w, _ in self.kernels:
                getattr(self, w).clamp_(-self.kernel_clip, self.kernel_clip)
        if self.bias_clip is not None and self.bias is not None:
            self.bias.clamp_(-self.bias_clip, self.bias_clip)

    # -- what the runtimes read
    @torch.no_grad()
    def freeze_weights(self) -> None:
        """Store each kernel's forward value and drop its quantizer: same outputs, less work.

        For inference copies (``runtime.capture.inference_copy``): re-quantizing every
        kernel at every call is most of a binary model's eager time.
        """
        for w, q in self.kernels:
            getattr(self, w).copy_(self.quantized_weight(w))
            setattr(self, q, None)

    def output_shape(self, shape: Sequence) -> list:
        """The output shape for an input of ``shape`` (the batch dimension passed through)."""
        raise NotImplementedError

    def runtime_layer(self, shape: Sequence) -> RuntimeLayer:
        """This layer in a runtime's terms, for an input of ``shape``."""
        raise NotImplementedError


class QuantizedConv(QuantizedLayer):
    """A quantized layer with a 2-D kernel: padding rules, output shape, runtime geometry.

    Needs ``kernel_size``, ``stride``, ``dilation`` (pairs) and ``out_channels``, then
    :meth:`_init_padding`.
    """

    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    out_channels: int

    def _init_padding(self, padding: PaddingArg, pad_values: float) -> None:
        self.pad_mode, self.explicit_padding = padding_mode(
            padding, tuple(self.kernel_size), tuple(self.stride), tuple(self.dilation))
        if pad_values not in (0.0, 1.0):
            raise ValueError(f"pad_values must be 0 or 1, got {pad_values}")
        self.pad_values = float(pad_values)

    def pads(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) padding of an h x w input."""
        if self.pad_mode == "same":
            k, s, d = self.kernel_size, self.stride, self.dilation
            return (*same_padding(h, k[0], s[0], d[0]), *same_padding(w, k[1], s[1], d[1]))
        ph, pw = self.explicit_padding
        return ph, ph, pw, pw

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (the quantized input) padded with ``pad_values``."""
        top, bottom, left, right = self.pads(x.shape[-2], x.shape[-1])
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom), value=self.pad_values)

    def output_shape(self, shape: Sequence) -> list:
        h, w = int(shape[-2]), int(shape[-1])
        top, bottom, left, right = self.pads(h, w)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ho = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
        wo = (w + left + right - dw * (kw - 1) - 1) // sw + 1
        return [shape[0], self.out_channels, ho, wo]

    def _geometry(self, shape: Sequence) -> dict[str, Any]:
        """The runtime attributes of the kernel's sliding window."""
        return {"kernel": list(self.kernel_size), "stride": list(self.stride),
                "dilation": list(self.dilation),
                "pads": list(self.pads(int(shape[2]), int(shape[3]))),
                "pad_value": self.pad_values}

    def _padding_repr(self) -> str:
        pad = self.pad_mode if self.pad_mode != "explicit" else self.explicit_padding
        s = f", padding={pad!r}"
        if self.pad_mode != "valid" and self.input_quantizer is not None:
            s += f", pad_values={self.pad_values:g}"
        return s


class QuantConv2d(QuantizedConv, nn.Conv2d):
    """A 2-D convolution with optional input and kernel quantizers.

    ``padding``: "valid", "same" (TensorFlow rule) or an int (pair), see the module
    docstring; ``pad_values`` is the value the quantized input is padded with
    (larq's ``pad_values``: 0 or +1). ``kernel_clip`` clips latent weights to
    [-clip, clip] in :meth:`clip_weights` (``bias_clip`` likewise for the bias).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int | tuple[int, int] = 1,
        padding: PaddingArg = "valid",
        pad_values: float = 0.0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        input_quantizer: QuantizerArg = None,
        kernel_quantizer: QuantizerArg = None,
        kernel_clip: float | None = None,
        bias_clip: float | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,
                         dilation=dilation, groups=groups, bias=bias)
        self._init_padding(padding, pad_values)
        self._init_quantizers(input_quantizer, (kernel_quantizer,), kernel_clip, bias_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(x)
        w = self.quantized_weight()
        if self._is_pointwise_depthwise():
            # a 1x1 depthwise conv is a per-channel product; oneDNN runs it several times slower
            y = x * w.view(1, -1, 1, 1)
            return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)
        return F.conv2d(self.pad(x), w, self.bias, self.stride, 0, self.dilation, self.groups)

    def _is_pointwise_depthwise(self) -> bool:
        return (self.kernel_size == (1, 1) and self.stride == (1, 1)
                and self.pad_mode != "explicit"
                and self.groups == self.in_channels == self.out_channels)

    def runtime_layer(self, shape: Sequence) -> RuntimeLayer:
        return RuntimeLayer("conv", runtime_spec_of(self.input_quantizer),
                            {"weight": self.quantized_weight()}, self.bias, self.runtime_binary,
                            {"groups": self.groups, **self._geometry(shape)})

    def extra_repr(self) -> str:
        s = super().extra_repr().replace(", bias=False", "") + self._padding_repr()
        if self.kernel_clip is not None:
            s += f", kernel_clip={self.kernel_clip}"
        return s


class BinaryConv2d(QuantConv2d):
    """A binary convolution: SteSign on input and kernel, latent weights clipped at 1.

    Pass other quantizers (``DoReFa(1, "weights")``, ``ApproxSign()``...) or ``None``
    for a float operand; the profiler then counts the MACs at the operands' precision.
    Other keyword arguments as :class:`QuantConv2d`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        input_quantizer: QuantizerArg = "ste_sign",
        kernel_quantizer: QuantizerArg = "ste_sign",
        kernel_clip: float | None = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, input_quantizer=input_quantizer,
                         kernel_quantizer=kernel_quantizer, kernel_clip=kernel_clip, **kwargs)


class BinaryDepthwiseConv2d(BinaryConv2d):
    """A binary depthwise convolution (one group per input channel).

    Other keyword arguments as :class:`BinaryConv2d` (``groups`` is fixed).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int | tuple[int, int],
        *,
        depth_multiplier: int = 1,
        depthwise_quantizer: QuantizerArg = "ste_sign",
        **kwargs: Any,
    ) -> None:
        super().__init__(channels, channels * depth_multiplier, kernel_size, groups=channels,
                         kernel_quantizer=depthwise_quantizer, **kwargs)


class BinarySeparableConv2d(QuantizedConv):
    """A binary separable convolution: quantized input, depthwise then pointwise kernel.

    As in larq, the input is quantized once and the bias is added after the
    pointwise step. The pointwise kernel multiplies the depthwise output: with a
    k x k depthwise kernel (k > 1) that is a float sum, so the pointwise MACs are
    1-bit in the larq count but cannot run as xor + popcount. With a 1 x 1 kernel
    the depthwise step of +-1 by +-1 is only a per-channel sign flip: the pointwise
    operand stays +-1 and runs binary, and the flip folds into the packing (no MACs
    executed). LCE runs both cases in float.
    """

    kernels = (("depthwise_weight", "depthwise_quantizer"),
               ("pointwise_weight", "pointwise_quantizer"))

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        stride: int | tuple[int, int] = 1,
        padding: PaddingArg = "valid",
        pad_values: float = 0.0,
        depth_multiplier: int = 1,
        dilation: int | tuple[int, int] = 1,
        bias: bool = False,
        input_quantizer: QuantizerArg = "ste_sign",
        depthwise_quantizer: QuantizerArg = "ste_sign",
        pointwise_quantizer: QuantizerArg = "ste_sign",
        kernel_clip: float | None = 1.0,
        bias_clip: float | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.dilation = _pair(dilation)
        self._init_padding(padding, pad_values)
        mid = in_channels * depth_multiplier
        self.depthwise_weight = nn.Parameter(torch.empty(mid, 1, *self.kernel_size))
        self.pointwise_weight = nn.Parameter(torch.empty(out_channels, mid, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._init_quantizers(input_quantizer, (depthwise_quantizer, pointwise_quantizer),
                              kernel_clip, bias_clip)
        nn.init.kaiming_uniform_(self.depthwise_weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.pointwise_weight, a=math.sqrt(5))

    def profile_weights(self) -> list[WeightSpec]:
        ip = self.input_precision
        dw_binary = is_pm_one(self.input_quantizer) and is_pm_one(self.depthwise_quantizer)
        sign_flip = dw_binary and self.kernel_size == (1, 1)  # depthwise output stays +-1
        return [
            WeightSpec("depthwise_weight", self.depthwise_weight,
                       precision_of(self.depthwise_quantizer), ip, dw_binary and not sign_flip),
            WeightSpec("pointwise_weight", self.pointwise_weight,
                       precision_of(self.pointwise_quantizer), ip,
                       sign_flip and is_pm_one(self.pointwise_quantizer)),
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pad(self.quantize_input(x))
        dw = self.quantized_weight("depthwise_weight")
        pw = self.quantized_weight("pointwise_weight")
        y = F.conv2d(x, dw, None, self.stride, 0, self.dilation, self.in_channels)
        return F.conv2d(y, pw, self.bias)

    def runtime_layer(self, shape: Sequence) -> RuntimeLayer:
        weights = {"dw_weight": self.quantized_weight("depthwise_weight"),
                   "pw_weight": self.quantized_weight("pointwise_weight")}
        attrs = {"dw_binary": is_pm_one(self.depthwise_quantizer),
                 "pw_binary": is_pm_one(self.pointwise_quantizer),
                 "groups": self.in_channels, **self._geometry(shape)}
        return RuntimeLayer("sep", runtime_spec_of(self.input_quantizer), weights, self.bias,
                            self.runtime_binary, attrs)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}{self._padding_repr()}, bias={self.bias is not None}")


class QuantLinear(QuantizedLayer, nn.Linear):
    """A dense layer with optional input and kernel quantizers (on the last dimension)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = False,
        input_quantizer: QuantizerArg = None,
        kernel_quantizer: QuantizerArg = None,
        kernel_clip: float | None = None,
        bias_clip: float | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self._init_quantizers(input_quantizer, (kernel_quantizer,), kernel_clip, bias_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantize_input(x), self.quantized_weight(), self.bias)

    def output_shape(self, shape: Sequence) -> list:
        return [*shape[:-1], self.out_features]

    def runtime_layer(self, shape: Sequence) -> RuntimeLayer:
        return RuntimeLayer("linear", runtime_spec_of(self.input_quantizer),
                            {"weight": self.quantized_weight()}, self.bias, self.runtime_binary)


class BinaryLinear(QuantLinear):
    """A binary dense layer: SteSign on input and kernel, latent weights clipped at 1.

    Other keyword arguments as :class:`QuantLinear`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        input_quantizer: QuantizerArg = "ste_sign",
        kernel_quantizer: QuantizerArg = "ste_sign",
        kernel_clip: float | None = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(in_features, out_features, input_quantizer=input_quantizer,
                         kernel_quantizer=kernel_quantizer, kernel_clip=kernel_clip, **kwargs)


def set_kernel_quantization(model: nn.Module, enabled: bool) -> int:
    """Turn the kernel quantizers of every quantized layer on or off; returns the count.

    Off is stage one of the two-stage binary recipe: binary activations, real weights.
    """
    n = 0
    for m in model.modules():
        if isinstance(m, QuantizedLayer):
            m.quantize_kernel = enabled
            n += 1
    return n


def apply_weight_clip(model: nn.Module) -> None:
    """Clip every quantized layer's latent weights (call after each optimiser step)."""
    for m in model.modules():
        clip = getattr(m, "clip_weights", None)
        if callable(clip):
            clip()
