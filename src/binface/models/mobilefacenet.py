"""MobileFaceNet (Chen et al. 2018) and its insightface variants.

A MobileNetV2-style network for 112x112 faces: a stride-2 3x3 stem, a depthwise
3x3, four groups of inverted-residual bottlenecks with PReLU (56 -> 28 -> 14 -> 7),
a 1x1 conv to 512 and the linear GDC head (7x7 depthwise + BN, linear + BN).

Three members, all counted whole (backbone + GDC head), as their sources count:

- ``mobilefacenet``: the paper's network, 128-D (0.99 M params, 221 M MAdds).
- ``mobilefacenet_1_5``: the seed's "MobileFaceNet-1.5" row (2.0 M params,
  933.3 MFLOPs). Those figures are insightface's "y2" network, "a deeper
  mobilefacenet" (blocks 2-8-16-4, 256-D), the ICCV-2019 LFR baseline listed at
  933 M FLOPs by the LFR counter, which counts 2 x MACs (minus one add per output
  of a bias-free conv); MixFaceNets/PocketNet quote it as 2.0 M / 933.3 M.
- ``mbf``: insightface arcface_torch's ``mbf``: channels x2 (but expansion widths
  unchanged, so the 56x56 "depthwise" conv has 64 groups of 2), 512-D
  (2.06 M params, 0.44 G MACs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from binface.models.common import FaceModel
from binface.models.registry import register_model
from binface.nn.blocks import ConvBNAct, GDCHead, InvertedResidual, init_cnn_weights, prelu


@dataclass(frozen=True)
class MobileFaceNetConfig:
    """Widths of one MobileFaceNet: ``blocks`` residual units per stage, ``channels``
    the stage outputs (56, 28, 14, 7 px) and ``expansions`` the hidden widths of
    (stage-1 residuals, 28-px down-sample, 28-px residuals, 14-px down-sample,
    14-px residuals, 7-px down-sample, 7-px residuals)."""

    blocks: tuple[int, int, int, int]
    channels: tuple[int, int, int, int]
    expansions: tuple[int, int, int, int, int, int, int]
    first_dw_groups: int
    last_channels: int = 512


PAPER = MobileFaceNetConfig((1, 4, 6, 2), (64, 64, 128, 128), (64, 128, 128, 256, 256, 512, 256),
                            first_dw_groups=64)
Y2 = MobileFaceNetConfig((2, 8, 16, 4), (64, 64, 128, 128), (64, 128, 128, 256, 256, 512, 256),
                         first_dw_groups=64)
MBF = MobileFaceNetConfig((1, 4, 6, 2), (128, 128, 256, 256), (128, 128, 128, 256, 256, 512, 256),
                          first_dw_groups=64)


class MobileFaceNetBackbone(nn.Module):
    """Stem to the 512 x 7 x 7 map (the GDC head is separate)."""

    def __init__(self, cfg: MobileFaceNetConfig) -> None:
        super().__init__()
        c0, c1, c2, c3 = cfg.channels
        e = cfg.expansions
        self.stem = ConvBNAct(3, c0, 3, stride=2)
        if cfg.blocks[0] == 1:
            self.stage1: nn.Module = ConvBNAct(c0, c0, 3, groups=cfg.first_dw_groups)
        else:
            self.stage1 = nn.Sequential(*[InvertedResidual(c0, c0, e[0])
                                          for _ in range(cfg.blocks[0])])
        self.stage2 = nn.Sequential(
            InvertedResidual(c0, c1, e[1], stride=2),
            *[InvertedResidual(c1, c1, e[2]) for _ in range(cfg.blocks[1])],
        )
        self.stage3 = nn.Sequential(
            InvertedResidual(c1, c2, e[3], stride=2),
            *[InvertedResidual(c2, c2, e[4]) for _ in range(cfg.blocks[2])],
        )
        self.stage4 = nn.Sequential(
            InvertedResidual(c2, c3, e[5], stride=2),
            *[InvertedResidual(c3, c3, e[6]) for _ in range(cfg.blocks[3])],
        )
        self.conv_sep = ConvBNAct(c3, cfg.last_channels, 1, act=prelu)
        self.out_channels = cfg.last_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))
        return self.conv_sep(self.stage4(self.stage3(x)))


def _build(name: str, cfg: MobileFaceNetConfig, backbone_only: bool, embedding_size: int,
           dropout: float = 0.0) -> FaceModel:
    backbone = MobileFaceNetBackbone(cfg)
    head = None if backbone_only else GDCHead(backbone.out_channels, embedding_size, 7,
                                              dropout=dropout)
    model = FaceModel(backbone, head, name, embedding_size=embedding_size)
    init_cnn_weights(model)
    return model


@register_model("mobilefacenet", "cnn", "MobileFaceNet (Chen et al. 2018): inverted residuals "
                "+ PReLU + linear GDC, 128-D; published 0.99 M params, 221 M MACs")
def mobilefacenet(backbone_only: bool = False, embedding_size: int = 128) -> FaceModel:
    """The paper's MobileFaceNet (its Table 1), counted whole like the paper."""
    return _build("mobilefacenet", PAPER, backbone_only, embedding_size)


@register_model("mobilefacenet_1_5", "cnn", "Seed's MobileFaceNet-1.5: insightface 'y2' deeper "
                "MobileFaceNet (blocks 2-8-16-4), 256-D; published 2.0 M, 933 MFLOPs = 2 x MACs")
def mobilefacenet_1_5(backbone_only: bool = False, embedding_size: int = 256) -> FaceModel:
    """insightface's y2: the LFR-2019 baseline whose 933 M "FLOPs" are 2 x MACs."""
    return _build("mobilefacenet_1_5", Y2, backbone_only, embedding_size)


@register_model("mbf", "cnn", "insightface arcface_torch 'mbf': MobileFaceNet with 2x channels, "
                "512-D; published 2.06 M params, 0.44 G MACs")
def mbf(backbone_only: bool = False, embedding_size: int = 512) -> FaceModel:
    """insightface's mbf (scale 2, blocks 1-4-6-2)."""
    return _build("mbf", MBF, backbone_only, embedding_size)
