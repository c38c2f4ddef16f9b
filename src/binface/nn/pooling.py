"""Pooling layers with TensorFlow padding rules, and QuickNet's fixed blur-pool."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from binface.nn.layers import WeightSpec, _pair, pad_same


class MaxPool2dSame(nn.Module):
    """Max pooling with TensorFlow "same" (pad with -inf, extra at bottom/right) or "valid"."""

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: str = "valid",
    ) -> None:
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            x = pad_same(x, self.kernel_size, self.stride, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}"


class BlurPool2d(nn.Module):
    """A fixed (untrained) depthwise 3x3 blur, stride 2, TensorFlow "same" padding.

    The kernel is outer([1, 2, 1], [1, 2, 1]) / 16 per channel. It is a buffer, not
    a parameter, yet it is a depthwise convolution with weights: the larq count
    includes its MACs and its 9 x C weights as 32-bit.
    """

    def __init__(self, channels: int, stride: int = 2) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(k, k) / 16.0
        self.register_buffer("weight", kernel.expand(channels, 1, 3, 3).clone())
        self.channels = channels
        self.stride = _pair(stride)

    def profile_weights(self) -> list[WeightSpec]:
        return [WeightSpec("weight", self.weight, 32, 32, False)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, (3, 3), self.stride)
        return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, stride={self.stride}"
