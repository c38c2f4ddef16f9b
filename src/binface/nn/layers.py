"""Binary (quantized) layers in the larq style, NCHW.

A quantized layer applies ``input_quantizer`` to its input and ``kernel_quantizer``
to its latent float weights at every forward pass, so training updates the latent
weights through the quantizers' straight-through gradients. Latent weights are
clipped after each optimiser step by :func:`apply_weight_clip`.

"same" padding follows TensorFlow (extra row/column at the bottom/right) and pads
the *quantized* input with ``pad_values`` (+1 or 0), which is what LCE and the
packed runtime execute.

Every layer reports to the profiler, through :meth:`profile_weights`, each weight
tensor with its precision and whether both operands are +-1 when it runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from binface.nn.quantizers import Quantizer, get_quantizer, is_pm_one, precision_of


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


@dataclass(frozen=True)
class WeightSpec:
    """One MAC-carrying weight tensor of a layer, as the profiler sees it."""

    name: str
    tensor: torch.Tensor
    precision: int  # bits of the weight value
    input_precision: int  # bits of the operand it multiplies (32 for float)
    runtime_binary: bool  # both operands +-1 when the network runs


class QuantConv2d(nn.Conv2d):
    """A 2-D convolution with optional input and kernel quantizers.

    ``padding`` is "valid" or "same" (TensorFlow rule); ``pad_values`` is the value
    the quantized input is padded with (larq's ``pad_values``: 0 or +1).
    ``kernel_clip`` clips latent weights to [-clip, clip] in :meth:`clip_weights`
    (``bias_clip`` likewise for the bias).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str = "valid",
        pad_values: float = 0.0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        input_quantizer: str | Quantizer | None = None,
        kernel_quantizer: str | Quantizer | None = None,
        kernel_clip: float | None = None,
        bias_clip: float | None = None,
    ) -> None:
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        if pad_values not in (0.0, 1.0):
            raise ValueError(f"pad_values must be 0 or 1, got {pad_values}")
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=0,
            dilation=dilation, groups=groups, bias=bias,
        )
        self.pad_mode = padding
        self.pad_values = float(pad_values)
        self.input_quantizer = get_quantizer(input_quantizer)
        self.kernel_quantizer = get_quantizer(kernel_quantizer)
        self.kernel_clip = kernel_clip
        self.bias_clip = bias_clip

    # -- what the profiler and the runtimes read
    @property
    def input_precision(self) -> int:
        return precision_of(self.input_quantizer)

    @property
    def kernel_precision(self) -> int:
        return precision_of(self.kernel_quantizer)

    @property
    def runtime_binary(self) -> bool:
        """Both operands are +-1 when this layer runs: it can be xor + popcount."""
        return is_pm_one(self.input_quantizer) and is_pm_one(self.kernel_quantizer)

    def profile_weights(self) -> list[WeightSpec]:
        return [WeightSpec("weight", self.weight, self.kernel_precision, self.input_precision,
                           self.runtime_binary)]

    #: False during the first stage of two-stage training (real weights, binary inputs)
    quantize_kernel: bool = True

    def quantized_weight(self) -> torch.Tensor:
        if self.kernel_quantizer is None or not self.quantize_kernel:
            return self.weight
        return self.kernel_quantizer(self.weight)

    @torch.no_grad()
    def clip_weights(self) -> None:
        if self.kernel_clip is not None:
            self.weight.clamp_(-self.kernel_clip, self.kernel_clip)
        if self.bias_clip is not None and self.bias is not None:
            self.bias.clamp_(-self.bias_clip, self.bias_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        w = self.quantized_weight()
        if self._is_pointwise_depthwise():
            # a 1x1 depthwise conv is a per-channel product; oneDNN runs it several times slower
            y = x * w.view(1, -1, 1, 1)
            return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)
        if self.pad_mode == "same":
            x = pad_same(x, self.kernel_size, self.stride, self.dilation, self.pad_values)
        return F.conv2d(x, w, self.bias, self.stride, 0, self.dilation, self.groups)

    def _is_pointwise_depthwise(self) -> bool:
        return (self.kernel_size == (1, 1) and self.stride == (1, 1)
                and self.groups == self.in_channels == self.out_channels)

    def extra_repr(self) -> str:
        s = super().extra_repr().replace(", bias=False", "")
        s += f", padding={self.pad_mode!r}"
        if self.pad_mode == "same" and self.input_quantizer is not None:
            s += f", pad_values={self.pad_values:g}"
        if self.kernel_clip is not None:
            s += f", kernel_clip={self.kernel_clip}"
        return s


