"""Binary separable / additive attention blocks: shapes, counts, packed-engine conformance.

Also the profiler's labelling of activation products (``macs_matmul_1bit`` /
``macs_matmul_32bit``).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binface.nn import (
    BinaryAdditiveAttention,
    BinaryConv2d,
    BinaryFormerBlock,
    BinaryProjection,
    BinarySeparableAttention,
    binary_shortcut,
)
from binface.profile import profile, render_profile
from binface.runtime.engine import load_packed
from binface.runtime.export import export_packed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sgn(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, PReLU slopes and sign thresholds."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("shift"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def export_and_run(module: nn.Module, shape: tuple, tmp_path, batch: int = 2):
    export_packed(module, tmp_path / "m.bfp", input_size=shape[1:], channels=shape[0])
    eng = load_packed(tmp_path / "m.bfp")
    x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
    y, recs = eng.run(x, trace=True)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    return eng, y, recs, ref


def check_exact(model: nn.Module, recs: list[dict]) -> set[str]:
    """Each traced binary conv's integer sums equal torch's on the same signs."""
    for r in recs:
        layer = model.get_submodule(r["source"])
        xb = sgn(torch.from_numpy(np.ascontiguousarray(r["input"])))
        ref = F.conv2d(layer.pad(xb), sgn(layer.weight.detach()), None, layer.stride)
        got = r["acc"].reshape(ref.shape)
        assert np.array_equal(got, ref.numpy().astype(np.int64)), r["source"]
    return {r["source"] for r in recs}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def binary_convs(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, BinaryConv2d)}


# ---------------------------------------------------------------- profiler labels
class Products(nn.Module):
    """Declares 1-bit and 32-bit activation products; a bare int is 32-bit."""

    def __init__(self, declared):
        super().__init__()
        self.declared = declared
        self.proj = nn.Conv2d(2, 2, 1, bias=False)

    def extra_macs(self, inputs, output):
        return self.declared

    def forward(self, x):
        return self.proj(x)


def test_matmul_macs_are_labelled_by_precision():
    t = profile(Products({1: 300, 32: 40}), (2, 2), in_channels=2).totals
    assert (t["macs_matmul_1bit"], t["macs_matmul_32bit"], t["macs_matmul"]) == (300, 40, 340)
    t = profile(Products(77), (2, 2), in_channels=2).totals
    assert (t["macs_matmul_1bit"], t["macs_matmul_32bit"], t["macs_matmul"]) == (0, 77, 77)


def test_per_layer_table_shows_matmul_precisions():
    p = profile(Products({1: 300, 32: 40}), (2, 2), in_channels=2, name="toy")
    text = render_profile(p, per_layer=True)
    assert "mm 1-bit" in text and "mm 32-bit" in text
    row = next(line for line in text.splitlines() if " Products " in line)
    assert "300" in row and "40" in row
    layer = next(d for d in p.to_dict(per_layer=True)["layers"] if d["type"] == "Products")
    assert (layer["macs_matmul_1bit"], layer["macs_matmul_32bit"]) == (300, 40)


# ---------------------------------------------------------------- shortcuts, projections
def test_shortcuts_repeat_average_and_pool():
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(binary_shortcut(4, 8)(x), torch.cat([x, x], 1))
    torch.testing.assert_close(binary_shortcut(4, 2)(x), (x[:, :2] + x[:, 2:]) / 2)
    torch.testing.assert_close(binary_shortcut(4, 4, 2)(x), F.avg_pool2d(x, 2))
    with pytest.raises(ValueError, match="shortcut"):
        binary_shortcut(4, 6)


def test_binary_projection_is_prelu_of_bn_plus_shortcut():
    torch.manual_seed(0)
    p = randomize(BinaryProjection(8, 16, 3, stride=2))
    x = torch.randn(2, 8, 8, 8)
    xb = sgn(x + p.conv.input_quantizer.shift.view(1, -1, 1, 1))
    z = F.conv2d(F.pad(xb, (0, 1, 0, 1), value=1.0), sgn(p.conv.weight), None, 2)
    ref = p.act(p.bn(z) + torch.cat([F.avg_pool2d(x, 2)] * 2, 1))
    with torch.no_grad():
        torch.testing.assert_close(p(x), ref)


# ---------------------------------------------------------------- attention blocks
DIM, HW = 64, 6


@pytest.mark.parametrize("cls", [BinarySeparableAttention, BinaryAdditiveAttention])
def test_attention_is_linear_in_tokens_and_splits_heads(cls):
    a = cls(DIM, heads=4)
    x = torch.randn(2, DIM, HW, HW)
    assert a(x).shape == x.shape
    assert a.extra_macs((x,), None) == {32: DIM * HW * HW}
    assert a.extra_macs((torch.randn(1, DIM, 2 * HW, HW),), None) == {32: 2 * DIM * HW * HW}
    with pytest.raises(ValueError, match="heads"):
        cls(DIM, heads=5)


def test_separable_attention_matches_its_formula():
    """One softmax score per token and head weights the keys into a context vector."""
    torch.manual_seed(1)
    a = randomize(BinarySeparableAttention(DIM, heads=2))
    x = torch.randn(2, DIM, HW, HW)
    with torch.no_grad():
        y = a.bn_qkv(a.qkv(x))
        q, k, v = y[:, :2], y[:, 2:2 + DIM] + x, y[:, 2 + DIM:] + x
        s = q.flatten(2).softmax(-1)  # (B, 2, N)
        kh = k.flatten(2).reshape(2, 2, DIM // 2, HW * HW)
        c = (kh * s[:, :, None]).sum(-1).reshape(2, DIM, 1, 1)
        # the output projection's sign input is sign(v) xor sign(c)
        assert torch.equal(sgn(v * c), sgn(v) * sgn(c))
        ref = a.act(a.bn_out(F.conv2d(sgn(v) * sgn(c), sgn(a.out.weight))) + x)
        torch.testing.assert_close(a(x), ref)


BLOCKS = {
    "sep": lambda: BinaryFormerBlock(DIM, "sep", heads=2),
    "add": lambda: BinaryFormerBlock(DIM, "add", heads=2),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_counts_binary_and_runs_in_the_packed_engine(name, tmp_path):
    torch.manual_seed(2)
    block = randomize(BLOCKS[name]())
    t = profile(block, (HW, HW), in_channels=DIM).totals
    assert t["macs_32bit"] == 0 and t["macs_1bit"] == t["macs_runtime_binary"] > 0
    assert t["macs_matmul_32bit"] == DIM * HW * HW and t["macs_matmul_1bit"] == 0
    eng, y, recs, ref = export_and_run(block, (DIM, HW, HW), tmp_path)
    # every binary projection runs as xor + popcount, with sums equal to torch's
    assert check_exact(block, recs) == binary_convs(block)
    gated = "attn.out" if name == "sep" else "attn.proj"
    node = next(op.node for op in eng.ops if op.node["op"] == "bconv"
                and op.node["attrs"]["source"] == gated)
    pack = next(op.node for op in eng.ops if node["in"][0] in op.node["out"])
    # sign(v * c): the broadcast product is folded into the packing (a gated pack)
    assert pack["op"] == "pack" and len(pack["in"]) == 2
    assert cosine(y, ref) > 0.9999


def test_block_trains():
    torch.manual_seed(3)
    block = BinaryFormerBlock(DIM, "add", heads=2).train()
    block(torch.randn(4, DIM, HW, HW)).square().mean().backward()
    shifts = [p for n, p in block.named_parameters() if n.endswith("shift")]
    assert shifts and all(p.grad is not None and torch.isfinite(p.grad).all() for p in shifts)
    assert all(p.grad.abs().sum() > 0 for p in shifts)
