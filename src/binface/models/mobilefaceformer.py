"""MobileFaceFormer (Li et al., Multimedia Tools and Applications 2023), reconstructed.

No code is public. The paper's abstract fixes the design principles; the rest is
our reconstruction after Mobile-Former (Chen et al., CVPR 2022), on which the
described dual-branch design with a bi-directional bridge is modelled, sized to
the published complexity: 1.38 M parameters and 65 M MAdds at 112x112 (the seed
lists 130.08 M "FLOPs", which it says are 2 x the paper's MAdds).

What the paper states, and how it is built here:

- *Parallel CNN and transformer branches joined by a bi-directional fusion
  bridge*: Mobile-Former blocks. Each block updates a few global tokens from the
  feature map (``MapToTokenAttention``: tokens query the pixels, only the token
  side projected), runs one transformer layer on the tokens (pre-norm 4-head
  self-attention + GELU MLP x2), runs the CNN sub-block, and feeds the tokens back
  into the map (``TokenToMapAttention``: pixels query the tokens).
- *Depthwise separable convolutions and attention in the CNN branch*: the CNN
  sub-block is a MobileFaceNet-style inverted residual (1x1, depthwise 3x3, linear
  1x1, PReLU) with squeeze-excite (ratio 1/4) after the depthwise conv.
- *Convolutional token initialisation* (tokens that see long-range facial
  context instead of Mobile-Former's learned constant tokens): a depthwise 3x3
  stride-2 conv and a 1x1 conv on the stem output, average-pooled over a 3x2 grid
  of face regions -> 6 tokens (eyes, nose/cheeks, mouth; left and right).
- *Attentive GDC (AGDC)*: a sigmoid spatial mask (1x1 conv) re-weights the final
  7x7 map before the GDC's 7x7 depthwise conv, then linear + BN as in
  MobileFaceNet.

Assumptions (not in the abstract; chosen to hit 1.38 M / 65 M): stem 3x3 s2 to
16 channels + a depthwise-separable residual at 56 px; blocks at 28 / 14 / 7 px of
widths 32 / 64 / 128 (2 / 3 / 4 blocks, expansions 6 / 3 / 3, the first of each
stride 2); 6 tokens of dimension 64, 2-head bridges; a 1x1 conv to 512 before
the AGDC; a 128-D embedding (MobileFaceNet's, the paper's baseline); PReLU in the
CNN branch (Mobile-Former's dynamic ReLU, parameterised by the tokens, is left
out). The count is for the whole network with the bridge and token attention
products included (Mobile-Former counts them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from binface.models.common import FaceModel
from binface.models.registry import register_model
from binface.nn.attention import MapToTokenAttention, MultiHeadSelfAttention, TokenToMapAttention
from binface.nn.blocks import (
    ConvBNAct,
    GDCHead,
    InvertedResidual,
    LinearFactory,
    Mlp,
    SpatialAttention,
    SqueezeExcite,
    gelu,
    init_cnn_weights,
    prelu,
)


@dataclass(frozen=True)
class MobileFaceFormerConfig:
    stem_channels: int = 16
    widths: tuple[int, ...] = (32, 64, 128)
    blocks: tuple[int, ...] = (2, 3, 4)
    expansion: tuple[int, ...] = (6, 3, 3)
    se_ratio: float = 0.25
    tokens: tuple[int, int] = (3, 2)
    token_dim: int = 64
    token_heads: int = 4
    bridge_heads: int = 2
    token_mlp_ratio: float = 2.0
    last_channels: int = 512


class TokenInit(nn.Module):
    """Convolutional token initialisation: dw 3x3 s2 + 1x1 conv, pooled over face regions."""

    def __init__(self, in_channels: int, token_dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.dw = ConvBNAct(in_channels, in_channels, 3, 2, groups=in_channels, act=None)
        self.pw = ConvBNAct(in_channels, token_dim, 1, act=prelu)
        self.pool = nn.AdaptiveAvgPool2d(grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.pw(self.dw(x))).flatten(2).transpose(1, 2)  # (B, M, D)


class TokenTransformer(nn.Module):
    """The Former: one pre-norm transformer layer over the few global tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float,
                 linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, num_heads, qkv_bias=True, linear=linear)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=gelu, linear=linear)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z + self.attn(self.norm1(z))
        return z + self.mlp(self.norm2(z))


class MobileFormerBlock(nn.Module):
    """Mobile -> Former bridge, Former, Mobile (inverted residual + SE), Former -> Mobile."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, stride: int,
                 cfg: MobileFaceFormerConfig, linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        d = cfg.token_dim
        self.to_tokens = MapToTokenAttention(in_channels, d, cfg.bridge_heads, linear=linear)
        self.former = TokenTransformer(d, cfg.token_heads, cfg.token_mlp_ratio, linear=linear)

        def se(c: int) -> nn.Module:
            return SqueezeExcite(c, max(8, int(c * cfg.se_ratio)), act=prelu)

        self.mobile = InvertedResidual(in_channels, out_channels, hidden, stride, act=prelu,
                                       se=se if cfg.se_ratio > 0 else None)
        self.to_map = TokenToMapAttention(out_channels, d, cfg.bridge_heads, linear=linear)

    def forward(self, xz: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, z = xz
        z = self.former(self.to_tokens(x, z))
        x = self.to_map(self.mobile(x), z)
        return x, z


class MobileFaceFormerBackbone(nn.Module):
    """Stem, token initialisation, Mobile-Former blocks and the 1x1 conv to 512 (7x7)."""

    def __init__(self, cfg: MobileFaceFormerConfig = MobileFaceFormerConfig(),
                 linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        c = cfg.stem_channels
        self.stem = ConvBNAct(3, c, 3, 2)
        self.stem_block = InvertedResidual(c, c, c, expand=False)
        self.token_init = TokenInit(c, cfg.token_dim, cfg.tokens)
        blocks = []
        for width, n, t in zip(cfg.widths, cfg.blocks, cfg.expansion, strict=True):
            for i in range(n):
                stride = 2 if i == 0 else 1
                blocks.append(MobileFormerBlock(c, width, c * t, stride, cfg, linear))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.conv_out = ConvBNAct(c, cfg.last_channels, 1)
        self.out_channels = cfg.last_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_block(self.stem(x))
        z = self.token_init(x)
        x, _ = self.blocks((x, z))
        return self.conv_out(x)


@register_model("mobilefaceformer", "hybrid", "MobileFaceFormer (reconstructed, no public code): "
                "Mobile-Former dual branch + conv token init + AGDC, 128-D; published 1.38 M, "
                "65 M MAdds")
def mobilefaceformer(backbone_only: bool = False, embedding_size: int = 128) -> FaceModel:
    """Our reconstruction of MobileFaceFormer; see the module docstring for each assumption."""
    backbone = MobileFaceFormerBackbone()
    head = None
    if not backbone_only:
        c = backbone.out_channels
        head = GDCHead(c, embedding_size, 7, attention=SpatialAttention(c))
    model = FaceModel(backbone, head, "mobilefaceformer", embedding_size=embedding_size)
    init_cnn_weights(model, linear_std=0.02)
    return model
