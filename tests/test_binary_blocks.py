"""Float blocks made binary by passing layer factories: profiled, exported, matched.

``ConvBNAct``, ``InvertedResidual`` and an attention block take their convolutions and
dense layers as factories; passing ``BinaryConv2d`` / ``BinaryLinear`` must give binary
blocks that the profiler counts as 1-bit, the packed engine runs as xor + popcount, and
that agree with PyTorch (integer-exact per binary layer, close end to end).
"""

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binface.nn import (
    ApproxSign,
    BinaryConv2d,
    BinaryLinear,
    ConvBNAct,
    EfficientAdditiveAttention,
    InvertedResidual,
    MultiHeadSelfAttention,
    QuantConv2d,
    QuantLinear,
    SeparableSelfAttention,
    TransposedSelfAttention,
)
from binface.profile import profile
from binface.runtime.engine import load_packed
from binface.runtime.export import export_packed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics and PReLU slopes on a dyadic grid (exact in float32)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.eps = 0.0
                m.running_var.fill_(1.0)
                m.running_mean.copy_(torch.randint(-8, 9, (c,), generator=g) / 4)
                m.weight.copy_(2.0 ** torch.randint(-3, 1, (c,), generator=g).float())
                m.bias.copy_(torch.randint(-8, 9, (c,), generator=g) / 8)
            elif isinstance(m, nn.PReLU):
                m.weight.fill_(0.25)
    return model.eval()


def sgn(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0)


def export_and_run(module: nn.Module, shape: tuple, tmp_path, batch: int = 2):
    """The engine's output (with its per-binary-layer trace) and PyTorch's, same input."""
    module = module.eval()
    export_packed(module, tmp_path / "m.bfp", input_size=shape[1:], channels=shape[0])
    eng = load_packed(tmp_path / "m.bfp")
    x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
    y, recs = eng.run(x, trace=True)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    return eng, y, recs, ref


def reference_sums(layer: nn.Module, x: np.ndarray, padding: int) -> np.ndarray:
    """A binary layer's integer sums on ``x``, written with torch ops (zero padding)."""
    xb = sgn(torch.from_numpy(np.ascontiguousarray(x)))
    wb = sgn(layer.weight.detach())
    if isinstance(layer, QuantLinear):
        return F.linear(xb, wb).numpy()
    return F.conv2d(xb, wb, None, layer.stride, padding, layer.dilation, layer.groups).numpy()


def check_exact(model: nn.Module, recs: list[dict], paddings: dict[str, int]) -> list[str]:
    """Every traced binary layer's integer sums equal the torch reference; their names."""
    for r in recs:
        layer = model.get_submodule(r["source"])
        ref = reference_sums(layer, r["input"], paddings.get(r["source"], 0))
        got = r["acc"].reshape(ref.shape)
        assert np.array_equal(got, ref.astype(np.int64)), r["source"]
    return [r["source"] for r in recs]


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------- padding of quantized convs
@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (5, 1, 2), ((1, 5), 1, (0, 2)),
                                              (3, 1, 0), (3, 1, 2)])
def test_integer_padding_is_nn_conv2d_padding(k, stride, padding):
    """An integer padding pads the quantized input as nn.Conv2d pads its input."""
    torch.manual_seed(0)
    conv = BinaryConv2d(4, 6, k, stride=stride, padding=padding)
    x = torch.randn(2, 4, 9, 9)
    ref = F.conv2d(sgn(x), sgn(conv.weight), None, stride, padding)
    torch.testing.assert_close(conv(x), ref, rtol=0, atol=0)
    assert conv.output_shape(x.shape) == list(ref.shape)
    float_conv = QuantConv2d(4, 6, k, stride=stride, padding=padding)
    torch.testing.assert_close(
        float_conv(x), F.conv2d(x, float_conv.weight, None, stride, padding))


def test_integer_padding_names():
    """Padding equal to TensorFlow's "same" (stride 1) is "same"; 0 is "valid"."""
    assert BinaryConv2d(4, 4, 3, padding=1).pad_mode == "same"
    assert BinaryConv2d(4, 4, (1, 5), padding=(0, 2)).pad_mode == "same"
    assert BinaryConv2d(4, 4, 3, padding=0).pad_mode == "valid"
    explicit = BinaryConv2d(4, 4, 3, stride=2, padding=1)  # TF would pad (0, 1) at even sizes
    assert explicit.pad_mode == "explicit" and explicit.pads(8, 8) == (1, 1, 1, 1)
    assert "padding=(1, 1)" in repr(explicit)
    with pytest.raises(ValueError, match="padding"):
        BinaryConv2d(4, 4, 3, padding=-1)
    with pytest.raises(ValueError, match="padding"):
        BinaryConv2d(4, 4, 3, padding="full")


# ---------------------------------------------------------------- conv-BN-act
def test_binary_conv_bn_act(tmp_path):
    torch.manual_seed(1)
    block = randomize(ConvBNAct(16, 24, 3, conv=BinaryConv2d))
    assert isinstance(block[0], BinaryConv2d) and block[0].pad_mode == "same"
    t = profile(block, (8, 8), in_channels=16).totals
    assert t["macs_1bit"] == t["macs_runtime_binary"] == 24 * 16 * 9 * 8 * 8
    assert t["macs_32bit"] == 0 and t["params_1bit"] == 24 * 16 * 9
    eng, y, recs, ref = export_and_run(block, (16, 8, 8), tmp_path)
    assert [op.node["op"] for op in eng.ops] == ["pack", "bconv"]  # BN and PReLU fused
    assert check_exact(block, recs, {"0": 1}) == ["0"]
    assert np.array_equal(y, ref)  # dyadic BN and slopes: the float epilogue is exact too


