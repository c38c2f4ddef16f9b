"""ShuffleFaceNet (Martinez-Diaz et al., ICCVW 2019): ShuffleNetV2 units for faces.

Changes to ShuffleNetV2: PReLU for ReLU, no max-pool after the stride-2 3x3 stem
(so 112 -> 56 -> 28 -> 14 -> 7, with 3 units of channel split / concat /
shuffle stages of 4, 8 and 4 units), a 1x1 conv to 1024 channels ("7x7x1024
before the GDC") and MobileFaceNet's linear GDC head to a 128-D embedding.
Stage widths follow ShuffleNetV2's width multipliers; the 2.0x model keeps 1024
final channels (ShuffleNetV2-2.0 uses 2048), which is what its published 4.5 M
parameters imply.

Counting: the published FLOPs (ShuffleFaceNet paper; 577.5 M for 1.5x, 1.05 G for
2.0x) are 2 x MACs of the whole network, head included.
"""

from __future__ import annotations

import torch
from torch import nn

from binface.models.common import FaceModel
from binface.models.registry import register_model
from binface.nn.blocks import ConvBNAct, GDCHead, channel_shuffle, init_cnn_weights

STAGE_CHANNELS = {
    0.5: (48, 96, 192),
    1.0: (116, 232, 464),
    1.5: (176, 352, 704),
    2.0: (244, 488, 976),
}
STAGE_REPEATS = (4, 8, 4)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit with PReLU.

    Stride 1: split the channels in two, transform one half (1x1, dw 3x3, 1x1),
    concat, shuffle. Stride 2: both halves see the whole input (left: dw 3x3 s2,
    1x1; right: 1x1, dw 3x3 s2, 1x1), so the width doubles and the map halves.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = out_channels // 2
        if stride == 1 and in_channels != out_channels:
            raise ValueError("a stride-1 shuffle unit keeps the width")
        if stride > 1:
            self.left: nn.Module = nn.Sequential(
                ConvBNAct(in_channels, in_channels, 3, stride, groups=in_channels, act=None),
                ConvBNAct(in_channels, branch, 1),
            )
        else:
            self.left = nn.Identity()
        right_in = in_channels if stride > 1 else branch
        self.right = nn.Sequential(
            ConvBNAct(right_in, branch, 1),
            ConvBNAct(branch, branch, 3, stride, groups=branch, act=None),
            ConvBNAct(branch, branch, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.right(b)], dim=1)
        else:
            out = torch.cat([self.left(x), self.right(x)], dim=1)
        return channel_shuffle(out, 2)


class ShuffleFaceNetBackbone(nn.Module):
    """Stem to the 1024 x 7 x 7 map."""

    def __init__(self, width: float, stem_channels: int = 24, last_channels: int = 1024) -> None:
        super().__init__()
        if width not in STAGE_CHANNELS:
            raise ValueError(f"width must be one of {sorted(STAGE_CHANNELS)}, got {width}")
        self.stem = ConvBNAct(3, stem_channels, 3, stride=2)
        stages: list[nn.Module] = []
        c_in = stem_channels
        for c_out, repeats in zip(STAGE_CHANNELS[width], STAGE_REPEATS, strict=True):
            units = [ShuffleUnit(c_in, c_out, 2)] + [ShuffleUnit(c_out, c_out, 1)
                                                     for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*units))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.conv5 = ConvBNAct(c_in, last_channels, 1)
        self.out_channels = last_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv5(self.stages(self.stem(x)))


def _build(name: str, width: float, backbone_only: bool, embedding_size: int) -> FaceModel:
    backbone = ShuffleFaceNetBackbone(width)
    head = None if backbone_only else GDCHead(backbone.out_channels, embedding_size, 7)
    model = FaceModel(backbone, head, name, embedding_size=embedding_size)
    init_cnn_weights(model)
    return model


@register_model("shufflefacenet_0_5", "cnn", "ShuffleFaceNet 0.5x: ShuffleNetV2 units + PReLU, "
                "no max-pool, 1024-ch GDC head, 128-D")
def shufflefacenet_0_5(backbone_only: bool = False, embedding_size: int = 128) -> FaceModel:
    return _build("shufflefacenet_0_5", 0.5, backbone_only, embedding_size)


@register_model("shufflefacenet_1_0", "cnn", "ShuffleFaceNet 1.0x: ShuffleNetV2 units + PReLU, "
                "no max-pool, 1024-ch GDC head, 128-D")
def shufflefacenet_1_0(backbone_only: bool = False, embedding_size: int = 128) -> FaceModel:
    return _build("shufflefacenet_1_0", 1.0, backbone_only, embedding_size)


@register_model("shufflefacenet_1_5", "cnn", "ShuffleFaceNet 1.5x (seed Table 1), 128-D; published "
                "2.6 M params, 577.5 MFLOPs = 2 x MACs")
def shufflefacenet_1_5(backbone_only: bool = False, embedding_size: int = 128) -> FaceModel:
    return _build("shufflefacenet_1_5", 1.5, backbone_only, embedding_size)


@register_model("shufflefacenet_2_0", "cnn", "ShuffleFaceNet 2.0x (seed Table 1), 128-D; published "
                "4.5 M params, 1.05 GFLOPs = 2 x MACs")
def shufflefacenet_2_0(backbone_only: bool = False, embedding_size: int = 128) -> FaceModel:
    return _build("shufflefacenet_2_0", 2.0, backbone_only, embedding_size)
