"""Plain ViT teachers for 112x112 faces, as insightface's arcface_torch ``vit_t`` / ``vit_s``.

A 9x9 stride-9 patch embedding (12 x 12 = 144 tokens; the last 4 pixel rows and
columns are not seen, as in insightface), learned position embeddings, no class
token, 12 pre-norm blocks of multi-head self-attention (8 heads, no qkv bias) and
a ReLU6 MLP (x4), a final LayerNorm, then the "feature" head on *all* tokens:
dense (144 x dim -> dim, no bias) + BN + dense (dim -> 512, no bias) + BN.

While training, insightface drops a random 10 % of the tokens after the position
embedding (``mask_ratio``) and puts a learned mask token back in their place
after the last block; evaluation sees every token.

Counting: insightface names them ViT-T-1.5G and ViT-S-5.7G: ptflops MACs of the
whole network plus its ``extra_gflops``, the attention products 2 x N^2 x dim per
block. Ours: 1.377 G + 0.127 G and 5.492 G + 0.255 G (the feature head's
36,864 x 256 and 73,728 x 512 dense layers are most of the parameters).
"""

from __future__ import annotations

import torch
from torch import nn

from binface.models.common import FaceModel
from binface.models.registry import register_model
from binface.nn.attention import MultiHeadSelfAttention
from binface.nn.blocks import DropPath, LinearFactory, Mlp, init_transformer_weights, relu6
from binface.nn.norm import BatchNorm1d


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop_path: float = 0.0, linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, num_heads, qkv_bias=qkv_bias, linear=linear)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=relu6, linear=linear)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViTBackbone(nn.Module):
    """Patch embedding, position embedding, blocks, final LayerNorm -> (B, N, dim) tokens."""

    def __init__(self, img_size: int = 112, patch_size: int = 9, dim: int = 256, depth: int = 12,
                 num_heads: int = 8, mlp_ratio: float = 4.0, drop_path_rate: float = 0.1,
                 mask_ratio: float = 0.1, linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        self.grid = img_size // patch_size
        self.num_tokens = self.grid * self.grid
        self.dim = dim
        self.mask_ratio = mask_ratio
        self.patch_embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*[
            TransformerBlock(dim, num_heads, mlp_ratio, drop_path=r, linear=linear) for r in rates
        ])
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        if self.training and self.mask_ratio > 0:
            b, n, d = x.shape
            keep = int(n * (1 - self.mask_ratio))
            order = torch.rand(b, n, device=x.device).argsort(dim=1)
            restore = order.argsort(dim=1)
            x = torch.gather(x, 1, order[:, :keep, None].expand(-1, -1, d))
            x = self.norm(self.blocks(x))
            x = torch.cat([x, self.mask_token.expand(b, n - keep, -1)], dim=1)
            return torch.gather(x, 1, restore[:, :, None].expand(-1, -1, d))
        return self.norm(self.blocks(x))


class ViTFeatureHead(nn.Module):
    """insightface's feature head: flatten all tokens, dense + BN, dense + BN."""

    def __init__(self, num_tokens: int, dim: int, embedding_size: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Linear(num_tokens * dim, dim, bias=False)
        self.bn1 = BatchNorm1d(dim, eps=2e-5)
        self.fc2 = nn.Linear(dim, embedding_size, bias=False)
        self.bn2 = BatchNorm1d(embedding_size, eps=2e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.fc2(self.bn1(self.fc1(x.flatten(1)))))


def _build(name: str, dim: int, backbone_only: bool, embedding_size: int,
           drop_path_rate: float, mask_ratio: float) -> FaceModel:
    backbone = ViTBackbone(dim=dim, drop_path_rate=drop_path_rate, mask_ratio=mask_ratio)
    head = (None if backbone_only else
            ViTFeatureHead(backbone.num_tokens, dim, embedding_size))
    model = FaceModel(backbone, head, name, embedding_size=embedding_size)
    init_transformer_weights(model)  # leaves pos_embed / mask_token as initialised
    return model


@register_model("vit_t_face", "hybrid", "ViT-T teacher (insightface vit_t): 9x9 patches, 144 "
                "tokens, dim 256, 12 x 8-head MHSA, token-flatten feature head, 512-D")
def vit_t_face(backbone_only: bool = False, embedding_size: int = 512,
               drop_path_rate: float = 0.1, mask_ratio: float = 0.1) -> FaceModel:
    return _build("vit_t_face", 256, backbone_only, embedding_size, drop_path_rate, mask_ratio)


@register_model("vit_s_face", "hybrid", "ViT-S teacher (insightface vit_s): 9x9 patches, 144 "
                "tokens, dim 512, 12 x 8-head MHSA, token-flatten feature head, 512-D")
def vit_s_face(backbone_only: bool = False, embedding_size: int = 512,
               drop_path_rate: float = 0.1, mask_ratio: float = 0.1) -> FaceModel:
    return _build("vit_s_face", 512, backbone_only, embedding_size, drop_path_rate, mask_ratio)
