"""LCE export: every layer kind and one model per family against PyTorch, and the report.

Binary networks amplify float rounding: one pre-activation that two correct
implementations round to either side of 0 flips a sign and changes thousands of
outputs. So the binary tests use *exact* parameters (weights and inputs on a coarse
dyadic grid, BatchNorm with eps 0 and unit variance and power-of-two scales): every
float op is then exact in any summation order, and LCE must agree with PyTorch
bit for bit. Float layers are tested with ordinary random weights at 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from binface.nn.layers import (
    BinaryConv2d,
    BinaryDepthwiseConv2d,
    BinarySeparableConv2d,
    QuantConv2d,
    QuantLinear,
)
from binface.nn.pooling import MaxPool2dSame
from binface.nn.quantizers import DoReFa, RSign
from binface.runtime.lce import lce_available

pytestmark = pytest.mark.skipif(
    not lce_available(),
    reason="needs the `lce` extra (pip install 'binface[lce]': TensorFlow, tf-keras, "
           "larq-compute-engine 0.16, numpy < 2)")

TOL = 1e-4


def make_exact(model: nn.Module, seed: int = 0) -> nn.Module:
    """Put every parameter on a grid where float32 arithmetic is exact."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eps = 0.0
                m.running_var.fill_(1.0)
                m.running_mean.copy_(torch.randint(-4, 5, m.running_mean.shape, generator=g) / 8)
                if m.weight is not None:
                    p = torch.randint(-3, 0, m.weight.shape, generator=g).float()
                    s = torch.randint(0, 2, m.weight.shape, generator=g) * 2 - 1
                    m.weight.copy_(s * 2.0 ** p)
                    m.bias.copy_(torch.randint(-4, 5, m.bias.shape, generator=g) / 8)
            elif isinstance(m, nn.PReLU):
                m.weight.fill_(0.25)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randint(-2, 3, m.weight.shape, generator=g) / 4)
                if m.bias is not None:
                    m.bias.copy_(torch.randint(-4, 5, m.bias.shape, generator=g) / 8)
            elif isinstance(m, BinarySeparableConv2d):
                m.depthwise_weight.copy_(torch.randn(m.depthwise_weight.shape, generator=g))
                m.pointwise_weight.copy_(torch.randn(m.pointwise_weight.shape, generator=g))
            elif isinstance(m, RSign):
                m.shift.copy_(torch.randint(-4, 5, m.shift.shape, generator=g) / 8)
    return model.eval()


def exact_input(shape, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).integers(-4, 5, shape) / 4).astype(np.float32)


def roundtrip(model: nn.Module, tmp_path, size=(16, 16), channels: int = 16, x=None,
              batch: int = 2):
    """(max relative error vs PyTorch, report) of ``model`` exported to LCE and run there."""
    from binface.runtime.lce import LceRunner, export_lce

    model = model.eval()
    info = export_lce(model, tmp_path / "m.tflite", size, channels=channels)
    if x is None:
        x = np.random.default_rng(1).standard_normal((batch, channels, *size)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = LceRunner(tmp_path / "m.tflite").run(x)
    assert got.shape == ref.shape
    err = float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))
    return err, info["report"]


def ops_of(report) -> list[str]:
    return [r.lce_op for r in report.rows]


# ---------------------------------------------------------------- binary layer kinds
class _BinBlock(nn.Module):
    """layer -> BatchNorm -> (residual) so that LCE must fold the BN into the output."""

    def __init__(self, layer: nn.Module, out_channels: int, residual: bool = False) -> None:
        super().__init__()
        self.layer, self.bn = layer, nn.BatchNorm2d(out_channels)
        self.residual = residual

    def forward(self, x):
        y = self.bn(self.layer(x))
        return y + x if self.residual else y


