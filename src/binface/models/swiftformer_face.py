"""SwiftFormer (Shaker et al., ICCV 2023) adapted to 112x112 faces.

SwiftFormer's efficient additive attention replaces the key-value product by a
learned pooling of the queries into one global query (linear in the tokens,
cheap enough for every stage). SwiftFormer-XS layout: a two-conv stride-4 stem
(3x3 s2 + BN + ReLU, twice) and four stages (widths 48, 56, 112, 220; 3, 3, 6,
4 blocks) of conv encoders (depthwise 3x3 + BN, 1x1 x4, GELU, 1x1, layer scale)
whose last block is a SwiftFormer encoder (local depthwise/pointwise
representation, additive attention, BN + 1x1 MLP), with 3x3 stride-2 conv + BN
embeddings between stages.

Face changes (no published face version; choices ours): the last embedding has
stride 1, so the stages run at 28, 14, 7 and 7 px (an aligned face wants a 7x7
final map, not 4x4), and the classifier becomes a 1x1 conv to 512 + BN + PReLU
and the linear GDC head (512-D), as in MobileFaceNet.

Counting: no face version is published, so there is no figure to match; the whole
network is counted, the attention products in ``macs_matmul``.
"""

from __future__ import annotations

import torch
from torch import nn

from binface.models.common import FaceModel
from binface.models.registry import register_model
from binface.nn.attention import EfficientAdditiveAttention
from binface.nn.blocks import (
    ConvBNAct,
    DropPath,
    GDCHead,
    LinearFactory,
    init_cnn_weights,
    prelu,
    relu,
)


class ConvEncoder(nn.Module):
    """Depthwise 3x3 + BN, 1x1 expand, GELU, 1x1 project, layer scale, residual."""

    def __init__(self, dim: int, hidden: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.BatchNorm2d(dim)
        self.pw1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.pw2 = nn.Conv2d(hidden, dim, 1)
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw2(self.act(self.pw1(self.norm(self.dw(x)))))
        return x + self.drop_path(self.layer_scale * y)


class SwiftFormerEncoder(nn.Module):
    """Local representation (a ``ConvEncoder`` with a dim-wide hidden layer), then
    x + ls1 * additive-attention(x) and x + ls2 * MLP(x), the MLP being BN, 1x1
    x4, GELU, 1x1."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        self.local = ConvEncoder(dim, dim)
        self.attn = EfficientAdditiveAttention(dim, dim, num_heads=1, linear=linear)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.BatchNorm2d(dim), nn.Conv2d(dim, hidden, 1), nn.GELU(),
                                 nn.Conv2d(hidden, dim, 1))
        self.ls1 = nn.Parameter(1e-5 * torch.ones(dim, 1, 1))
        self.ls2 = nn.Parameter(1e-5 * torch.ones(dim, 1, 1))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.local(x)
        b, c, h, w = x.shape
        a = self.attn(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
        x = x + self.drop_path(self.ls1 * a)
        return x + self.drop_path(self.ls2 * self.mlp(x))


class SwiftFormerBackbone(nn.Module):
    """Stem, four stages and the 1x1 conv to ``last_channels`` (7 x 7 maps at 112 px)."""

    def __init__(self, depths: tuple[int, ...] = (3, 3, 6, 4),
                 dims: tuple[int, ...] = (48, 56, 112, 220),
                 strides: tuple[int, ...] = (2, 2, 1), mlp_ratio: float = 4.0,
                 last_channels: int = 512, drop_path_rate: float = 0.0,
                 linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            ConvBNAct(3, dims[0] // 2, 3, 2, act=relu),
            ConvBNAct(dims[0] // 2, dims[0], 3, 2, act=relu),
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        blocks: list[nn.Module] = []
        k = 0
        for i, depth in enumerate(depths):
            for j in range(depth):
                if j == depth - 1:
                    blocks.append(SwiftFormerEncoder(dims[i], mlp_ratio, rates[k], linear))
                else:
                    blocks.append(ConvEncoder(dims[i], int(mlp_ratio * dims[i]), rates[k]))
                k += 1
            if i < len(depths) - 1:
                blocks.append(ConvBNAct(dims[i], dims[i + 1], 3, strides[i], act=None))
        self.blocks = nn.Sequential(*blocks)
        self.conv_out = ConvBNAct(dims[-1], last_channels, 1, act=prelu)
        self.out_channels = last_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.blocks(self.stem(x)))


@register_model("swiftformer_face", "hybrid", "SwiftFormer-XS for faces: efficient additive "
                "attention (linear in tokens), 7x7 final map, GDC head, 512-D")
def swiftformer_face(backbone_only: bool = False, embedding_size: int = 512,
                     drop_path_rate: float = 0.0) -> FaceModel:
    backbone = SwiftFormerBackbone(drop_path_rate=drop_path_rate)
    head = None if backbone_only else GDCHead(backbone.out_channels, embedding_size, 7)
    model = FaceModel(backbone, head, "swiftformer_face", embedding_size=embedding_size)
    init_cnn_weights(model, linear_std=0.02)
    return model