class BinaryConv2d(QuantConv2d):
    """A binary convolution: SteSign on input and kernel, latent weights clipped at 1.

    Pass other quantizers (``DoReFa(1, "weights")``, ``ApproxSign()``...) or ``None``
    for a float operand; the profiler then counts the MACs at the operands' precision.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str = "valid",
        pad_values: float = 0.0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        input_quantizer: str | Quantizer | None = "ste_sign",
        kernel_quantizer: str | Quantizer | None = "ste_sign",
        kernel_clip: float | None = 1.0,
        bias_clip: float | None = None,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, pad_values, dilation,
            groups, bias, input_quantizer, kernel_quantizer, kernel_clip, bias_clip,
        )


class BinaryDepthwiseConv2d(BinaryConv2d):
    """A binary depthwise convolution (one group per input channel)."""

    def __init__(
        self,
        channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str = "valid",
        pad_values: float = 0.0,
        depth_multiplier: int = 1,
        dilation: int | tuple[int, int] = 1,
        bias: bool = False,
        input_quantizer: str | Quantizer | None = "ste_sign",
        depthwise_quantizer: str | Quantizer | None = "ste_sign",
        kernel_clip: float | None = 1.0,
        bias_clip: float | None = None,
    ) -> None:
        super().__init__(
            channels, channels * depth_multiplier, kernel_size, stride, padding, pad_values,
            dilation, channels, bias, input_quantizer, depthwise_quantizer, kernel_clip,
            bias_clip,
        )


class BinarySeparableConv2d(nn.Module):
    """A binary separable convolution: quantized input, depthwise then pointwise kernel.

    As in larq, the input is quantized once and the bias is added after the
    pointwise step. The pointwise kernel multiplies the depthwise output: with a
    k x k depthwise kernel (k > 1) that is a float sum, so the pointwise MACs are
    1-bit in the larq count but cannot run as xor + popcount. With a 1 x 1 kernel
    the depthwise step of +-1 by +-1 is only a per-channel sign flip: the pointwise
    operand stays +-1 and runs binary, and the flip folds into the packing (no MACs
    executed). LCE runs both cases in float.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str = "valid",
        pad_values: float = 0.0,
        depth_multiplier: int = 1,
        dilation: int | tuple[int, int] = 1,
        bias: bool = False,
        input_quantizer: str | Quantizer | None = "ste_sign",
        depthwise_quantizer: str | Quantizer | None = "ste_sign",
        pointwise_quantizer: str | Quantizer | None = "ste_sign",
        kernel_clip: float | None = 1.0,
    ) -> None:
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.dilation = _pair(dilation)
        self.pad_mode, self.pad_values = padding, float(pad_values)
        mid = in_channels * depth_multiplier
        self.depthwise_weight = nn.Parameter(torch.empty(mid, 1, *self.kernel_size))
        self.pointwise_weight = nn.Parameter(torch.empty(out_channels, mid, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.input_quantizer = get_quantizer(input_quantizer)
        self.depthwise_quantizer = get_quantizer(depthwise_quantizer)
        self.pointwise_quantizer = get_quantizer(pointwise_quantizer)
        self.kernel_clip = kernel_clip
        nn.init.kaiming_uniform_(self.depthwise_weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.pointwise_weight, a=math.sqrt(5))

    @property
    def input_precision(self) -> int:
        return precision_of(self.input_quantizer)

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

    quantize_kernel: bool = True

    @torch.no_grad()
    def clip_weights(self) -> None:
        if self.kernel_clip is not None:
            self.depthwise_weight.clamp_(-self.kernel_clip, self.kernel_clip)
            self.pointwise_weight.clamp_(-self.kernel_clip, self.kernel_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        if self.pad_mode == "same":
            x = pad_same(x, self.kernel_size, self.stride, self.dilation, self.pad_values)
        dw, pw = self.depthwise_weight, self.pointwise_weight
        if self.quantize_kernel:
            if self.depthwise_quantizer is not None:
                dw = self.depthwise_quantizer(dw)
            if self.pointwise_quantizer is not None:
                pw = self.pointwise_quantizer(pw)
        y = F.conv2d(x, dw, None, self.stride, 0, self.dilation, self.in_channels)
        return F.conv2d(y, pw, self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.pad_mode!r}, bias={self.bias is not None}")


class QuantLinear(nn.Linear):
    """A dense layer with optional input and kernel quantizers."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        input_quantizer: str | Quantizer | None = None,
        kernel_quantizer: str | Quantizer | None = None,
        kernel_clip: float | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.input_quantizer = get_quantizer(input_quantizer)
        self.kernel_quantizer = get_quantizer(kernel_quantizer)
        self.kernel_clip = kernel_clip

    quantize_kernel: bool = True
    input_precision = QuantConv2d.input_precision
    kernel_precision = QuantConv2d.kernel_precision
    runtime_binary = QuantConv2d.runtime_binary
    profile_weights = QuantConv2d.profile_weights
    quantized_weight = QuantConv2d.quantized_weight

    @torch.no_grad()
    def clip_weights(self) -> None:
        if self.kernel_clip is not None:
            self.weight.clamp_(-self.kernel_clip, self.kernel_clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quantizer is not None:
            x = self.input_quantizer(x)
        return F.linear(x, self.quantized_weight(), self.bias)


class BinaryLinear(QuantLinear):
    """A binary dense layer: SteSign on input and kernel, latent weights clipped at 1."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        input_quantizer: str | Quantizer | None = "ste_sign",
        kernel_quantizer: str | Quantizer | None = "ste_sign",
        kernel_clip: float | None = 1.0,
    ) -> None:
        super().__init__(in_features, out_features, bias, input_quantizer, kernel_quantizer,
                         kernel_clip)


def set_kernel_quantization(model: nn.Module, enabled: bool) -> int:
    """Turn the kernel quantizers of every quantized layer on or off; returns the count.

    Off is stage one of the two-stage binary recipe: binary activations, real weights.
    """
    n = 0
    for m in model.modules():
        if hasattr(type(m), "quantize_kernel"):
            m.quantize_kernel = enabled
            n += 1
    return n


def apply_weight_clip(model: nn.Module) -> None:
    """Clip every quantized layer's latent weights (call after each optimiser step)."""
    for m in model.modules():
        clip = getattr(m, "clip_weights", None)
        if callable(clip):
            clip()