BINARY_KINDS = {
    # name: (layer, out channels, residual, expected LCE op, binary?)
    "conv3x3_same_pad1": (lambda: BinaryConv2d(64, 64, 3, padding="same", pad_values=1.0),
                          64, True, "LceBconv2d", True),
    "conv3x3_same_pad0_s2": (lambda: BinaryConv2d(64, 32, 3, stride=2, padding="same"),
                             32, False, "LceBconv2d", True),
    "conv1x1_valid": (lambda: BinaryConv2d(64, 48, 1), 48, False, "LceBconv2d", True),
    "conv_bias_dilated": (lambda: BinaryConv2d(64, 64, 3, padding="same", pad_values=1.0,
                                               dilation=2, bias=True),
                          64, False, "LceBconv2d", True),
    "rsign_input": (lambda: BinaryConv2d(64, 64, 3, padding="same", pad_values=1.0,
                                         input_quantizer=RSign(64)),
                    64, False, "LceBconv2d", True),
    "grouped_32_per_group": (lambda: BinaryConv2d(64, 64, 3, padding="same", pad_values=1.0,
                                                  groups=2), 64, False, "LceBconv2d", True),
    "grouped_16_per_group": (lambda: BinaryConv2d(64, 64, 3, padding="same", pad_values=1.0,
                                                  groups=4), 64, False, "CONV_2D", False),
    "depthwise": (lambda: BinaryDepthwiseConv2d(64, 3, padding="same", pad_values=1.0),
                  64, False, "DEPTHWISE_CONV_2D", False),
    "dorefa_input": (lambda: QuantConv2d(64, 64, 3, input_quantizer=DoReFa(1, "weights"),
                                         kernel_quantizer=DoReFa(1, "weights")),
                     64, False, "CONV_2D", False),
    "separable": (lambda: BinarySeparableConv2d(64, 64, 3, padding="same", pad_values=1.0,
                                                input_quantizer="ste_sign",
                                                depthwise_quantizer="ste_sign",
                                                pointwise_quantizer="ste_sign"),
                  64, False, "DEPTHWISE_CONV_2D+CONV_2D", False),
}


@pytest.mark.parametrize("kind", sorted(BINARY_KINDS))
def test_binary_layer_kind(kind, tmp_path):
    make, out_c, residual, op, binary = BINARY_KINDS[kind]
    torch.manual_seed(0)
    model = make_exact(_BinBlock(make(), out_c, residual))
    err, report = roundtrip(model, tmp_path, channels=64, x=exact_input((2, 64, 16, 16)))
    assert err == 0.0 or err < 1e-6, f"{kind}: {err}"
    (row,) = report.rows
    assert row.lce_op == op and row.binary == binary, row
    if not binary:
        assert row.reason  # a float layer always says why


def test_binary_dense_and_sign_after_maxpool(tmp_path):
    """sign(maxpool(x)) becomes LceBMaxPool2d; a binary dense layer runs as float."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = MaxPool2dSame(3, 2, padding="same")
            self.conv = BinaryConv2d(64, 64, 3, padding="same", pad_values=1.0)
            self.bn = nn.BatchNorm2d(64)
            self.fc = QuantLinear(64 * 8 * 8, 32, input_quantizer="ste_sign",
                                  kernel_quantizer="ste_sign")

        def forward(self, x):
            y = self.bn(self.conv(self.pool(x)))
            return self.fc(torch.flatten(y, 1))

    torch.manual_seed(0)
    model = make_exact(Net())
    err, report = roundtrip(model, tmp_path, channels=64, x=exact_input((2, 64, 16, 16)))
    assert err < 1e-6
    assert ops_of(report) == ["LceBMaxPool2d", "LceBconv2d", "FULLY_CONNECTED"]
    assert [r.binary for r in report.rows] == [True, True, False]
    assert "dense" in report.rows[2].reason


# ---------------------------------------------------------------- float layer kinds
class _FloatConvs(nn.Module):
    """Convs with every padding LCE treats differently, pools, resize and activations."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(8, 16, 3, stride=2, padding=1)  # torch pads LCE mistakes for "same"
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.PReLU(16)
        self.dw = nn.Conv2d(16, 32, 3, padding=1, groups=16)  # depthwise, multiplier 2
        self.gc = nn.Conv2d(32, 32, 3, padding=2, dilation=2, groups=4)
        self.pw = nn.Conv2d(32, 16, 1)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 16, 1), nn.Hardsigmoid())

    def forward(self, x):
        y = self.act1(self.bn1(self.c1(x)))
        y = torch.nn.functional.hardswish(self.dw(y))
        y = torch.nn.functional.silu(self.gc(y))
        y = self.pw(y)
        y = y * self.se(y)
        a = torch.nn.functional.max_pool2d(y, 3, 2, 1)
        b = torch.nn.functional.avg_pool2d(y, 2)
        c = torch.nn.functional.adaptive_avg_pool2d(y, 2)
        up = torch.nn.functional.interpolate(c, scale_factor=2, mode="nearest")
        bl = torch.nn.functional.interpolate(c, size=(4, 4), mode="bilinear",
                                             align_corners=False)
        y = torch.cat([a, b + up, torch.sigmoid(bl)], dim=1)
        y = torch.nn.functional.pad(y, (1, 0, 0, 1), value=0.5)
        return torch.nn.functional.relu6(y).flatten(1)


