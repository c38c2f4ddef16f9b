"""The larq counting rules of binface.profile on small hand-checked models."""

import torch
from torch import nn

from binface.nn import BatchNorm2d, BinaryConv2d, BinaryLinear, DoReFa, QuantConv2d, SteSign
from binface.profile import profile


class Tokens(nn.Module):
    """A dense layer applied to 10 tokens, plus a declared attention matmul."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.pos = nn.Parameter(torch.zeros(1, 10, 8))

    def extra_macs(self, inputs, output):
        return 10 * 10 * 16  # q @ k^T over 10 tokens of width 16

    def forward(self, x):
        t = x.flatten(2)[:, :8, :10].transpose(1, 2) + self.pos
        return self.proj(t)


def test_precision_is_the_max_of_input_and_kernel():
    model = nn.Sequential(
        BinaryConv2d(3, 4, 3, padding="same"),  # 1-bit x 1-bit -> 1-bit, runtime binary
        BinaryConv2d(4, 4, 3, padding="same", input_quantizer=None),  # float input -> 32-bit
        QuantConv2d(4, 4, 1, input_quantizer=DoReFa(2), kernel_quantizer=DoReFa(2, "weights")),
        BinaryConv2d(4, 4, 1, input_quantizer=SteSign(), kernel_quantizer=None),  # float kernel
    )
    p = profile(model, (8, 8))
    t = p.totals
    assert t["macs_1bit"] == 3 * 4 * 9 * 64
    assert t["macs_runtime_binary"] == t["macs_1bit"]
    assert t["macs_kbit"] == 4 * 4 * 64
    assert t["macs_32bit"] == 4 * 4 * 9 * 64 + 4 * 4 * 64
    # weights: 108 + 144 binary-kernel tensors at 1 bit, 16 at 2 bits, 16 float
    assert t["params_1bit"] == 108 + 144
    assert t["params_kbit"] == 16
    assert t["params_32bit"] == 16
    assert t["memory_bytes"] == (252 * 1 + 16 * 2 + 16 * 32) / 8
    assert [layer.input_precision for layer in p.layers] == [1, 32, 2, 1]


def test_batchnorm_counts_moving_statistics_only_and_bias_is_32bit_without_macs():
    model = nn.Sequential(BinaryConv2d(2, 5, 1, bias=True), BatchNorm2d(5), nn.PReLU(5),
                          BatchNorm2d(5, affine=False))
    t = profile(model, (4, 4), in_channels=2).totals
    assert t["macs_1bit"] == 10 * 16 and t["macs_32bit"] == 0  # the bias adds no MAC
    assert t["params_1bit"] == 10
    assert t["params_32bit"] == 5 + 2 * 5 + 5 + 2 * 5  # bias, BN mean+var, slopes, BN mean+var


def test_dense_counts_tokens_and_matmuls_are_separate():
    t = profile(Tokens(), (4, 4), in_channels=8).totals
    assert t["macs_32bit"] == 8 * 16 * 10  # weight elements x tokens; bias adds none
    assert t["macs_matmul"] == 1600
    assert t["macs_total"] == t["macs_32bit"]  # the larq total leaves matmuls out
    assert t["params_32bit"] == 8 * 16 + 16 + 80


def test_dense_on_vectors_and_binary_linear():
    model = nn.Sequential(nn.Flatten(), BinaryLinear(12, 6), nn.Linear(6, 2, bias=False))
    t = profile(model, (2, 2)).totals
    assert t["macs_1bit"] == 72 and t["macs_32bit"] == 12


def test_shared_weights_count_once_and_training_mode_is_restored():
    conv = BinaryConv2d(3, 3, 1)
    model = nn.Sequential(conv, conv)
    model.train()
    p = profile(model, (5, 5))
    assert p.totals["params_1bit"] == 9
    assert p.totals["macs_1bit"] == 2 * 9 * 25  # two calls
    assert model.training


def test_profile_uses_real_output_sizes():
    # "same" with stride 2 on an odd map: ceil(7/2) = 4 output pixels per side
    t = profile(nn.Sequential(QuantConv2d(3, 2, 3, stride=2, padding="same")), (7, 7)).totals
    assert t["macs_32bit"] == 54 * 16
