"""Binary layers against a hand-written reference: quantize, pad (TF rule), convolve."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from binface.nn import (
    BatchNorm1d,
    BatchNorm2d,
    BinaryConv2d,
    BinaryDepthwiseConv2d,
    BinaryLinear,
    BinarySeparableConv2d,
    BlurPool2d,
    DoReFa,
    MagnitudeAwareSign,
    MaxPool2dSame,
    QuantConv2d,
    QuantizedLayer,
    QuantLinear,
    RSign,
    SteSign,
    apply_weight_clip,
    same_padding,
    set_kernel_quantization,
)


def sgn(t):
    return torch.where(t >= 0, 1.0, -1.0).to(t.dtype)


def tf_same_pad(x, k, s, d, value):
    """TensorFlow 'same': total = max((ceil(n/s)-1)*s + (k-1)*d + 1 - n, 0), extra at the end."""
    def amounts(n):
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        return total // 2, total - total // 2
    (t, b), (l, r) = amounts(x.shape[2]), amounts(x.shape[3])
    return F.pad(x, (l, r, t, b), value=value)


def test_same_padding_follows_tensorflow():
    assert same_padding(112, 3, 2) == (0, 1)  # the extra row goes at the bottom
    assert same_padding(112, 7, 2) == (2, 3)
    assert same_padding(56, 3, 1) == (1, 1)
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(28, 3, 1, dilation=2) == (2, 2)


CASES = list(itertools.product([1, 3, 5], [1, 2], [1, 2], [1, 2], [0.0, 1.0], ["same", "valid"]))


@pytest.mark.parametrize("k,stride,dilation,groups,pad_value,padding", CASES)
def test_binary_conv_matches_reference(k, stride, dilation, groups, pad_value, padding):
    torch.manual_seed(k * 100 + stride * 10 + dilation + groups)
    cin, cout, size = 6, 4, 11  # odd channels and size: nothing fills a word or divides evenly
    conv = BinaryConv2d(cin, cout, k, stride=stride, dilation=dilation, groups=groups,
                        padding=padding, pad_values=pad_value, bias=True).double()
    x = torch.randn(2, cin, size, size, dtype=torch.float64)
    xb = sgn(x)
    if padding == "same":
        xb = tf_same_pad(xb, k, stride, dilation, pad_value)
    ref = F.conv2d(xb, sgn(conv.weight), conv.bias, stride, 0, dilation, groups)
    out = conv(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    if padding == "same":
        assert out.shape[-1] == -(-size // stride)
    # integer results: a binary conv of +-1 operands sums +-1 terms (the bias aside)
    no_bias = out - conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(no_bias, no_bias.round(), rtol=0, atol=1e-9)


def test_pad_value_changes_only_the_border():
    torch.manual_seed(0)
    a = BinaryConv2d(3, 2, 3, padding="same", pad_values=0.0)
    b = BinaryConv2d(3, 2, 3, padding="same", pad_values=1.0)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 8, 8)
    diff = (a(x) - b(x)).abs()
    assert diff[..., 1:-1, 1:-1].max() == 0  # interior identical
    assert diff.max() > 0  # border differs


def test_float_operands_and_precisions():
    conv = BinaryConv2d(4, 4, 3, input_quantizer=None)
    assert conv.input_precision == 32 and conv.kernel_precision == 1
    assert not conv.runtime_binary
    conv = BinaryConv2d(4, 4, 3)
    assert conv.input_precision == 1 and conv.runtime_binary
    conv = QuantConv2d(4, 4, 3, input_quantizer=DoReFa(2), kernel_quantizer=DoReFa(2, "weights"))
    assert conv.input_precision == 2 and conv.kernel_precision == 2 and not conv.runtime_binary
    dorefa = BinaryConv2d(4, 4, 3, input_quantizer=DoReFa(1, "weights"),
                          kernel_quantizer=DoReFa(1, "weights"))
    assert dorefa.runtime_binary  # +-1 on both operands
    x = torch.randn(2, 4, 6, 6)
    ref = F.conv2d(torch.where(x > 0, 1.0, -1.0), torch.where(dorefa.weight > 0, 1.0, -1.0))
    torch.testing.assert_close(dorefa(x), ref)


def test_layer_rejects_bad_padding():
    with pytest.raises(ValueError, match="padding"):
        BinaryConv2d(3, 3, 3, padding="full")
    with pytest.raises(ValueError, match="pad_values"):
        BinaryConv2d(3, 3, 3, padding="same", pad_values=-1.0)


@pytest.mark.parametrize("stride,pad_value", [(1, 0.0), (2, 1.0)])
def test_binary_depthwise(stride, pad_value):
    torch.manual_seed(1)
    conv = BinaryDepthwiseConv2d(5, 3, stride=stride, padding="same", pad_values=pad_value,
                                 depth_multiplier=2, bias=True).double()
    x = torch.randn(2, 5, 9, 9, dtype=torch.float64)
    xb = tf_same_pad(sgn(x), 3, stride, 1, pad_value)
    ref = F.conv2d(xb, sgn(conv.weight), conv.bias, stride, 0, 1, 5)
    torch.testing.assert_close(conv(x), ref)
    assert conv.weight.shape == (10, 1, 3, 3)


def test_binary_separable():
    torch.manual_seed(2)
    conv = BinarySeparableConv2d(5, 7, 3, padding="same", pad_values=1.0, bias=True).double()
    x = torch.randn(2, 5, 9, 9, dtype=torch.float64)
    mid = F.conv2d(tf_same_pad(sgn(x), 3, 1, 1, 1.0), sgn(conv.depthwise_weight), None, 1, 0, 1, 5)
    ref = F.conv2d(mid, sgn(conv.pointwise_weight), conv.bias)
    torch.testing.assert_close(conv(x), ref)
    specs = {s.name: s for s in conv.profile_weights()}
    assert specs["depthwise_weight"].runtime_binary
    assert not specs["pointwise_weight"].runtime_binary  # its operand is the float depthwise sum
    assert specs["pointwise_weight"].input_precision == 1  # but larq counts it as 1-bit
    # a 1x1 depthwise step of +-1 by +-1 is a sign flip: the pointwise operand stays +-1
    one = BinarySeparableConv2d(5, 7, 1).double()
    mid = F.conv2d(sgn(x), sgn(one.depthwise_weight), None, 1, 0, 1, 5)
    assert torch.equal(mid.abs(), torch.ones_like(mid))
    specs = {s.name: s for s in one.profile_weights()}
    assert specs["pointwise_weight"].runtime_binary and not specs["depthwise_weight"].runtime_binary


def test_binary_linear():
    torch.manual_seed(3)
    lin = BinaryLinear(70, 9, bias=True).double()  # 70 inputs: more than one 64-bit word
    x = torch.randn(4, 70, dtype=torch.float64)
    torch.testing.assert_close(lin(x), F.linear(sgn(x), sgn(lin.weight), lin.bias))


def test_weight_clip_after_optimizer_step():
    torch.manual_seed(4)
    model = torch.nn.Sequential(
        BinaryConv2d(3, 8, 3, kernel_quantizer=SteSign(1.25), kernel_clip=1.25),
        BinaryDepthwiseConv2d(8, 1, bias=True, bias_clip=1.0),
        BinarySeparableConv2d(8, 4, 1),
        BinaryLinear(4, 2),
    )
    opt = torch.optim.SGD(model.parameters(), lr=100.0)  # big steps push weights past the clip
    x = torch.randn(2, 3, 8, 8)
    out = model[:3](x).mean(dim=(2, 3))
    model[3](out).square().sum().backward()
    opt.step()
    assert model[0].weight.abs().max() > 1.25
    apply_weight_clip(model)
    assert model[0].weight.abs().max() <= 1.25
    assert model[1].weight.abs().max() <= 1.0 and model[1].bias.abs().max() <= 1.0
    assert model[2].depthwise_weight.abs().max() <= 1.0
    assert model[2].pointwise_weight.abs().max() <= 1.0
    assert model[3].weight.abs().max() <= 1.0


def test_maxpool_same_and_blurpool():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    y = MaxPool2dSame(3, 2, padding="same")(x)  # TF pads (0, 1): windows start at row 0
    assert y.shape == (1, 1, 4, 4)
    assert y[0, 0, 0, 0] == x[0, 0, 2, 2] and y[0, 0, -1, -1] == 63
    blur = BlurPool2d(2)
    ones = torch.ones(1, 2, 7, 7)
    out = blur(ones)
    assert out.shape == (1, 2, 4, 4)
    assert torch.allclose(out[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2))
    assert not any(p.requires_grad for p in blur.parameters())


def test_batchnorm_trains_on_one_value_per_channel():
    bn = BatchNorm2d(3)
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(1, 3, 1, 1, requires_grad=True)
    y = bn(x)
    torch.testing.assert_close(y.flatten(), bn.bias.detach())  # Keras: output is beta
    y.sum().backward()
    assert x.grad is not None and bn.bias.grad is not None
    assert torch.equal(bn.running_mean, torch.zeros(3))  # one value updates no statistic
    bn1 = BatchNorm1d(4)
    assert bn1(torch.randn(1, 4)).shape == (1, 4)
    torch.testing.assert_close(bn1(torch.ones(5, 4)), torch.zeros(5, 4))  # normal path


# ---------------------------------------------------------------- the shared base
def _layers():
    return {
        "conv": BinaryConv2d(6, 4, 3, stride=2, padding="same", bias=True,
                             kernel_quantizer=MagnitudeAwareSign()),
        "dw": BinaryDepthwiseConv2d(6, 3, padding=1, depth_multiplier=2,
                                    input_quantizer=DoReFa(1, "weights"),
                                    depthwise_quantizer=DoReFa(1, "weights")),
        "sep": BinarySeparableConv2d(6, 5, 3, stride=2, padding=1, bias=True),
        "linear": BinaryLinear(9, 7, bias=True),
        "float": QuantConv2d(6, 4, 3, padding="same"),
    }


def _input(name):
    return torch.randn(2, 9) if name == "linear" else torch.randn(2, 6, 9, 9)


def test_quantized_layers_share_one_base_and_take_keywords():
    for layer in _layers().values():
        assert isinstance(layer, QuantizedLayer)
    with pytest.raises(TypeError):
        BinaryConv2d(3, 3, 3, 2)  # stride and the rest are keyword arguments
    with pytest.raises(TypeError):
        BinaryDepthwiseConv2d(3, 3, groups=3)  # fixed by the layer
    dw = BinaryDepthwiseConv2d(4, 3, depth_multiplier=2, kernel_clip=0.5, bias_clip=0.25)
    assert (dw.groups, dw.out_channels, dw.kernel_clip, dw.bias_clip) == (4, 8, 0.5, 0.25)
    assert isinstance(dw.kernel_quantizer, SteSign) and isinstance(dw.input_quantizer, SteSign)
    assert QuantLinear(3, 2).kernel_quantizer is None and BinaryLinear(3, 2).kernel_clip == 1.0


def test_state_dict_keys():
    conv = BinaryConv2d(4, 4, 3, bias=True, input_quantizer=RSign(4))
    assert list(conv.state_dict()) == ["weight", "bias", "input_quantizer.shift"]
    sep = BinarySeparableConv2d(4, 4, 1, bias=True)
    assert list(sep.state_dict()) == ["depthwise_weight", "pointwise_weight", "bias"]


@pytest.mark.parametrize("name", list(_layers()))
def test_output_shape_is_the_forward_shape(name):
    layer = _layers()[name]
    x = _input(name)
    assert layer.output_shape(x.shape) == list(layer(x).shape)


@pytest.mark.parametrize("name", list(_layers()))
def test_freeze_weights_keeps_the_outputs(name):
    torch.manual_seed(5)
    layer = _layers()[name].eval()
    x = _input(name)
    with torch.no_grad():
        before = layer(x)
        layer.freeze_weights()
        after = layer(x)
    assert torch.equal(before, after)
    assert all(getattr(layer, q) is None for _, q in layer.kernels)
    assert layer.input_quantizer is not None or name == "float"


def test_freeze_weights_in_stage_one_keeps_the_latent_weights():
    layer = BinaryConv2d(3, 3, 3)
    set_kernel_quantization(layer, False)
    w = layer.weight.detach().clone()
    layer.freeze_weights()
    assert torch.equal(layer.weight.detach(), w) and layer.kernel_quantizer is None


def test_runtime_layer_states_what_runs():
    layers = _layers()
    conv = layers["conv"].runtime_layer([2, 6, 8, 8])
    assert conv.kind == "conv" and conv.binary and conv.input == {"kind": "pos"}
    assert conv.attrs["pads"] == [0, 1, 0, 1]  # TensorFlow: the extra row at the bottom
    assert conv.attrs["stride"] == [2, 2] and conv.attrs["groups"] == 1
    w = conv.weights["weight"]
    scale = layers["conv"].weight.abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(w.abs(), scale.expand_as(w))  # MagnitudeAwareSign's value
    dw = layers["dw"].runtime_layer([2, 6, 8, 8])
    assert dw.input == {"kind": "neg"} and dw.attrs["groups"] == 6 and dw.binary
    assert dw.attrs["pads"] == [1, 1, 1, 1]
    sep = layers["sep"].runtime_layer([2, 6, 8, 8])
    assert sep.kind == "sep" and set(sep.weights) == {"dw_weight", "pw_weight"}
    assert sep.attrs["pads"] == [1, 1, 1, 1] and sep.bias is layers["sep"].bias
    lin = layers["linear"].runtime_layer([2, 9])
    assert lin.kind == "linear" and lin.attrs == {} and lin.binary
    flt = layers["float"].runtime_layer([2, 6, 8, 8])
    assert flt.input == {"kind": "none"} and not flt.binary
    assert torch.equal(flt.weights["weight"], layers["float"].weight)