class _Tokens(nn.Module):
    """Attention, LayerNorm, GroupNorm, GELU, split / permute / slice / select, softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(4, 16)
        self.ln = nn.LayerNorm(16)
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16),
                                 nn.GELU(approximate="tanh"))
        self.cls = nn.Parameter(torch.randn(1, 1, 16))

    def forward(self, x):
        x = self.gn(x)
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # N, L, C
        t = torch.cat([self.cls.expand(n, -1, -1), t], dim=1)
        q, k, v = self.qkv(self.ln(t)).chunk(3, dim=-1)
        q = q.reshape(n, -1, 2, 8).permute(0, 2, 1, 3)
        k = k.reshape(n, -1, 2, 8).permute(0, 2, 1, 3)
        v = v.reshape(n, -1, 2, 8).permute(0, 2, 1, 3)
        a = torch.softmax(q @ k.transpose(-2, -1) * 8 ** -0.5, dim=-1)
        t = t + self.proj((a @ v).transpose(1, 2).reshape(n, -1, c))
        t = t + self.mlp(t)
        cls, rest = t[:, 0], t[:, 1::2]
        norm = torch.linalg.vector_norm(rest, dim=-1, keepdim=True).clamp(min=1e-6)
        return torch.cat([cls, (rest / norm).mean(dim=1), rest.amax(dim=1)], dim=1)


@pytest.mark.parametrize("name", ["convs", "tokens"])
def test_float_layer_kinds(name, tmp_path):
    torch.manual_seed(0)
    model = _FloatConvs() if name == "convs" else _Tokens()
    channels = 8 if name == "convs" else 16
    size = (16, 16) if name == "convs" else (6, 6)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    err, report = roundtrip(model, tmp_path, size=size, channels=channels)
    assert err < TOL, err
    assert report.rows and not any(r.binary for r in report.rows)
    assert all(r.lce_op != "-" or "folded" in r.reason for r in report.rows)


class _Unary(nn.Module):
    """Unary functions of the runtime's table on one input in (0.5, 1.5), stacked on axis 1."""

    def __init__(self, fns: list[str]) -> None:
        super().__init__()
        self.fns = fns

    def forward(self, x):
        from binface.runtime.ops.functions import UNARY

        x = torch.sigmoid(x) + 0.5
        # each function reads its own tensor: the converter matches TFLite's GELU only
        # when the exact and the tanh form share no subexpression (docs/lce.md)
        xs = [x + 0.01 * i for i in range(len(self.fns))]
        return torch.stack([torch.ops.aten.gelu(xi, approximate="tanh") if fn == "gelu_tanh"
                            else getattr(torch.ops.aten, UNARY[fn].aten[0])(xi)
                            for fn, xi in zip(self.fns, xs, strict=True)], 1)