def test_binary_conv_bn_act_with_partial_factory(tmp_path):
    """A ``functools.partial`` factory: other quantizers, stride 2 with PyTorch padding."""
    torch.manual_seed(2)
    conv = functools.partial(BinaryConv2d, input_quantizer=ApproxSign(), kernel_clip=1.25)
    block = randomize(ConvBNAct(8, 12, 3, stride=2, conv=conv, act=None))
    layer = block[0]
    assert layer.kernel_clip == 1.25 and layer.pad_mode == "explicit"
    t = profile(block, (9, 9), in_channels=8).totals
    assert t["macs_1bit"] == t["macs_runtime_binary"] == 12 * 8 * 9 * 5 * 5
    eng, y, recs, ref = export_and_run(block, (8, 9, 9), tmp_path)
    assert check_exact(block, recs, {"0": 1}) == ["0"]
    assert np.array_equal(y, ref)


# ---------------------------------------------------------------- inverted residual
@pytest.mark.parametrize("stride", [1, 2])
def test_binary_inverted_residual(stride, tmp_path):
    torch.manual_seed(3)
    block = randomize(InvertedResidual(16, 16, 32, stride=stride, conv=BinaryConv2d))
    assert block.use_residual == (stride == 1)
    size, out = 8, 8 // stride
    t = profile(block, (size, size), in_channels=16).totals
    expected = 32 * 16 * size * size + 32 * 9 * out * out + 16 * 32 * out * out
    assert t["macs_1bit"] == t["macs_runtime_binary"] == expected
    assert t["macs_32bit"] == 0
    eng, y, recs, ref = export_and_run(block, (16, size, size), tmp_path)
    ops = [op.node["op"] for op in eng.ops]
    assert ops.count("bconv") == 2 and ops.count("bdwconv") == 1
    names = check_exact(block, recs, {"layers.1.0": 1})
    assert sorted(names) == ["layers.0.0", "layers.1.0", "layers.2.0"]
    assert eng.summary()["binary_macs"] == expected  # per sample
    assert np.array_equal(y, ref)


# ---------------------------------------------------------------- attention
class OnTokens(nn.Module):
    """An attention block on a feature map: its pixels as tokens, plus the block's input.

    ``layout="tokens"`` gives the block (B, HW, C); ``"patches"`` gives (B, H, W, C)
    (MobileViTv2's pixels-per-patch by patches layout).
    """

    def __init__(self, attn: nn.Module, layout: str = "tokens") -> None:
        super().__init__()
        self.attn, self.layout = attn, layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.layout == "patches":
            t = x.permute(0, 2, 3, 1)
            return (t + self.attn(t)).permute(0, 3, 1, 2)
        t = x.flatten(2).transpose(1, 2)
        return (t + self.attn(t)).transpose(1, 2).reshape(b, c, h, w)


DIM, HW = 64, 4
ATTENTION = {
    # name: (block, layout, 1-bit MACs per token)
    "mhsa": (lambda: MultiHeadSelfAttention(DIM, 4, linear=BinaryLinear), "tokens",
             4 * DIM * DIM),
    "transposed": (lambda: TransposedSelfAttention(DIM, 4, linear=BinaryLinear), "tokens",
                   4 * DIM * DIM),
    "additive": (lambda: EfficientAdditiveAttention(DIM, linear=BinaryLinear), "tokens",
                 4 * DIM * DIM + DIM),
    "separable": (lambda: SeparableSelfAttention(DIM, linear=BinaryLinear), "patches",
                  DIM * (1 + 2 * DIM) + DIM * DIM),
}


@pytest.mark.parametrize("name", list(ATTENTION))
def test_binary_attention_block(name, tmp_path):
    make, layout, per_token = ATTENTION[name]
    torch.manual_seed(4)
    block = OnTokens(make(), layout).eval()
    dense = [m for m in block.modules() if isinstance(m, nn.Linear)]
    assert dense and all(isinstance(m, BinaryLinear) for m in dense)
    t = profile(block, (HW, HW), in_channels=DIM).totals
    assert t["macs_1bit"] == t["macs_runtime_binary"] == HW * HW * per_token
    assert t["macs_32bit"] == 0 and t["macs_matmul"] > 0  # activation products stay float
    eng, y, recs, ref = export_and_run(block, (DIM, HW, HW), tmp_path)
    names = {n for n, m in block.named_modules() if isinstance(m, BinaryLinear)}
    assert set(check_exact(block, recs, {})) == names
    # softmax and norms round differently in numpy: close, not necessarily equal
    assert rel_err(y, ref) < 1e-4 and cosine(y, ref) > 0.9999


def test_engine_counts_dense_macs_per_token(tmp_path):
    torch.manual_seed(5)
    block = nn.Sequential(nn.Flatten(2), BinaryLinear(4, 8)).eval()  # (B, C, HW) tokens
    export_packed(block, tmp_path / "m.bfp", input_size=(2, 2), channels=3)
    assert load_packed(tmp_path / "m.bfp").summary()["binary_macs"] == 3 * 4 * 8
