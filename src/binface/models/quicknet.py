"""QuickNet (Bannink et al., Larq Compute Engine) for 112x112 faces.

Float stem and float transitions; every residual block is one binary 3x3 conv
(SteSign clip 1.25 on input and kernel, "same" padding with +1, which LCE runs
natively). Sections run at 28, 14, 7 and 3 pixels. Layout: docs/architectures.md.
"""

from __future__ import annotations

import torch
from torch import nn

from binface.models.common import FaceModel, LinearEmbeddingHead
from binface.models.registry import register_model
from binface.nn import BatchNorm2d, BinaryConv2d, BlurPool2d, QuantConv2d, SteSign

# TF BatchNormalization(momentum=0.9) keeps 0.9 of the old statistics: torch momentum 0.1
BN_KW = {"momentum": 0.1, "eps": 1e-5}


class QuickNetBlock(nn.Module):
    """Binary 3x3 conv, ReLU, BN, plus the block input; ``binary=False``: a float conv
    (zero padding), the same architecture at 32 bits."""

    def __init__(self, channels: int, clip: float = 1.25, binary: bool = True) -> None:
        super().__init__()
        self.conv = BinaryConv2d(
            channels, channels, 3, padding="same", pad_values=1.0,
            input_quantizer=SteSign(clip), kernel_quantizer=SteSign(clip), kernel_clip=clip,
        ) if binary else nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.act = nn.ReLU()
        self.bn = BatchNorm2d(channels, **BN_KW)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.act(self.conv(x)))


class QuickNetTransition(nn.Sequential):
    """Float downsampling: ReLU, 2x2/1 max-pool (valid), fixed blur-pool /2, 1x1 conv, BN."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.ReLU(),
            nn.MaxPool2d(2, stride=1),
            BlurPool2d(in_channels, stride=2),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            BatchNorm2d(out_channels, **BN_KW),
        )


class QuickNetBackbone(nn.Sequential):
    """Stem, then ``blocks[i]`` residual blocks at ``filters[i]`` channels per section."""

    def __init__(self, filters=(64, 128, 256, 512), blocks=(4, 4, 4, 4), clip: float = 1.25,
                 binary: bool = True):
        f0 = filters[0]
        layers: list[nn.Module] = [
            QuantConv2d(3, f0 // 4, 3, stride=2, padding="same"),  # float conv, TF padding
            BatchNorm2d(f0 // 4, **BN_KW),
            nn.ReLU(),
            QuantConv2d(f0 // 4, f0 // 4, 3, stride=2, padding="same", groups=f0 // 4),
            BatchNorm2d(f0 // 4, affine=False, **BN_KW),
            nn.Conv2d(f0 // 4, f0, 1, bias=False),
            BatchNorm2d(f0, **BN_KW),
        ]
        prev = f0
        for width, n in zip(filters, blocks, strict=True):
            if width != prev:
                layers.append(QuickNetTransition(prev, width))
            layers.extend(QuickNetBlock(width, clip, binary) for _ in range(n))
            prev = width
        super().__init__(*layers)
        self.out_channels = prev


def _quicknet(name: str, filters, backbone_only: bool, embedding_size: int,
              binary: bool = True) -> FaceModel:
    backbone = QuickNetBackbone(filters, binary=binary)
    head = None if backbone_only else LinearEmbeddingHead(backbone.out_channels, embedding_size,
                                                          pre_relu=True)
    return FaceModel(backbone, head, name, input_size=None, embedding_size=embedding_size)


@register_model("quicknet", "binary", "QuickNet (LCE): float stem, 16 binary 3x3 residual "
                "blocks at 64-512 channels, blur-pool transitions")
def quicknet(backbone_only: bool = False, embedding_size: int = 512) -> FaceModel:
    return _quicknet("quicknet", (64, 128, 256, 512), backbone_only, embedding_size)


@register_model("quicknet_small", "binary", "QuickNetSmall (LCE): QuickNet with 32/64/256/512 "
                "channels")
def quicknet_small(backbone_only: bool = False, embedding_size: int = 512) -> FaceModel:
    return _quicknet("quicknet_small", (32, 64, 256, 512), backbone_only, embedding_size)


@register_model("quicknet_small_float", "cnn", "QuickNetSmall with float 3x3 convs: the same "
                "architecture at 32 bits (and int8 through QAT), for the privacy study")
def quicknet_small_float(backbone_only: bool = False, embedding_size: int = 512) -> FaceModel:
    return _quicknet("quicknet_small_float", (32, 64, 256, 512), backbone_only,
                     embedding_size, binary=False)