def test_every_unary_function_converts_or_is_refused(tmp_path):
    from binface.runtime.errors import UnsupportedOpError
    from binface.runtime.lce import LceRunner, export_lce
    from binface.runtime.ops.functions import UNARY

    fns = sorted(fn for fn, entry in UNARY.items() if entry.tf is not None)
    model = _Unary(fns).eval()
    export_lce(model, tmp_path / "u.tflite", (3, 2), channels=2)
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 2)).astype(np.float32)
    got = LceRunner(tmp_path / "u.tflite").run(x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    for i, fn in enumerate(fns):
        np.testing.assert_allclose(got[:, i], want[:, i], rtol=TOL, atol=TOL, err_msg=fn)
    for fn in sorted(set(UNARY) - set(fns)):
        with pytest.raises(UnsupportedOpError, match=f"unary '{fn}' is not supported"):
            export_lce(_Unary([fn]), tmp_path / f"{fn}.tflite", (3, 2), channels=2)


# ---------------------------------------------------------------- one model per family
@pytest.mark.parametrize("name", ["mobilefacenet", "edgeface_xs"])
def test_float_family_model(name, tmp_path):
    from binface.models import create_model

    torch.manual_seed(0)
    model = create_model(name)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    err, report = roundtrip(model, tmp_path, size=(112, 112), channels=3, batch=1)
    assert err < TOL, err
    assert report.totals["binary_layers"] == 0


def test_binary_family_model_quicknet(tmp_path):
    """QuickNet: every binary conv is LceBconv2d, and the export is exact on exact weights."""
    from binface.models import create_model

    torch.manual_seed(0)
    model = make_exact(create_model("quicknet"))
    err, report = roundtrip(model, tmp_path, size=(112, 112), channels=3, batch=1,
                            x=exact_input((1, 3, 112, 112)))
    assert err < 1e-6, err
    bin_rows = [r for r in report.rows if r.kind.startswith("binary")]
    assert len(bin_rows) == 16 and all(r.binary and r.lce_op == "LceBconv2d" for r in bin_rows)
    assert report.totals["binary_macs"] == sum(r.macs for r in bin_rows)


# ---------------------------------------------------------------- the report
def test_report_known_mix(tmp_path):
    """A model mixing every reason: the report says which layers run binary, and why not."""

    class Mix(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 64, 3, padding=1)                             # float
            self.b1 = BinaryConv2d(64, 64, 3, padding="same", pad_values=1.0)      # binary
            self.b2 = BinaryConv2d(64, 64, 3, padding="same", pad_values=1.0,
                                   groups=4)                                       # 16 / group
            self.b3 = QuantConv2d(64, 64, 1, input_quantizer=DoReFa(1, "weights"),
                                  kernel_quantizer="ste_sign")                     # DoReFa
            self.b4 = BinaryDepthwiseConv2d(64, 3, padding="same", pad_values=1.0)  # depthwise
            self.pool = nn.MaxPool2d(2)                                            # binary pool
            self.b5 = BinaryConv2d(64, 128, 3, padding="same", pad_values=1.0)     # binary
            self.fc = nn.Linear(128, 10)                                           # float

        def forward(self, x):
            y = self.b4(self.b3(self.b2(self.b1(self.stem(x)))))
            y = self.b5(self.pool(y))
            return self.fc(y.mean(dim=(2, 3)))

    torch.manual_seed(0)
    err, report = roundtrip(make_exact(Mix()), tmp_path, size=(16, 16), channels=3,
                            x=exact_input((1, 3, 16, 16)))
    assert err < 1e-6
    rows = report.rows
    assert [r.binary for r in rows] == [False, True, False, False, False, True, True, False]
    assert [r.lce_op for r in rows] == ["CONV_2D", "LceBconv2d", "CONV_2D", "CONV_2D",
                                        "DEPTHWISE_CONV_2D", "LceBMaxPool2d", "LceBconv2d",
                                        "FULLY_CONNECTED"]
    assert "16 input channels per group" in rows[2].reason
    assert "DoReFa" in rows[3].reason
    assert "depthwise" in rows[4].reason
    t = report.totals
    assert (t["layers"], t["binary_layers"]) == (8, 3)
    assert t["binary_macs"] == 16 * 16 * 64 * 64 * 9 + 8 * 8 * 128 * 64 * 9
    text = report.render()
    assert "LCE runs 3 of 8" in text and "LceBMaxPool2d" in text


def test_binaryfacenet_runs_no_binary_op(tmp_path):
    """docs/lce.md: LCE executes BinaryFaceNet with zero binary ops (DoReFa everywhere)."""
    from binface.runtime.lce import export_lce

    info = export_lce("binaryfacenet", tmp_path / "bfn.tflite")
    t = info["report"].totals
    assert t["binary_layers"] == 0 and t["binary_macs"] == 0 and t["layers"] >= 19
    binary_kind = [r for r in info["report"].rows if r.kind.startswith("binary")]
    assert len(binary_kind) == 19 and all(r.reason for r in binary_kind)
    assert sum("DoReFa" in r.reason for r in binary_kind) == 15  # the 4 others are separable


# ---------------------------------------------------------------- command line
def test_cli_export_lce_and_bench(tmp_path, capsys):
    from binface.cli import main

    out = tmp_path / "q.tflite"
    assert main(["export", "quicknet_small", "--format", "lce", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.stat().st_size > 100_000
    assert "LceBconv2d" in text and "LCE runs 16 of 29" in text and f"wrote {out}" in text
    assert main(["bench", str(out), "--runtime", "lce", "--repeats", "2", "--warmup", "1",
                 "--json"]) == 0
    import json

    res = json.loads(capsys.readouterr().out)
    assert res["results"][0]["runtime"] == "lce" and res["results"][0]["median_ms"] > 0
    assert main(["bench", str(out), "--runtime", "packed"]) == 2
    assert "cannot run a .tflite" in capsys.readouterr().err


def test_bad_files_are_one_line_errors(tmp_path, capsys):
    from binface.cli import main
    from binface.errors import BinfaceError
    from binface.runtime.lce import LceRunner

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer, only some bytes")
    with pytest.raises(BinfaceError, match=r"bad\.tflite: not a TFLite flatbuffer"):
        LceRunner(bad)
    with pytest.raises(BinfaceError, match=r"missing\.tflite: no such TFLite model"):
        LceRunner(tmp_path / "missing.tflite")
    assert main(["bench", str(tmp_path / "missing.tflite"), "--runtime", "lce"]) == 2
    err = capsys.readouterr().err
    assert "missing.tflite: no such file" in err and err.count("\n") == 1


def test_untranslatable_layer_is_named(tmp_path):
    from binface.runtime.errors import UnsupportedOpError
    from binface.runtime.lce import export_lce

    class Dilated(nn.Module):
        def forward(self, x):
            return torch.nn.functional.max_pool2d(x, 3, 1, dilation=2)

    with pytest.raises(UnsupportedOpError, match="dilated max-pool is not supported"):
        export_lce(Dilated(), tmp_path / "d.tflite", (16, 16))
    assert not (tmp_path / "d.tflite").exists()


def test_runner_rejects_wrong_shape(tmp_path):
    from binface.errors import InputShapeError
    from binface.runtime.lce import LceRunner

    torch.manual_seed(0)
    _, _ = roundtrip(nn.Sequential(nn.Conv2d(3, 4, 3)), tmp_path, channels=3)
    runner = LceRunner(tmp_path / "m.tflite")
    with pytest.raises(InputShapeError, match="does not fit"):
        runner.run(np.zeros((1, 3, 8, 8), np.float32))


@pytest.mark.parametrize("name", ["binaryfaceformer_sep", "binaryfaceformer_add"])
def test_binary_attention_models_run_binary_in_lce(name, tmp_path):
    """Every binary projection of the BinaryFaceFormer models becomes LceBconv2d; only
    the float stem and head stay float (issue 13)."""
    from binface.models import create_model
    from binface.nn import BinaryConv2d
    from binface.runtime.lce import LceRunner, export_lce

    torch.manual_seed(0)
    model = create_model(name).eval()
    info = export_lce(model, tmp_path / "m.tflite")
    n_binary = sum(isinstance(m, BinaryConv2d) for m in model.modules())
    assert info["report"].totals["binary_layers"] == n_binary
    x = np.random.default_rng(0).standard_normal((1, 3, 112, 112), dtype=np.float32)
    got = LceRunner(tmp_path / "m.tflite").run(x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos >= 0.99


# ---------------------------------------------------------------- full-integer int8 TFLite
def test_tflite_int8_of_a_float_model(tmp_path, capsys):
    """TensorFlow's full-integer int8: int8 ops, agrees with PyTorch on faces, LCE runs it."""
    from binface.cli import main
    from binface.data.synth import generate
    from binface.runtime.int8 import calibration_images
    from binface.runtime.lce import LceRunner, export_tflite_int8

    data = tmp_path / "synth"
    generate(data, identities=6, images_per_identity=4, pairs=20, workers=1, progress=False)
    torch.manual_seed(0)
    # a conv / BN / ReLU net with BatchNorm statistics of real faces. (A default-initialised
    # MobileFaceNet has ~1e-6 activations that int8 rounds to 0, and its PReLUs, written
    # as relu / minimum / mul / add, are four int8 ops each: docs/int8.md)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 64))
    calib = calibration_images(data / "train.rec", (112, 112), 16)
    xc = torch.from_numpy((calib.transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 127.5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a plain average over the passes
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(xc)
    model.eval()
    info = export_tflite_int8(model, tmp_path / "m8.tflite", data / "train.rec", images=16)
    assert info["format"] == "tflite-int8" and info["calibration_images"] == 16
    assert info["int8_ops"] > 0.8 * info["ops"]
    faces = calibration_images(data / "synth_lfw.bin", (112, 112), 8)
    x = (faces.transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 127.5
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = LceRunner(tmp_path / "m8.tflite").run(x)
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.95
    # the command, then the LCE runner times it; binary models are refused in one line
    out = tmp_path / "cli8.tflite"
    assert main(["export", "mobilefacenet", "--format", "tflite", "--int8", "--calibrate",
                 str(data / "synth_lfw.bin"), "--calibration-images", "8", "-o", str(out)]) == 0
    assert "full-integer int8" in capsys.readouterr().out
    assert main(["bench", str(out), "--runtime", "lce", "--repeats", "2", "--warmup", "1",
                 "--rounds", "1"]) == 0
    capsys.readouterr()
    assert main(["export", "binaryfacenet", "--format", "tflite", "--int8", "--calibrate",
                 str(data / "synth_lfw.bin"), "-o", str(tmp_path / "b.tflite")]) == 2
    err = capsys.readouterr().err
    assert "binary model" in err and "\n" not in err.strip()
    assert not (tmp_path / "b.tflite").exists()
