"""Self-attention designs compared by the seed (its Figure 1) and Mobile-Former bridges.

- ``MultiHeadSelfAttention``: ViT's softmax(QK^T)V, quadratic in the tokens N.
- ``TransposedSelfAttention``: EdgeNeXt/EdgeFace's cross-covariance attention, a
  d x d map per head over channels: linear in N.
- ``SeparableSelfAttention``: MobileViTv2, one context score per token: linear in N.
- ``EfficientAdditiveAttention``: SwiftFormer, a learned query pooling, no K-V
  product: linear in N.
- ``MapToTokenAttention`` / ``TokenToMapAttention``: Mobile-Former's light-weight
  cross attention between a feature map and a few global tokens.

Dense layers are constructor factories (``linear=nn.Linear``): ``linear=BinaryLinear``
binarises them. Products of two activations (QK^T, AV, ...) carry no weights,
so the larq convention does not count them; each module reports them through
``extra_macs(inputs, output)`` (per sample, the profiler runs at batch 1) and the
profiler sums them into ``macs_matmul``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from binface.nn.blocks import LinearFactory


def _tokens_channels(x: torch.Tensor) -> tuple[int, int]:
    return int(x.shape[-2]), int(x.shape[-1])


class MultiHeadSelfAttention(nn.Module):
    """Standard multi-head self-attention on (B, N, C) tokens."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        linear: LinearFactory = nn.Linear,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = linear(in_features=dim, out_features=3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop) if attn_drop > 0 else nn.Identity()
        self.proj = linear(in_features=dim, out_features=dim, bias=True)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, d)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))

    def extra_macs(self, inputs: tuple, output: torch.Tensor) -> int:
        """QK^T and AV: 2 x N^2 x C."""
        n, c = _tokens_channels(inputs[0])
        return 2 * n * n * c


class TransposedSelfAttention(nn.Module):
    """EdgeNeXt's transposed (cross-covariance) self-attention on (B, N, C) tokens.

    Queries and keys are L2-normalised along the tokens and multiplied over the
    tokens, giving a (C/h x C/h) attention map per head scaled by a learned
    temperature; the cost is linear in N (2 x N x C x C/h MACs).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        linear: LinearFactory = nn.Linear,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = linear(in_features=dim, out_features=3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop) if attn_drop > 0 else nn.Identity()
        self.proj = linear(in_features=dim, out_features=dim, bias=True)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 4, 1).unbind(0)  # (B, h, d, N)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1)) * self.temperature  # (B, h, d, d)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).permute(0, 3, 1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))

    def extra_macs(self, inputs: tuple, output: torch.Tensor) -> int:
        """QK^T over tokens and AV: 2 x N x C x (C / h)."""
        n, c = _tokens_channels(inputs[0])
        return 2 * n * c * (c // self.num_heads)


class SeparableSelfAttention(nn.Module):
    """MobileViTv2's separable self-attention on (B, C, P, N) patch-major maps.

    One linear layer gives a scalar query per token plus keys and values; the
    softmax of the queries over the N tokens weights the keys into a single
    context vector, which scales ReLU(values) by broadcast: linear in N. The
    dense layers act on the channel dimension (1x1 convs in MobileViTv2; here
    ``linear`` on a channels-last view, which is the same product).
    """

    def __init__(self, dim: int, attn_drop: float = 0.0, bias: bool = True,
                 linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        self.dim = dim
        self.qkv = linear(in_features=dim, out_features=1 + 2 * dim, bias=bias)
        self.attn_drop = nn.Dropout(attn_drop) if attn_drop > 0 else nn.Identity()
        self.out = linear(in_features=dim, out_features=dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, P, N, C) channels-last: P pixels per patch, N patches."""
        qkv = self.qkv(x)
        q, k, v = torch.split(qkv, [1, self.dim, self.dim], dim=-1)
        scores = self.attn_drop(q.softmax(dim=2))  # over the N patches
        context = (k * scores).sum(dim=2, keepdim=True)  # (B, P, 1, C)
        return self.out(F.relu(v) * context)

    def extra_macs(self, inputs: tuple, output: torch.Tensor) -> int:
        """The score-weighted sum of keys: P x N x C (the broadcast product is element-wise)."""
        p, n, c = (int(d) for d in inputs[0].shape[1:])
        return p * n * c


