"""BinaryDenseNet (Bethge et al., ICCVW 2019) for 112x112 faces.

Float stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool), dense blocks whose layers are
BN then a binary 3x3 conv (SteSign clip 1.3, zero padding) to 64 channels
concatenated to their input, and float transitions that shrink the channels by
``reduction`` (to a multiple of 32) after a 2x2 max-pool; blocks run at 28, 14, 7
and 3 pixels. Layout: docs/architectures.md.
"""

from __future__ import annotations

import torch
from torch import nn

from binface.models.common import FaceModel, LinearEmbeddingHead
from binface.models.registry import register_model
from binface.nn import BatchNorm2d, BinaryConv2d, MaxPool2dSame, QuantConv2d, SteSign

BN_KW = {"momentum": 0.1, "eps": 1e-5}  # TF momentum 0.9

SPECS = {
    28: ((6, 6, 6, 5), (2.7, 2.7, 2.2)),
    37: ((6, 8, 12, 6), (3.3, 3.3, 4.0)),
    45: ((6, 12, 14, 8), (2.7, 3.3, 4.0)),
}


class DenseLayer(nn.Module):
    """BN, binary 3x3 conv to ``growth`` channels, concatenated with the input."""

    def __init__(self, in_channels: int, growth: int = 64, clip: float = 1.3) -> None:
        super().__init__()
        self.bn = BatchNorm2d(in_channels, **BN_KW)
        self.conv = BinaryConv2d(
            in_channels, growth, 3, padding="same", pad_values=0.0,
            input_quantizer=SteSign(clip), kernel_quantizer=SteSign(clip), kernel_clip=clip,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.bn(x))], dim=1)


def transition_channels(channels: int, reduction: float) -> int:
    """round(C // reduction / 32) * 32, as in larq zoo."""
    return int(round(channels // reduction / 32)) * 32


class BinaryDenseNetBackbone(nn.Sequential):
    def __init__(self, layers, reductions, initial_filters: int = 64, growth: int = 64,
                 clip: float = 1.3) -> None:
        mods: list[nn.Module] = [
            QuantConv2d(3, initial_filters, 7, stride=2, padding="same"),  # float, TF padding
            BatchNorm2d(initial_filters, **BN_KW),
            nn.ReLU(),
            MaxPool2dSame(3, 2, padding="same"),
        ]
        c = initial_filters
        for i, n in enumerate(layers):
            for _ in range(n):
                mods.append(DenseLayer(c, growth, clip))
                c += growth
            if i < len(reductions):
                out = transition_channels(c, reductions[i])
                mods += [
                    BatchNorm2d(c, **BN_KW),
                    nn.MaxPool2d(2, 2),
                    nn.ReLU(),
                    nn.Conv2d(c, out, 1, bias=False),
                ]
                c = out
        mods += [BatchNorm2d(c, **BN_KW), nn.ReLU()]
        super().__init__(*mods)
        self.out_channels = c


def _binary_densenet(depth: int, backbone_only: bool, embedding_size: int) -> FaceModel:
    layers, reductions = SPECS[depth]
    backbone = BinaryDenseNetBackbone(layers, reductions)
    head = None if backbone_only else LinearEmbeddingHead(backbone.out_channels, embedding_size)
    return FaceModel(backbone, head, f"binary_densenet{depth}", input_size=None,
                     embedding_size=embedding_size)


@register_model("binary_densenet28", "binary", "BinaryDenseNet-28: dense blocks (6,6,6,5) of "
                "binary 3x3 convs, growth 64, float transitions")
def binary_densenet28(backbone_only: bool = False, embedding_size: int = 512) -> FaceModel:
    return _binary_densenet(28, backbone_only, embedding_size)


@register_model("binary_densenet37", "binary", "BinaryDenseNet-37: dense blocks (6,8,12,6) of "
                "binary 3x3 convs, growth 64, float transitions")
def binary_densenet37(backbone_only: bool = False, embedding_size: int = 512) -> FaceModel:
    return _binary_densenet(37, backbone_only, embedding_size)


@register_model("binary_densenet45", "binary", "BinaryDenseNet-45: dense blocks (6,12,14,8) of "
                "binary 3x3 convs, growth 64, float transitions")
def binary_densenet45(backbone_only: bool = False, embedding_size: int = 512) -> FaceModel:
    return _binary_densenet(45, backbone_only, embedding_size)
