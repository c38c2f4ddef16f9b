"""VarGFaceNet (Yan et al., ICCVW 2019), the LFR-2019 light-track winner.

Variable group convolution: every 3x3 "depthwise" conv has a fixed 8 channels per
group (so the group count varies with the width) and doubles the channels
(``factor`` 2) before a 1x1 pointwise conv, which balances compute between the
3x3 and the 1x1 layers. Layout (from the authors' MXNet symbol, multiplier 1.25):

- head: 3x3 conv s1 to 40 channels, then a stride-2 VarG block (factor 1) -> 56x56;
- three stages (40 -> 80 -> 160 -> 320 channels, 3 / 7 / 4 units), each opened
  by a branch-merge down-sampling block (two parallel separable branches summed)
  followed by VarG blocks with squeeze-excite (ratio 4) -> 28, 14, 7 px;
- embedding: 1x1 conv to 1024, grouped 7x7 GDC (8 channels per group), 1x1 to
  512 with PReLU, a dense layer (with bias) to 512 and BN.

Counting: the LFR-2019 rules capped the track at 1 GFLOPs by insightface's
counter, which counts 2 x MACs of the whole network (head included); the seed's
1.02 G is that figure, and ours is 1.025 G. The symbol gives 5.20 M parameters
(its conv and dense weights alone are 5.13 M, so no BN/PReLU bookkeeping explains
it), 6 % above the seed's 4.9 M and 4 % above the 5.0 M quoted elsewhere: we keep
the published symbol rather than trim it to a rounded figure.
"""

from __future__ import annotations

import torch
from torch import nn

from binface.models.common import FaceModel
from binface.models.registry import register_model
from binface.nn.blocks import ConvBNAct, SqueezeExcite, init_cnn_weights, prelu
from binface.nn.norm import BatchNorm1d
from binface.nn.prelu import PReLU

GROUP_BASE = 8


class VarGSeparable(nn.Module):
    """Variable group 3x3 conv (8 channels per group, x ``factor``) + BN + PReLU,
    then a 1x1 conv + BN (+ PReLU unless ``pw_act`` is False)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, factor: int = 2,
                 pw_act: bool = True, group_base: int = GROUP_BASE) -> None:
        super().__init__()
        if in_channels % group_base:
            raise ValueError(f"{in_channels} channels are not a multiple of {group_base}")
        mid = in_channels * factor
        self.dw = ConvBNAct(in_channels, mid, 3, stride, groups=in_channels // group_base)
        self.pw = ConvBNAct(mid, out_channels, 1, act=prelu if pw_act else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class VarGBlock(nn.Module):
    """Two variable-group separable convs, optional SE, residual, PReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, factor: int = 2,
                 se: bool = True, se_ratio: int = 4) -> None:
        super().__init__()
        self.shortcut = (nn.Identity() if stride == 1 and in_channels == out_channels else
                         VarGSeparable(in_channels, out_channels, stride, factor, pw_act=False))
        self.sep1 = VarGSeparable(in_channels, out_channels, stride, factor)
        self.sep2 = VarGSeparable(out_channels, out_channels, 1, factor, pw_act=False)
        self.se = (SqueezeExcite(out_channels, out_channels // se_ratio) if se
                   else nn.Identity())
        self.act = PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.se(self.sep2(self.sep1(x))) + self.shortcut(x))


class VarGDownBlock(nn.Module):
    """Down-sampling block: two parallel strided separable branches, summed, then a
    separable conv, plus a strided separable shortcut."""

    def __init__(self, in_channels: int, out_channels: int, factor: int = 2) -> None:
        super().__init__()
        self.shortcut = VarGSeparable(in_channels, out_channels, 2, factor, pw_act=False)
        self.branch1 = VarGSeparable(in_channels, out_channels, 2, factor, pw_act=False)
        self.branch2 = VarGSeparable(in_channels, out_channels, 2, factor, pw_act=False)
        self.act1 = PReLU(out_channels)
        self.sep2 = VarGSeparable(out_channels, out_channels, 1, factor, pw_act=False)
        self.act2 = PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.branch1(x) + self.branch2(x))
        return self.act2(self.sep2(y) + self.shortcut(x))


class VarGFaceNetBackbone(nn.Module):
    """Head block and three stages, to the 320 x 7 x 7 map."""

    def __init__(self, multiplier: float = 1.25, units: tuple[int, int, int] = (3, 7, 4),
                 filters: tuple[int, int, int, int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        widths = [int(f * multiplier) for f in filters]
        self.head = nn.Sequential(
            ConvBNAct(3, widths[0], 3, 1),
            VarGBlock(widths[0], widths[0], stride=2, factor=1, se=True),
        )
        stages = []
        for i, n in enumerate(units):
            blocks: list[nn.Module] = [VarGDownBlock(widths[i], widths[i + 1])]
            blocks += [VarGBlock(widths[i + 1], widths[i + 1]) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.head(x))


class VarGEmbedding(nn.Module):
    """1x1 to 1024, grouped 7x7 GDC, 1x1 to 512 + PReLU, dense (with bias) + BN."""

    def __init__(self, in_channels: int, embedding_size: int = 512, last_channels: int = 1024,
                 group_base: int = GROUP_BASE) -> None:
        super().__init__()
        self.expand = ConvBNAct(in_channels, last_channels, 1)
        self.gdc = ConvBNAct(last_channels, last_channels, 7, padding=0,
                             groups=last_channels // group_base, act=None)
        self.reduce = ConvBNAct(last_channels, last_channels // 2, 1)
        self.fc = nn.Linear(last_channels // 2, embedding_size, bias=True)
        self.bn = BatchNorm1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(self.gdc(self.expand(x))).flatten(1)
        return self.bn(self.fc(x))


@register_model("vargfacenet", "cnn", "VarGFaceNet (LFR-2019): variable group convs (8 ch/group), "
                "SE, PReLU, grouped GDC, 512-D; published 4.9 M, 1.02 GFLOPs = 2 x MACs")
def vargfacenet(backbone_only: bool = False, embedding_size: int = 512) -> FaceModel:
    """VarGFaceNet as in the authors' symbol (multiplier 1.25, factor 2, SE ratio 4)."""
    backbone = VarGFaceNetBackbone()
    head = None if backbone_only else VarGEmbedding(backbone.out_channels, embedding_size)
    model = FaceModel(backbone, head, "vargfacenet", embedding_size=embedding_size)
    init_cnn_weights(model)
    return model
