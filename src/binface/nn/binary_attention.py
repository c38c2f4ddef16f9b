"""Binary self-attention blocks on NCHW maps: separable (MobileViTv2) and additive (SwiftFormer).

Every projection (query / key / value / output 1x1s and the feed-forward 1x1s) is a
:class:`~binface.nn.layers.BinaryConv2d` with a sign on both operands, so it runs as
xor + popcount in the packed engine. What binary-transformer work found necessary
(ReActNet, BiT, BinaryViT, BHViT) is built in:

- a real-valued shortcut around every binary projection (identity; channels
  repeated when a projection widens, averaged in groups when it narrows, an
  average pool when it strides);
- BatchNorm after every binary projection, no LayerNorm: it folds into the binary
  conv's epilogue;
- learnable sign thresholds (:class:`~binface.nn.quantizers.RSign`) on every
  projection input except the gated ones below;
- PReLU after the shortcut join. ReActNet's RPReLU (shift, PReLU, shift) is not
  used: its ``torch.where(y >= 0, ...)`` form does not export to the packed engine
  (``aten.ge.Scalar``), and its input shift is the following RSign's threshold
  and, before a join, a BatchNorm bias; BN -> join -> PReLU is one fused epilogue.

Tokens are the pixels of the map (MobileViTv2's patch unfolding with one pixel per
patch), so the attention sums run over ``N = H x W``.

The bit identity used: a projection reading ``v * c`` with ``c`` constant over the
tokens (the context vector, the global query) has input
``sign(v * c) = sign(v) xor sign(c)``, so the packed engine folds the broadcast product
into the packing of ``v`` (the gated ``pack``, as for a squeeze-excite gate) and the
projection still runs as xor + popcount. Such a projection takes a plain sign (no
learned threshold: ``sign(v * c + t)`` has no xor form).

What stays float, per block (N tokens, C channels, h heads): the score softmax
(separable) or the L2 normalisation of the scores (additive) over the tokens, about
N x h exponentials or squares; the context / global-query sum over the tokens,
N x C 32-bit MACs (``extra_macs``, labelled 32-bit: the scores are float); the
BatchNorm and PReLU epilogues and shortcut adds (per element, fused into the binary
convs in the packed engine). Against the binary projections (about 3 N C^2 + 2 r N C^2
1-bit MACs for a feed-forward ratio r) the float sums are below 1 / (3 C).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from binface.nn.layers import BinaryConv2d
from binface.nn.norm import BatchNorm2d
from binface.nn.prelu import PReLU
from binface.nn.quantizers import RSign, SteSign

__all__ = ["BinaryAdditiveAttention", "BinaryFormerBlock", "BinaryMlp", "BinaryProjection",
           "BinarySeparableAttention", "binary_shortcut"]


def _check_heads(dim: int, heads: int, what: str) -> None:
    if heads < 1 or dim % heads:
        raise ValueError(f"{what}: {dim} channels cannot be split into {heads} heads")


class _Shortcut(nn.Module):
    """The real-valued shortcut of a binary projection ``cin -> cout`` with ``stride``."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        if cout % cin and cin % cout:
            raise ValueError(f"no shortcut from {cin} to {cout} channels (neither divides)")
        self.cin, self.cout = cin, cout
        self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        if self.cout > self.cin:  # repeat the channels (ReActNet's duplicated 1x1)
            return torch.cat([x] * (self.cout // self.cin), dim=1)
        if self.cout < self.cin:  # average groups of channels
            parts = torch.split(x, self.cout, dim=1)
            y = parts[0]
            for p in parts[1:]:
                y = y + p
            return y * (1.0 / len(parts))
        return x


def binary_shortcut(cin: int, cout: int, stride: int = 1) -> nn.Module:
    """Identity, channel repeat / group mean, and an average pool for a stride."""
    return _Shortcut(cin, cout, stride)


class BinaryProjection(nn.Module):
    """``PReLU(BN(W sign(x + t)) + shortcut(x))``: one binary conv with its shortcut.

    ``kernel`` x ``kernel`` binary conv ("same" padding filled with +1, so the padded
    input is +-1 too), learned thresholds ``t`` (RSign), latent weights clipped at 1.
    ``act=False`` leaves out the PReLU, ``shortcut=False`` the shortcut.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1,
                 act: bool = True, shortcut: bool = True) -> None:
        super().__init__()
        self.conv = BinaryConv2d(cin, cout, kernel, stride=stride, padding="same",
                                 pad_values=1.0, input_quantizer=RSign(cin))
        self.bn = BatchNorm2d(cout)
        self.shortcut = binary_shortcut(cin, cout, stride) if shortcut else None
        self.act = PReLU(cout) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the shortcut first: the packed engine then adds it in the conv's epilogue
        s = self.shortcut(x) if self.shortcut is not None else None
        y = self.bn(self.conv(x))
        return self.act(y if s is None else y + s)


class BinaryMlp(nn.Module):
    """The feed-forward pair: binary 1x1 ``C -> rC`` and ``rC -> C``, each with its shortcut."""

    def __init__(self, dim: int, ratio: int = 2) -> None:
        super().__init__()
        if ratio < 1:
            raise ValueError(f"mlp ratio must be a positive integer, got {ratio}")
        self.fc1 = BinaryProjection(dim, dim * ratio)
        self.fc2 = BinaryProjection(dim * ratio, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


def _tokens(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, h, C / h, H W)."""
    b, c, h, w = x.shape
    return x.reshape(-1, heads, c // heads, h * w)


class BinarySeparableAttention(nn.Module):
    """MobileViTv2's separable self-attention, binary, on (B, C, H, W) maps.

    One binary 1x1 gives ``h`` scalar scores, keys and values per token
    (``C -> h + 2C``, BN); keys and values get the input as shortcut. The softmax of
    each head's scores over the N tokens weights its keys into one context vector
    ``c`` (B, C, 1, 1); the output projection reads ``sign(v * c) = sign(v) xor
    sign(c)`` (MobileViTv2's ReLU on the values is dropped: a sign after it would map
    every non-positive value to +1). Output ``PReLU(BN(W_o sign(v * c)) + x)``.

    Float: the softmax over tokens (N h exponentials) and the context sum (N C MACs).
    """

    def __init__(self, dim: int, heads: int = 1) -> None:
        super().__init__()
        _check_heads(dim, heads, "BinarySeparableAttention")
        self.dim, self.heads = dim, heads
        self.qkv = BinaryConv2d(dim, heads + 2 * dim, 1, input_quantizer=RSign(dim))
        self.bn_qkv = BatchNorm2d(heads + 2 * dim)
        self.out = BinaryConv2d(dim, dim, 1, input_quantizer=SteSign())
        self.bn_out = BatchNorm2d(dim)
        self.act = PReLU(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = torch.split(self.bn_qkv(self.qkv(x)), [self.heads, self.dim, self.dim], dim=1)
        k = k + x
        v = v + x
        scores = _tokens(q, self.heads).softmax(dim=-1)  # (B, h, 1, N) over the tokens
        context = (_tokens(k, self.heads) * scores).sum(dim=-1)  # (B, h, C / h)
        context = context.reshape(-1, self.dim, 1, 1)
        return self.act(self.bn_out(self.out(v * context)) + x)

    def extra_macs(self, inputs: tuple, output: torch.Tensor) -> dict[int, int]:
        """The score-weighted sum of keys: N x C, 32-bit (float scores)."""
        _, c, h, w = inputs[0].shape
        return {32: int(c) * int(h) * int(w)}


class BinaryAdditiveAttention(nn.Module):
    """SwiftFormer's efficient additive attention, binary, on (B, C, H, W) maps.

    One binary 1x1 gives queries and keys (``C -> 2C``, BN, the input as shortcut).
    A binary 1x1 ``w_g`` (``C -> h``) scores the queries' signs; the scores,
    L2-normalised over the N tokens, pool each head's queries into one global query
    ``g`` (B, C, 1, 1), no key-value product. ``proj`` reads ``sign(g * k) = sign(g)
    xor sign(k)``; SwiftFormer's ``final(proj(g * k) + q)`` becomes
    ``t = PReLU(BN(W_p sign(g * k)) + q)``, ``PReLU(BN(W_f sign(t)) + t)``.
    SwiftFormer's L2 normalisation of q and k per token is dropped: each sign reading
    them is invariant to it, and BN sets their scale.

    Float: the normalisation of the scores over tokens (N h squares) and the pooling
    of the queries (N C MACs).
    """

    def __init__(self, dim: int, heads: int = 1) -> None:
        super().__init__()
        _check_heads(dim, heads, "BinaryAdditiveAttention")
        self.dim, self.heads = dim, heads
        self.qk = BinaryConv2d(dim, 2 * dim, 1, input_quantizer=RSign(dim))
        self.bn_qk = BatchNorm2d(2 * dim)
        self.w_g = BinaryConv2d(dim, heads, 1, input_quantizer=RSign(dim))
        self.proj = BinaryConv2d(dim, dim, 1, input_quantizer=SteSign())
        self.bn_proj = BatchNorm2d(dim)
        self.act_proj = PReLU(dim)
        self.final = BinaryProjection(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k = torch.split(self.bn_qk(self.qk(x)), [self.dim, self.dim], dim=1)
        q = q + x
        k = k + x
        a = F.normalize(_tokens(self.w_g(q), self.heads), dim=-1)  # (B, h, 1, N)
        g = (_tokens(q, self.heads) * a).sum(dim=-1).reshape(-1, self.dim, 1, 1)
        t = self.act_proj(self.bn_proj(self.proj(g * k)) + q)
        return self.final(t)

    def extra_macs(self, inputs: tuple, output: torch.Tensor) -> dict[int, int]:
        """The score-weighted pooling of the queries: N x C, 32-bit (float scores)."""
        _, c, h, w = inputs[0].shape
        return {32: int(c) * int(h) * int(w)}


ATTENTIONS = {"sep": BinarySeparableAttention, "add": BinaryAdditiveAttention}


class BinaryFormerBlock(nn.Module):
    """A binary attention (``"sep"`` or ``"add"``), then the binary feed-forward pair."""

    def __init__(self, dim: int, attention: str = "sep", heads: int = 1,
                 mlp_ratio: int = 2) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {sorted(ATTENTIONS)}, got {attention!r}")
        self.attn = ATTENTIONS[attention](dim, heads)
        self.mlp = BinaryMlp(dim, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x))