class EfficientAdditiveAttention(nn.Module):
    """SwiftFormer's efficient additive attention on (B, N, C) tokens.

    Normalised queries are scored by a learned vector ``w_g`` (a 1-output dense
    layer, so the larq count includes it), the normalised scores pool the queries
    into one global query, which multiplies each key element-wise; a projection
    of that plus the queries, then a final dense layer: no QK^T, no values.
    """

    def __init__(self, dim: int, token_dim: int | None = None, num_heads: int = 1,
                 linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        token_dim = token_dim or dim
        inner = token_dim * num_heads
        self.inner_dim = inner
        self.to_query = linear(in_features=dim, out_features=inner, bias=True)
        self.to_key = linear(in_features=dim, out_features=inner, bias=True)
        self.w_g = linear(in_features=inner, out_features=1, bias=False)
        self.scale = token_dim ** -0.5
        self.proj = linear(in_features=inner, out_features=inner, bias=True)
        self.final = linear(in_features=inner, out_features=dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.to_query(x), dim=-1)
        k = F.normalize(self.to_key(x), dim=-1)
        a = F.normalize(self.w_g(q) * self.scale, dim=1)  # (B, N, 1), over tokens
        g = (a * q).sum(dim=1, keepdim=True)  # (B, 1, D) global query
        return self.final(self.proj(g * k) + q)

    def extra_macs(self, inputs: tuple, output: torch.Tensor) -> int:
        """The score-weighted pooling of the queries: N x D."""
        return int(inputs[0].shape[-2]) * self.inner_dim


class MapToTokenAttention(nn.Module):
    """Mobile-Former's Mobile -> Former bridge: tokens attend to the feature map.

    Only the token side is projected (queries ``token_dim -> C`` and the output
    ``C -> token_dim``); keys and values are the map's pixels as they are, split
    into heads. Adds the result to the tokens. Cost: 2 x M x HW x C matmul MACs.
    """

    def __init__(self, channels: int, token_dim: int, num_heads: int = 2,
                 linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (channels // num_heads) ** -0.5
        self.q = linear(in_features=token_dim, out_features=channels, bias=True)
        self.out = linear(in_features=channels, out_features=token_dim, bias=True)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) map, z: (B, M, D) tokens -> updated tokens."""
        b, c, h, w = x.shape
        m, hd = z.shape[1], self.num_heads
        q = self.q(z).reshape(b, m, hd, c // hd).transpose(1, 2)  # (B, h, M, d)
        kv = x.reshape(b, hd, c // hd, h * w)  # (B, h, d, HW)
        attn = ((q @ kv) * self.scale).softmax(dim=-1)  # (B, h, M, HW)
        y = (attn @ kv.transpose(-2, -1)).transpose(1, 2).reshape(b, m, c)
        return z + self.out(y)

    def extra_macs(self, inputs: tuple, output: torch.Tensor) -> int:
        x, z = inputs
        _, c, h, w = x.shape
        return 2 * int(z.shape[1]) * int(h * w) * int(c)


class TokenToMapAttention(nn.Module):
    """Mobile-Former's Former -> Mobile bridge: the map's pixels attend to the tokens.

    Only the token side is projected (keys and values ``token_dim -> C``); the
    pixels are the queries as they are. Adds the result to the map. Cost:
    2 x HW x M x C matmul MACs.
    """

    def __init__(self, channels: int, token_dim: int, num_heads: int = 2,
                 linear: LinearFactory = nn.Linear) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (channels // num_heads) ** -0.5
        self.k = linear(in_features=token_dim, out_features=channels, bias=True)
        self.v = linear(in_features=token_dim, out_features=channels, bias=True)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) map, z: (B, M, D) tokens -> updated map."""
        b, c, h, w = x.shape
        m, hd = z.shape[1], self.num_heads
        q = x.reshape(b, hd, c // hd, h * w).transpose(-2, -1)  # (B, h, HW, d)
        k = self.k(z).reshape(b, m, hd, c // hd).permute(0, 2, 3, 1)  # (B, h, d, M)
        v = self.v(z).reshape(b, m, hd, c // hd).transpose(1, 2)  # (B, h, M, d)
        attn = ((q @ k) * self.scale).softmax(dim=-1)  # (B, h, HW, M)
        y = (attn @ v).transpose(-2, -1).reshape(b, c, h, w)
        return x + y

    def extra_macs(self, inputs: tuple, output: torch.Tensor) -> int:
        x, z = inputs
        _, c, h, w = x.shape
        return 2 * int(z.shape[1]) * int(h * w) * int(c)
