"""binface.nn.blocks / binface.nn.attention: shapes, maths against references, MAC reports."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binface.nn.attention import (
    EfficientAdditiveAttention,
    MapToTokenAttention,
    MultiHeadSelfAttention,
    SeparableSelfAttention,
    TokenToMapAttention,
    TransposedSelfAttention,
)
from binface.nn.blocks import (
    DFCAttention,
    GDCHead,
    GhostModule,
    InvertedResidual,
    LoRaLin,
    SqueezeExcite,
    channel_shuffle,
    low_rank_linear,
    make_divisible,
)
from binface.profile import profile

torch.manual_seed(0)


class TaggedLinear(nn.Linear):
    """A stand-in for a binarised dense layer: proves the factories are honoured."""


def tagged(**kwargs):
    return TaggedLinear(**kwargs)


def test_loralin_rank_params_and_maths():
    layer = LoRaLin(192, 512, rank_ratio=0.6)
    assert layer.rank == 115  # int(min(192, 512) * 0.6)
    assert sum(p.numel() for p in layer.parameters()) == 115 * (192 + 512) + 512
    assert layer.linear1.bias is None
    x = torch.randn(3, 192)
    w = layer.linear2.weight @ layer.linear1.weight
    torch.testing.assert_close(layer(x), x @ w.T + layer.linear2.bias)
    assert LoRaLin(4, 4, rank_ratio=0.1).rank == 2  # never below 2
    with pytest.raises(ValueError):
        LoRaLin(4, 4)
    fac = low_rank_linear(0.5, linear=tagged)
    m = fac(in_features=64, out_features=256, bias=False)
    assert isinstance(m.linear1, TaggedLinear) and m.rank == 32 and m.linear2.bias is None


def test_gdc_head_pools_with_a_7x7_depthwise_kernel():
    head = GDCHead(32, 16, 7)
    assert head.gdc.groups == 32 and head.gdc.kernel_size == (7, 7) and head.gdc.padding == (0, 0)
    head.eval()
    x = torch.randn(2, 32, 7, 7)
    # the GDC output is the per-channel weighted sum over the 7x7 map
    expected = (x * head.gdc.weight.squeeze(1)).sum(dim=(2, 3))
    torch.testing.assert_close(head.gdc(x).flatten(1), expected, rtol=1e-5, atol=1e-5)
    assert head(x).shape == (2, 16)
    head.train()
    assert head(torch.randn(1, 32, 7, 7)).shape == (1, 16)  # trains at batch 1


def test_squeeze_excite_gates_channels():
    se = SqueezeExcite(16, 4)
    assert se.reduce.out_channels == 4 and se.reduce.bias is not None
    x = torch.randn(2, 16, 5, 5)
    y = se(x)
    gate = y / x
    # one gate per (sample, channel), in (0, 1)
    assert torch.allclose(gate, gate[..., :1, :1].expand_as(gate), atol=1e-5)
    assert (gate > 0).all() and (gate < 1).all()
    hard = SqueezeExcite(16, 4, gate=nn.Hardsigmoid)
    assert isinstance(hard.gate, nn.Hardsigmoid)


@pytest.mark.parametrize("size", [(14, 14), (7, 7), (28, 12)])
def test_dfc_attention_gate(size):
    dfc = DFCAttention(8, 12, kernel_size=5).eval()
    assert dfc.horizontal[0].kernel_size == (1, 5) and dfc.vertical[0].kernel_size == (5, 1)
    assert dfc.horizontal[0].groups == 12
    x = torch.randn(2, 8, *size)
    with torch.no_grad():
        g = dfc(x)
        assert g.shape == (2, 12, *size) and (g > 0).all() and (g < 1).all()
        # decoupled 1x5 then 5x1 on the half-size map: a 2 x 5 = 10 px reach, beyond a 3x3
        x2 = x.clone()
        x2[:, :, 0, 0] += 10
        g2 = dfc(x2)
    assert not torch.allclose(g2[:, :, 4, 4], g[:, :, 4, 4])
    if size[0] > 12:
        torch.testing.assert_close(g2[:, :, 12:, :], g[:, :, 12:, :])


def test_ghost_module_and_its_dfc_gate():
    plain = GhostModule(8, 20, dfc=False).eval()
    gated = GhostModule(8, 20, dfc=True).eval()
    gated.primary.load_state_dict(plain.primary.state_dict())
    gated.cheap.load_state_dict(plain.cheap.state_dict())
    x = torch.randn(2, 8, 14, 14)
    y = plain(x)
    assert y.shape == (2, 20, 14, 14)
    assert plain.primary[0].out_channels == 10
    torch.testing.assert_close(gated(x), y * gated.dfc(x))


def test_inverted_residual_and_shuffle():
    block = InvertedResidual(16, 16, 32)
    assert block.use_residual
    assert not InvertedResidual(16, 16, 32, stride=2).use_residual
    assert InvertedResidual(16, 24, 32, stride=2)(torch.randn(1, 16, 8, 8)).shape == (1, 24, 4, 4)
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    assert make_divisible(16 * 1.3, 4) == 20 and make_divisible(960 * 1.3, 4) == 1248


def permuted(module, x, dim):
    """Check token-permutation equivariance along ``dim``."""
    perm = torch.randperm(x.shape[dim])
    with torch.no_grad():
        y = module(x)
        yp = module(x.index_select(dim, perm))
    torch.testing.assert_close(yp, y.index_select(dim, perm), rtol=1e-4, atol=1e-5)


def test_multi_head_self_attention_matches_sdpa():
    attn = MultiHeadSelfAttention(32, num_heads=4).eval()
    x = torch.randn(2, 10, 32)
    qkv = attn.qkv(x).reshape(2, 10, 3, 4, 8).permute(2, 0, 3, 1, 4)
    ref = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
    ref = attn.proj(ref.transpose(1, 2).reshape(2, 10, 32))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-5)
    permuted(attn, x, 1)
    assert attn.extra_macs((x,), None) == 2 * 10 * 10 * 32
    # quadratic in the tokens
    assert attn.extra_macs((torch.randn(1, 20, 32),), None) == 4 * attn.extra_macs((x,), None)


def test_transposed_self_attention_matches_a_per_head_reference():
    attn = TransposedSelfAttention(24, num_heads=3).eval()
    with torch.no_grad():
        attn.temperature.copy_(torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1))
    x = torch.randn(2, 15, 24)
    qkv = attn.qkv(x)
    outs = []
    for h in range(3):
        q, k, v = (qkv[..., i * 24 + h * 8: i * 24 + (h + 1) * 8] for i in range(3))  # (B, N, d)
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)  # over the tokens
        a = (q.transpose(1, 2) @ k * attn.temperature[h]).softmax(-1)  # (B, d, d) channel map
        outs.append((a @ v.transpose(1, 2)).transpose(1, 2))
    ref = attn.proj(torch.cat(outs, dim=-1))
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-5)
    permuted(attn, x, 1)
    macs = attn.extra_macs((x,), None)
    assert macs == 2 * 15 * 24 * 8
    assert attn.extra_macs((torch.randn(1, 30, 24),), None) == 2 * macs  # linear in N


def test_separable_self_attention():
    attn = SeparableSelfAttention(16).eval()
    x = torch.randn(2, 4, 9, 16)  # (B, P, N, C)
    permuted(attn, x, 2)
    q, k, v = torch.split(attn.qkv(x), [1, 16, 16], dim=-1)
    context = (q.softmax(dim=2) * k).sum(dim=2, keepdim=True)
    torch.testing.assert_close(attn(x), attn.out(F.relu(v) * context))
    assert attn.extra_macs((x,), None) == 4 * 9 * 16
    assert attn.extra_macs((torch.randn(1, 4, 18, 16),), None) == 2 * 4 * 9 * 16


def test_efficient_additive_attention():
    attn = EfficientAdditiveAttention(20, linear=tagged).eval()
    assert all(isinstance(m, TaggedLinear) for m in
               (attn.to_query, attn.to_key, attn.w_g, attn.proj, attn.final))
    x = torch.randn(2, 12, 20)
    permuted(attn, x, 1)
    q = F.normalize(attn.to_query(x), dim=-1)
    k = F.normalize(attn.to_key(x), dim=-1)
    a = F.normalize(q @ attn.w_g.weight.T * 20 ** -0.5, dim=1)
    g = (a * q).sum(1, keepdim=True)
    torch.testing.assert_close(attn(x), attn.final(attn.proj(g * k) + q))
    assert attn.extra_macs((x,), None) == 12 * 20


def test_mobile_former_bridges():
    m2f = MapToTokenAttention(16, 24, num_heads=2)
    f2m = TokenToMapAttention(16, 24, num_heads=2)
    x, z = torch.randn(2, 16, 7, 7), torch.randn(2, 6, 24)
    z2 = m2f(x, z)
    x2 = f2m(x, z2)
    assert z2.shape == z.shape and x2.shape == x.shape
    assert m2f.extra_macs((x, z), z2) == f2m.extra_macs((x, z2), x2) == 2 * 6 * 49 * 16
    # pixels are keys/values of the Mobile->Former bridge: permuting them changes nothing
    perm = torch.randperm(49)
    xp = x.flatten(2)[:, :, perm].reshape_as(x)
    torch.testing.assert_close(m2f(xp, z), z2, rtol=1e-5, atol=1e-5)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 16, stride=16)
        self.mhsa = MultiHeadSelfAttention(16, 2)
        self.xca = TransposedSelfAttention(16, 2)

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)
        return self.xca(self.mhsa(t))


def test_profiler_sums_the_declared_matmuls():
    t = profile(Tiny(), (112, 112)).totals
    n, c = 49, 16
    assert t["macs_matmul"] == 2 * n * n * c + 2 * n * c * (c // 2)
    # dense layers on tokens count once per token
    dense = n * (3 * c * c + c * c) * 2
    assert t["macs_32bit"] == 3 * 16 * 16 * 16 * n + dense


def test_attention_factories_take_a_custom_linear():
    for m in (MultiHeadSelfAttention(16, 2, linear=tagged),
              TransposedSelfAttention(16, 2, linear=tagged),
              SeparableSelfAttention(16, linear=tagged),
              MapToTokenAttention(16, 8, linear=tagged),
              TokenToMapAttention(16, 8, linear=tagged)):
        dense = [x for x in m.modules() if isinstance(x, nn.Linear)]
        assert dense and all(isinstance(x, TaggedLinear) for x in dense)
    assert math.isclose(MultiHeadSelfAttention(16, 4).scale, 0.5)
    with pytest.raises(ValueError):
        MultiHeadSelfAttention(10, 4)
