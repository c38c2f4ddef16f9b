"""MobileViTv2 (Mehta & Rastegari, TMLR 2022) adapted to 112x112 faces.

MobileViTv2's separable self-attention scores each token with one scalar, so its
cost is linear in the number of tokens. The ImageNet layout (width multiplier
``alpha``) is kept: 3x3 stem s2 to 32a; MobileNetV2 blocks (expansion 2, SiLU) to
64a; two to 128a (s2); then three stages each opened by a stride-2 MobileNetV2
block and closed by a MobileViTv2 block (local depthwise 3x3 + 1x1, unfold into
2x2 patches, separable-attention transformer with GroupNorm(1) and a x2 SiLU MLP,
fold, 1x1) with attention widths 128a / 192a / 256a and 2 / 4 / 3 layers.

Face changes (no published face version; choices ours): the last down-sampling is
dropped so the maps run at 56, 28, 14, 7 and 7 px (a 3.5 px map means nothing for
an aligned face); the 14 px stage unfolds 2x2 patches (49 tokens of 4 pixels),
the two 7 px stages 1x1 patches (49 tokens); the classifier becomes a 1x1 conv to
512 + PReLU and the linear GDC head (512-D), as in MobileFaceNet.
Default ``alpha`` 0.75 (about EdgeFace-S's size).

Counting: no face version is published, so there is no figure to match; the whole
network is counted, the attention products in ``macs_matmul``.
"""

from __future__ import annotations

import torch
from torch import nn

from binface.models.common import FaceModel
from binface.models.registry import register_model
from binface.nn.attention import SeparableSelfAttention
from binface.nn.blocks import (
    ConvBNAct,
    GDCHead,
    InvertedResidual,
    LinearFactory,
    Mlp,
    init_cnn_weights,
    make_divisible,
    prelu,
    silu,
)


class SeparableTransformerLayer(nn.Module):
    """Pre-norm layer on (B, P, N, C) patches: separable attention, then a SiLU MLP.

    GroupNorm(1) over a patch layout normalises each sample over all its tokens
    and channels, as MobileViTv2's LayerNorm2d-over-patches does.
    """

    def __init__(self, dim: int, ffn_dim: int, linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.attn = SeparableSelfAttention(dim, linear=linear)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = Mlp(dim, ffn_dim, act=silu, linear=linear)

    @staticmethod
    def _norm(norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        return norm(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self._norm(self.norm1, x))
        return x + self.mlp(self._norm(self.norm2, x))


class MobileViTv2Block(nn.Module):
    """Local representation, patch unfold, separable-attention transformer, fold, 1x1."""

    def __init__(self, channels: int, attn_dim: int, depth: int, patch: int = 2,
                 ffn_multiplier: float = 2.0, linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        self.patch = patch
        self.local = nn.Sequential(
            ConvBNAct(channels, channels, 3, groups=channels, act=silu),
            nn.Conv2d(channels, attn_dim, 1, bias=False),
        )
        ffn = make_divisible(ffn_multiplier * attn_dim, 16)
        self.layers = nn.Sequential(*[SeparableTransformerLayer(attn_dim, ffn, linear)
                                      for _ in range(depth)])
        self.norm = nn.GroupNorm(1, attn_dim)
        self.proj = ConvBNAct(attn_dim, channels, 1, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.local(x)
        b, d, h, w = y.shape
        p = self.patch
        if h % p or w % p:
            raise ValueError(f"a {h}x{w} map does not split into {p}x{p} patches")
        # (B, D, H, W) -> (B, P, N, D): P pixels per patch, N patches
        t = y.reshape(b, d, h // p, p, w // p, p).permute(0, 3, 5, 2, 4, 1)
        t = t.reshape(b, p * p, (h // p) * (w // p), d)
        t = self.layers(t)
        t = t.reshape(b, p, p, h // p, w // p, d).permute(0, 5, 3, 1, 4, 2).reshape(b, d, h, w)
        return self.proj(self.norm(t))


class MobileViTv2Backbone(nn.Module):
    """MobileViTv2 at output stride 16 (7x7 maps for 112 px), to 512 channels."""

    def __init__(self, alpha: float = 0.75, last_channels: int = 512,
                 linear: LinearFactory = nn.Linear) -> None:
        super().__init__()

        def w(c: float) -> int:
            return make_divisible(c * alpha, 8, min_value=16)

        act = silu
        self.stem = ConvBNAct(3, w(32), 3, 2, act=act)
        self.layer1 = InvertedResidual(w(32), w(64), 2 * w(32), act=act)
        self.layer2 = nn.Sequential(
            InvertedResidual(w(64), w(128), 2 * w(64), stride=2, act=act),
            InvertedResidual(w(128), w(128), 2 * w(128), act=act),
        )
        stages = []
        # (out channels, attention dim, layers, stride of the opening block, patch)
        for c_in, c_out, d, n, s, p in ((128, 256, 128, 2, 2, 2), (256, 384, 192, 4, 2, 1),
                                        (384, 512, 256, 3, 1, 1)):
            stages.append(nn.Sequential(
                InvertedResidual(w(c_in), w(c_out), 2 * w(c_in), stride=s, act=act),
                MobileViTv2Block(w(c_out), w(d), n, patch=p, linear=linear),
            ))
        self.stages = nn.Sequential(*stages)
        self.conv_out = ConvBNAct(w(512), last_channels, 1, act=prelu)
        self.out_channels = last_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.conv_out(self.stages(x))


@register_model("mobilevitv2_face", "hybrid", "MobileViTv2-0.75 for faces: separable "
                "self-attention (linear in tokens), output stride 16, GDC head, 512-D")
def mobilevitv2_face(backbone_only: bool = False, embedding_size: int = 512,
                     alpha: float = 0.75) -> FaceModel:
    backbone = MobileViTv2Backbone(alpha)
    head = None if backbone_only else GDCHead(backbone.out_channels, embedding_size, 7)
    model = FaceModel(backbone, head, "mobilevitv2_face", embedding_size=embedding_size)
    init_cnn_weights(model, linear_std=0.02)
    return model
