"""EdgeFace (George et al. 2023), the EFaR-2023 compact-track winner.

EdgeNeXt (Maaz et al. 2022) for 112x112 faces with every dense layer replaced by
LoRaLin, a rank-``gamma`` factorisation (``rank = max(2, int(min(in, out) * gamma))``):
in the MLPs, the attention's qkv and output projections and the 512-D embedding
layer. Layout (EdgeNeXt-XS / -S):

- 4x4 stride-4 patchify stem + channels LayerNorm -> 28x28;
- four stages (28, 14, 7, 3 px; stages 2-4 open with LayerNorm + 2x2 stride-2
  conv) of ConvNeXt-style conv encoders (depthwise kxk, k = 3, 5, 7, 9, then an
  inverted-bottleneck MLP with GELU and layer scale); the last block of stages
  2-4 is a split depth-wise transposed attention (SDTA) block: multi-scale
  cascaded depthwise 3x3 convs over channel groups, Fourier positional encoding
  (stage 2 only), transposed (channel) self-attention, MLP;
- head: global average pool, LayerNorm, dropout, LoRaLin to 512.

Counting: EdgeFace's 1.77 M / 154 MFLOPs (XS, gamma 0.6) and 3.65 M / 306 MFLOPs
(S, gamma 0.5) are for the whole network; the FLOPs are 2 x MACs with the
attention products included (about 1 % of the total). Ours: 1,770,492 params and
2 x (76.08 M + 0.81 M) = 153.8 M (XS); 3,652,520 and 305.8 M (S).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from binface.models.common import FaceModel
from binface.models.registry import register_model
from binface.nn.attention import TransposedSelfAttention
from binface.nn.blocks import (
    DropPath,
    LayerNorm2d,
    LinearFactory,
    LoRaLin,
    Mlp,
    gelu,
    init_transformer_weights,
    low_rank_linear,
)


class FourierPositionalEncoding(nn.Module):
    """Sine/cosine encoding of each pixel's normalised (y, x), projected by a 1x1 conv.

    Computed from the map size at every call (nothing stored, nothing to count but
    the projection), as in EdgeNeXt / XCiT.
    """

    def __init__(self, dim: int, hidden_dim: int = 32, temperature: float = 10000.0) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.proj = nn.Conv2d(2 * hidden_dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        eps, scale = 1e-6, 2 * math.pi
        dtype, device = x.dtype, x.device
        y_embed = torch.arange(1, h + 1, dtype=dtype, device=device) / (h + eps) * scale
        x_embed = torch.arange(1, w + 1, dtype=dtype, device=device) / (w + eps) * scale
        dim_t = torch.arange(self.hidden_dim, dtype=dtype, device=device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor")
                                     / self.hidden_dim)
        pos_y = y_embed[:, None] / dim_t  # (H, D)
        pos_x = x_embed[:, None] / dim_t  # (W, D)
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        pos = torch.cat([pos_y[:, None, :].expand(h, w, -1), pos_x[None, :, :].expand(h, w, -1)],
                        dim=2)
        pos = pos.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1)
        return self.proj(pos)


class ConvEncoder(nn.Module):
    """Depthwise kxk conv, then LayerNorm + MLP (x4, GELU) + layer scale, residual."""

    def __init__(self, dim: int, kernel_size: int, linear: LinearFactory, expand: int = 4,
                 ls_init: float = 1e-6, drop_path: float = 0.0) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, expand * dim, act=gelu, linear=linear)
        self.gamma = nn.Parameter(ls_init * torch.ones(dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.mlp(self.norm(y))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class SDTABlock(nn.Module):
    """Split depth-wise transposed attention block of EdgeNeXt.

    The channels are cut into ``scales`` groups; all but the last go through a
    cascade of depthwise 3x3 convs (each adds the previous output), growing the
    receptive field; then positional encoding, transposed self-attention and an
    MLP, both pre-norm with layer scale.
    """

    def __init__(self, dim: int, scales: int, num_heads: int, linear: LinearFactory,
                 use_pos: bool, expand: int = 4, ls_init: float = 1e-6,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        width = max(math.ceil(dim / scales), dim // scales)
        self.num_chunks = max(1, scales - 1) + 1
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, 3, padding=1, groups=width) for _ in range(max(1, scales - 1))
        )
        self.pos = FourierPositionalEncoding(dim) if use_pos else None
        self.norm_attn = nn.LayerNorm(dim, eps=1e-6)
        self.gamma_attn = nn.Parameter(ls_init * torch.ones(dim))
        self.attn = TransposedSelfAttention(dim, num_heads, qkv_bias=True, linear=linear)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, expand * dim, act=gelu, linear=linear)
        self.gamma = nn.Parameter(ls_init * torch.ones(dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        chunks = x.chunk(self.num_chunks, dim=1)
        outs = []
        sp = chunks[0]
        for i, conv in enumerate(self.convs):
            if i > 0:
                sp = sp + chunks[i]
            sp = conv(sp)
            outs.append(sp)
        outs.append(chunks[-1])
        x = torch.cat(outs, dim=1)
        if self.pos is not None:
            x = x + self.pos(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        t = t + self.drop_path(self.gamma_attn * self.attn(self.norm_attn(t)))
        t = self.gamma * self.mlp(self.norm(t))
        y = t.transpose(1, 2).reshape(b, c, h, w)
        return shortcut + self.drop_path(y)


class EdgeNeXtBackbone(nn.Module):
    """EdgeNeXt stem and four stages, to the ``dims[-1]`` x 3 x 3 map."""

    def __init__(self, dims: tuple[int, ...], depths: tuple[int, ...] = (3, 3, 9, 3),
                 num_heads: int = 4, kernel_sizes: tuple[int, ...] = (3, 5, 7, 9),
                 scales: tuple[int, ...] = (2, 2, 3, 4),
                 global_blocks: tuple[int, ...] = (0, 1, 1, 1),
                 use_pos: tuple[bool, ...] = (False, True, False, False),
                 linear: LinearFactory = nn.Linear, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4),
                                  LayerNorm2d(dims[0], eps=1e-6))
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, k = [], 0
        for i, depth in enumerate(depths):
            blocks: list[nn.Module] = []
            if i > 0:
                blocks.append(nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6),
                                            nn.Conv2d(dims[i - 1], dims[i], 2, stride=2)))
            for j in range(depth):
                if j < depth - global_blocks[i]:
                    blocks.append(ConvEncoder(dims[i], kernel_sizes[i], linear,
                                              drop_path=rates[k]))
                else:
                    blocks.append(SDTABlock(dims[i], scales[i], num_heads, linear, use_pos[i],
                                            drop_path=rates[k]))
                k += 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.out_channels = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


class EdgeFaceHead(nn.Module):
    """Global average pool, LayerNorm, dropout, LoRaLin to the embedding."""

    def __init__(self, in_channels: int, embedding_size: int, rank_ratio: float,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_channels, eps=1e-6)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = LoRaLin(in_channels, embedding_size, rank_ratio=rank_ratio, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.norm(x.mean(dim=(2, 3)))))


def _build(name: str, dims: tuple[int, ...], num_heads: int, rank_ratio: float,
           backbone_only: bool, embedding_size: int, drop_path_rate: float) -> FaceModel:
    backbone = EdgeNeXtBackbone(dims, num_heads=num_heads, linear=low_rank_linear(rank_ratio),
                                drop_path_rate=drop_path_rate)
    head = None if backbone_only else EdgeFaceHead(backbone.out_channels, embedding_size,
                                                   rank_ratio)
    model = FaceModel(backbone, head, name, embedding_size=embedding_size)
    init_transformer_weights(model)
    return model


@register_model("edgeface_xs", "hybrid", "EdgeFace-XS (gamma 0.6): EdgeNeXt-XS + transposed "
                "self-attention + LoRaLin, 512-D; published 1.77 M, 154 MFLOPs = 2 x MACs")
def edgeface_xs(backbone_only: bool = False, embedding_size: int = 512,
                rank_ratio: float = 0.6, drop_path_rate: float = 0.0) -> FaceModel:
    """EdgeFace-XS: dims 32-64-100-192, 4 heads, LoRaLin rank ratio 0.6."""
    return _build("edgeface_xs", (32, 64, 100, 192), 4, rank_ratio, backbone_only,
                  embedding_size, drop_path_rate)


@register_model("edgeface_s", "hybrid", "EdgeFace-S (gamma 0.5): EdgeNeXt-S + transposed "
                "self-attention + LoRaLin, 512-D; published 3.65 M, 306 MFLOPs = 2 x MACs")
def edgeface_s(backbone_only: bool = False, embedding_size: int = 512,
               rank_ratio: float = 0.5, drop_path_rate: float = 0.0) -> FaceModel:
    """EdgeFace-S: dims 48-96-160-304, 8 heads, LoRaLin rank ratio 0.5."""
    return _build("edgeface_s", (48, 96, 160, 304), 8, rank_ratio, backbone_only,
                  embedding_size, drop_path_rate)
