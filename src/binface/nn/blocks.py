"""Float building blocks of the lightweight face CNNs and hybrids (seed Table 1).

Every block takes its convolutions and dense layers as constructor *factories*
(``conv=nn.Conv2d``, ``linear=nn.Linear``). A factory is called with the keyword
arguments of ``nn.Conv2d`` / ``nn.Linear`` (integer padding included), which the
quantized layers take too: passing ``conv=BinaryConv2d`` (or a
``functools.partial`` of it with other quantizers) and ``linear=BinaryLinear``
makes a block binary without rewriting it (tests/test_binary_blocks.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from binface.nn.channel_scale import channel_scale
from binface.nn.norm import BatchNorm1d, BatchNorm2d
from binface.nn.prelu import PReLU

ConvFactory = Callable[..., nn.Module]
LinearFactory = Callable[..., nn.Module]
ActFactory = Callable[[int], nn.Module]


# ---------------------------------------------------------------- activations
def prelu(channels: int) -> nn.Module:
    """PReLU with one slope per channel (the face CNNs' activation)."""
    return PReLU(channels)


def relu(channels: int) -> nn.Module:
    return nn.ReLU(inplace=False)


def gelu(channels: int) -> nn.Module:
    return nn.GELU()


def silu(channels: int) -> nn.Module:
    return nn.SiLU()


def relu6(channels: int) -> nn.Module:
    return nn.ReLU6()


# ---------------------------------------------------------------- normalisation
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (ConvNeXt / EdgeNeXt style)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ---------------------------------------------------------------- conv helpers
class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional activation; ``padding`` defaults to k // 2."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 1,
        stride: int = 1,
        padding: int | tuple[int, int] | None = None,
        groups: int = 1,
        act: ActFactory | None = prelu,
        conv: ConvFactory = nn.Conv2d,
        bn: Callable[[int], nn.Module] = BatchNorm2d,
    ) -> None:
        if padding is None:
            k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
            padding = (k[0] // 2, k[1] // 2)
        layers: list[nn.Module] = [
            conv(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size,
                 stride=stride, padding=padding, groups=groups, bias=False),
            bn(out_channels),
        ]
        if act is not None:
            layers.append(act(out_channels))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck: 1x1 expand, kxk depthwise, linear 1x1 project (+ identity).

    MobileFaceNet's "DResidual"/"Residual" with PReLU; ``se`` inserts a squeeze-excite
    after the depthwise conv (MobileNetV3 style). The residual is used when the
    shape is kept and ``residual`` is True.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        act: ActFactory = prelu,
        residual: bool = True,
        se: Callable[[int], nn.Module] | None = None,
        expand: bool = True,
        conv: ConvFactory = nn.Conv2d,
    ) -> None:
        super().__init__()
        self.use_residual = residual and stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand:
            layers.append(ConvBNAct(in_channels, hidden_channels, 1, act=act, conv=conv))
        else:
            hidden_channels = in_channels
        layers.append(ConvBNAct(hidden_channels, hidden_channels, kernel_size, stride,
                                groups=hidden_channels, act=act, conv=conv))
        if se is not None:
            layers.append(se(hidden_channels))
        layers.append(ConvBNAct(hidden_channels, out_channels, 1, act=None, conv=conv))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.use_residual else y


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: interleave the channels of ``groups`` groups."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def make_divisible(value: float, divisor: int = 4, min_value: int | None = None,
                   round_down_limit: float = 0.9) -> int:
    """Round a width to a multiple of ``divisor`` without losing more than 10 %."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < round_down_limit * value:
        new += divisor
    return new


# ---------------------------------------------------------------- embedding heads
class GDCHead(nn.Module):
    """Global depthwise convolution embedding head (MobileFaceNet's "linear GDC").

    A kxk depthwise conv without padding pools the final kxk map with a learned,
    position-dependent weight (faces are aligned, so the centre matters more than
    a global average would allow), then BN, optional dropout, a linear layer to
    the embedding and BN. ``groups`` < channels gives VarGFaceNet-style grouped
    GDC; ``attention`` (a module mapping the map to a re-weighted map) gives an
    attentive GDC; ``pre_bn_act`` adds an activation after the GDC's BN.
    """

    def __init__(
        self,
        in_channels: int,
        embedding_size: int = 512,
        kernel_size: int | tuple[int, int] = 7,
        groups: int | None = None,
        dropout: float = 0.0,
        fc_bias: bool = False,
        bn_out_affine: bool = True,
        attention: nn.Module | None = None,
        conv: ConvFactory = nn.Conv2d,
        linear: LinearFactory = nn.Linear,
    ) -> None:
        super().__init__()
        groups = in_channels if groups is None else groups
        self.attention = attention if attention is not None else nn.Identity()
        self.gdc = conv(in_channels=in_channels, out_channels=in_channels,
                        kernel_size=kernel_size, stride=1, padding=0, groups=groups, bias=False)
        self.bn_gdc = BatchNorm2d(in_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = linear(in_features=in_channels, out_features=embedding_size, bias=fc_bias)
        self.bn_out = BatchNorm1d(embedding_size, affine=bn_out_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_gdc(self.gdc(self.attention(x)))
        x = self.dropout(x).flatten(1)
        return self.bn_out(self.fc(x))


class SpatialAttention(nn.Module):
    """A sigmoid spatial mask from a 1x1 conv: re-weights each position of a map."""

    def __init__(self, channels: int, conv: ConvFactory = nn.Conv2d) -> None:
        super().__init__()
        self.score = conv(in_channels=channels, out_channels=1, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.score(x))


# ---------------------------------------------------------------- channel attention
class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation whose two FCs are 1x1 convs on the pooled 1x1 map.

    GhostFaceNets and VarGFaceNet build SE this way ("convolutional" FCs with a
    bias); applied to a 1x1 map a 1x1 conv is exactly a dense layer, and a
    literally depthwise FC could not squeeze the channels. ``gate`` is the
    output non-linearity (sigmoid, or hard-sigmoid for GhostNet).
    """

    def __init__(
        self,
        channels: int,
        reduced_channels: int,
        act: ActFactory = prelu,
        gate: Callable[[], nn.Module] = nn.Sigmoid,
        conv: ConvFactory = nn.Conv2d,
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = conv(in_channels=channels, out_channels=reduced_channels, kernel_size=1,
                           bias=True)
        self.act = act(reduced_channels)
        self.expand = conv(in_channels=reduced_channels, out_channels=channels, kernel_size=1,
                           bias=True)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
        return channel_scale(x, s)


class DFCAttention(nn.Module):
    """GhostNetV2's decoupled fully-connected (DFC) attention gate.

    Longer-range attention at low cost: on a 2x down-sampled map, a 1x1 conv and
    two depthwise convs along the width (1 x k) then the height (k x 1) give each
    position a 2k x 2k reach of the input (all of a 7x7 map) for 2k
    MACs per pixel instead of k^2; a sigmoid of the result, resized back (bilinear,
    as in GhostFaceNets' Keras code), gates the ghost module's output.
    Returns the gate, of shape (N, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5,
                 conv: ConvFactory = nn.Conv2d) -> None:
        super().__init__()
        k = kernel_size
        self.pool = nn.AvgPool2d(2, 2)
        self.proj = ConvBNAct(in_channels, out_channels, 1, act=None, conv=conv)
        self.horizontal = ConvBNAct(out_channels, out_channels, (1, k), padding=(0, k // 2),
                                    groups=out_channels, act=None, conv=conv)
        self.vertical = ConvBNAct(out_channels, out_channels, (k, 1), padding=(k // 2, 0),
                                  groups=out_channels, act=None, conv=conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.vertical(self.horizontal(self.proj(self.pool(x))))
        a = torch.sigmoid(a)
        return F.interpolate(a, size=x.shape[-2:], mode="bilinear", align_corners=False)


class GhostModule(nn.Module):
    """Ghost module: half the channels from a 1x1 conv, the rest from a cheap depthwise 3x3.

    With ``dfc=True`` (GhostNetV2) the output is gated by ``DFCAttention`` computed
    from the module's input.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        act: ActFactory | None = prelu,
        dfc: bool = False,
        dfc_kernel: int = 5,
        conv: ConvFactory = nn.Conv2d,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        primary = math.ceil(out_channels / 2)
        self.primary = ConvBNAct(in_channels, primary, 1, act=act, conv=conv)
        self.cheap = ConvBNAct(primary, primary, 3, groups=primary, act=act, conv=conv)
        self.dfc = DFCAttention(in_channels, out_channels, dfc_kernel, conv=conv) if dfc else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.primary(x)
        y = torch.cat([p, self.cheap(p)], dim=1)[:, : self.out_channels]
        if self.dfc is not None:
            y = y * self.dfc(x)
        return y


# ---------------------------------------------------------------- dense layers
class LoRaLin(nn.Module):
    """EdgeFace's low-rank linear layer: ``Linear(in, rank)`` then ``Linear(rank, out)``.

    Replaces an ``in x out`` weight with ``rank x (in + out)``; EdgeFace sets
    ``rank = max(2, int(min(in, out) * rank_ratio))``. The first factor has no bias.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int | None = None,
        rank_ratio: float | None = None,
        bias: bool = True,
        linear: LinearFactory = nn.Linear,
    ) -> None:
        super().__init__()
        if rank is None:
            if rank_ratio is None:
                raise ValueError("LoRaLin needs rank or rank_ratio")
            rank = max(2, int(min(in_features, out_features) * rank_ratio))
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.linear1 = linear(in_features=in_features, out_features=rank, bias=False)
        self.linear2 = linear(in_features=rank, out_features=out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.linear1(x))


def low_rank_linear(rank_ratio: float, linear: LinearFactory = nn.Linear) -> LinearFactory:
    """A linear factory that builds ``LoRaLin`` layers of the given rank ratio."""

    def factory(in_features: int, out_features: int, bias: bool = True) -> nn.Module:
        return LoRaLin(in_features, out_features, rank_ratio=rank_ratio, bias=bias, linear=linear)

    return factory


class Mlp(nn.Module):
    """Transformer feed-forward: linear, activation, linear (on the last dimension)."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        out_dim: int | None = None,
        act: ActFactory = gelu,
        drop: float = 0.0,
        linear: LinearFactory = nn.Linear,
    ) -> None:
        super().__init__()
        out_dim = out_dim or dim
        self.fc1 = linear(in_features=dim, out_features=hidden_dim, bias=True)
        self.act = act(hidden_dim)
        self.fc2 = linear(in_features=hidden_dim, out_features=out_dim, bias=True)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


# ---------------------------------------------------------------- initialisation
def randomize_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms and PReLU slopes, in eval mode.

    For conformance checks of an export (tests, ``benchmarks/arm_conformance.py``): at
    default initialisation BN is the identity and a fold into an epilogue, or the signs
    it feeds, would be tested on nothing.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(c, generator=g) - 0.5)
            if isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
    return model.eval()


def init_cnn_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """Kaiming-normal (fan-out) convs and dense layers, zero biases, unit BN (insightface).

    With ``linear_std``, dense layers get a truncated normal of that std instead
    (the hybrids' transformer parts, as in MobileViT / SwiftFormer).
    """
    for m in model.modules():
        if isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.trunc_normal_(m.weight, std=linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif _is_affine_norm(m):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _is_affine_norm(m: nn.Module) -> bool:
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        return m.weight is not None and m.bias is not None
    return isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine


def init_transformer_weights(model: nn.Module) -> None:
    """Truncated-normal (std 0.02) dense layers and convs, zero biases, unit norms (ViT)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif _is_affine_norm(m):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
