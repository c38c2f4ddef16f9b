"""GhostFaceNetV2 (Alansari et al., IEEE Access 2023): GhostNetV2 for faces.

GhostNetV2's 16 ghost bottlenecks (ghost modules: half the channels from a 1x1
conv, half from a cheap depthwise 3x3; DFC attention gating every module except
the first two bottlenecks' expansion modules) at width 1.3, with the changes of
GhostFaceNets (their Keras code, ``GhostNetV2(stem_strides=1, width_mul=1.3,
activation="prelu")``):

- stride-1 3x3 stem, so a 112x112 face runs at 112, 56, 28, 14 and 7 px;
- PReLU everywhere (also inside SE, whose gate stays a hard sigmoid);
- a 1x1 conv to 1248 channels, then the "modified GDC": 7x7 depthwise + BN, a
  1x1 conv to 512 (a dense layer on the 1x1 map, no bias), flatten, BN.

Counting: the authors' notebook (keras_cv_attention_models ``get_flops``) prints
272.1 M for this network, 6,880,288 total / 6,795,720 trainable parameters; the
seed's 272.25 M / 6.88 M. Our count equals the Keras *trainable* count exactly
(6,795,720); Keras' total adds the BN moving statistics (4 numbers per BN channel
against the larq convention's 2), hence -1.2 %. The FLOPs are MACs (GhostNetV2-1.3
at 224 px, the same map sizes, is 269 M MACs); ours are 267.1 M, -1.9 %, the rest
presumably element-wise work (DFC gating, residual and bias adds) that TF's
profiler counts and the larq convention does not.
"""

from __future__ import annotations

import torch
from torch import nn

from binface.models.common import FaceModel
from binface.models.registry import register_model
from binface.nn.blocks import (
    ConvBNAct,
    GDCHead,
    GhostModule,
    SqueezeExcite,
    init_cnn_weights,
    make_divisible,
    prelu,
)

# GhostNetV2 (ImageNet) bottleneck table: kernel, expansion, out, SE ratio, stride
BOTTLENECKS = (
    (3, 16, 16, 0.0, 1),
    (3, 48, 24, 0.0, 2),
    (3, 72, 24, 0.0, 1),
    (5, 72, 40, 0.25, 2),
    (5, 120, 40, 0.25, 1),
    (3, 240, 80, 0.0, 2),
    (3, 200, 80, 0.0, 1),
    (3, 184, 80, 0.0, 1),
    (3, 184, 80, 0.0, 1),
    (3, 480, 112, 0.25, 1),
    (3, 672, 112, 0.25, 1),
    (5, 672, 160, 0.25, 2),
    (5, 960, 160, 0.0, 1),
    (5, 960, 160, 0.25, 1),
    (5, 960, 160, 0.0, 1),
    (5, 960, 160, 0.25, 1),
)


class GhostBottleneck(nn.Module):
    """Ghost module (expand, PReLU) -> [dw kxk s2 + BN] -> [SE] -> ghost module (linear),
    plus an identity or (dw kxk + BN, 1x1 + BN) shortcut."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, kernel_size: int,
                 stride: int, se_ratio: float, dfc: bool) -> None:
        super().__init__()
        self.ghost1 = GhostModule(in_channels, hidden, act=prelu, dfc=dfc)
        self.down = (ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden, act=None)
                     if stride > 1 else nn.Identity())
        self.se = (SqueezeExcite(hidden, make_divisible(hidden * se_ratio, 4), act=prelu,
                                 gate=nn.Hardsigmoid) if se_ratio > 0 else nn.Identity())
        self.ghost2 = GhostModule(hidden, out_channels, act=None)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                ConvBNAct(in_channels, in_channels, kernel_size, stride, groups=in_channels,
                          act=None),
                ConvBNAct(in_channels, out_channels, 1, act=None),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ghost2(self.se(self.down(self.ghost1(x))))
        return y + self.shortcut(x)


class GhostNetV2Backbone(nn.Module):
    """Stem, 16 ghost bottlenecks and the 1x1 conv to ``960 x width`` channels."""

    def __init__(self, width: float = 1.3, stem_stride: int = 1, stem_channels: int = 16,
                 plain_stacks: int = 2) -> None:
        super().__init__()
        c = make_divisible(stem_channels * width, 4)
        self.stem = ConvBNAct(3, c, 3, stem_stride)
        blocks = []
        for i, (k, exp, out, se, s) in enumerate(BOTTLENECKS):
            hidden, out = make_divisible(exp * width, 4), make_divisible(out * width, 4)
            blocks.append(GhostBottleneck(c, hidden, out, k, s, se, dfc=i >= plain_stacks))
            c = out
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = make_divisible(BOTTLENECKS[-1][1] * width, 4)
        self.pre = ConvBNAct(c, self.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre(self.blocks(self.stem(x)))


@register_model("ghostfacenetv2", "cnn", "GhostFaceNetV2-1 (width 1.3, stride-1 stem): GhostNetV2 "
                "+ DFC attention + PReLU, modified GDC, 512-D; published 6.88 M, 272 M MACs")
def ghostfacenetv2(backbone_only: bool = False, embedding_size: int = 512,
                   width: float = 1.3, dropout: float = 0.0) -> FaceModel:
    """GhostFaceNetV2 as in the authors' FLOPs notebook (dropout 0, 512-D)."""
    backbone = GhostNetV2Backbone(width=width)
    head = None if backbone_only else GDCHead(backbone.out_channels, embedding_size, 7,
                                              dropout=dropout)
    model = FaceModel(backbone, head, "ghostfacenetv2", embedding_size=embedding_size)
    init_cnn_weights(model)
    return model
