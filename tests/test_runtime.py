"""The packed engine: exact binary ops, the zoo end to end, the .bfp format, errors, CLI."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binface.cli import main
from binface.errors import BinfaceError, InputShapeError
from binface.models import create_model, list_models
from binface.nn import (
    ApproxSign,
    BatchNorm2d,
    BinaryConv2d,
    BinaryDepthwiseConv2d,
    BinaryLinear,
    BinarySeparableConv2d,
    DoReFa,
    MagnitudeAwareSign,
    QuantLinear,
    RSign,
    SteSign,
    pad_same,
    randomize_statistics,
)
from binface.nn.quantizers import sign_pos
from binface.runtime import export_packed, load_packed
from binface.runtime.bfp import parse_bfp, read_bfp, write_bfp
from binface.runtime.capture import capture
from binface.runtime.engine import PackedEngine
from binface.runtime.errors import PackedFormatError, RuntimeUnavailableError, UnsupportedOpError
from binface.runtime.lower import lower

BINARY_ZOO = list_models("binary")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- helpers
def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, so that folding them into epilogues is exercised."""
    return randomize_statistics(model, seed)


def run_both(module: nn.Module, shape: tuple, tmp_path, batch: int = 2, seed: int = 0):
    """Export ``module`` for input (N, *shape); engine output with trace, and PyTorch's."""
    module = module.eval()
    path = tmp_path / "m.bfp"
    export_packed(module, path, input_size=shape[1:], channels=shape[0])
    eng = load_packed(path)
    x = np.random.default_rng(seed).standard_normal((batch, *shape), dtype=np.float32)
    y, recs = eng.run(x, trace=True)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    return eng, y, recs, ref


def _in_q(q):
    if isinstance(q, RSign):  # the engine records the input after RSign's shift
        return sign_pos
    return q


def _sign(w: torch.Tensor) -> torch.Tensor:
    return torch.sign(w)  # +-1 without a MagnitudeAwareSign scale


def torch_ints(mod: nn.Module, inp: np.ndarray, op: str) -> np.ndarray:
    """PyTorch's integer sums of a binary layer on the engine's recorded float input."""
    x = torch.from_numpy(np.ascontiguousarray(inp))
    with torch.no_grad():
        if isinstance(mod, QuantLinear):
            return F.linear(_in_q(mod.input_quantizer)(x), _sign(mod.quantized_weight())).numpy()
        xq = _in_q(mod.input_quantizer)(x)
        if mod.pad_mode == "same":
            xq = pad_same(xq, mod.kernel_size, mod.stride, mod.dilation, mod.pad_values)
        if isinstance(mod, BinarySeparableConv2d):
            dw = _sign(mod.depthwise_quantizer(mod.depthwise_weight))
            y = F.conv2d(xq, dw, None, mod.stride, 0, mod.dilation, mod.in_channels)
            if op == "bdwconv":  # the general path records the depthwise stage
                return y.numpy()
            return F.conv2d(y, _sign(mod.pointwise_quantizer(mod.pointwise_weight))).numpy()
        w = _sign(mod.quantized_weight())
        return F.conv2d(xq, w, None, mod.stride, 0, mod.dilation, mod.groups).numpy()


def check_layers_exact(model: nn.Module, recs: list[dict]) -> int:
    """Every traced binary layer's integer sums equal PyTorch's; returns how many."""
    assert recs
    for r in recs:
        mod = model.get_submodule(r["source"])
        ref = torch_ints(mod, r["input"], r["op"])
        got = r["acc"].reshape(ref.shape)
        assert np.array_equal(got, ref.astype(np.int64)), (
            f"{r['source']}: {(got != ref).sum()} of {ref.size} integer sums differ")
    return len(recs)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


# ---------------------------------------------------------------- binary ops, one at a time
CONV_CASES = [
    # cin, cout, kernel, stride, dilation, groups, padding, pad value, quantizer, H, W
    (3, 8, 3, 1, 1, 1, "same", 1.0, "ste", 9, 9),
    (67, 33, 3, 2, 1, 1, "same", 0.0, "ste", 10, 11),
    (130, 64, 5, 1, 2, 1, "same", 0.0, "dorefa", 12, 12),
    (64, 64, 3, 1, 1, 4, "same", 1.0, "dorefa", 8, 8),
    (96, 48, 3, 2, 1, 3, "valid", 0.0, "approx", 11, 9),
    (128, 128, 1, 1, 1, 2, "valid", 0.0, "ste", 5, 5),
    (20, 12, (1, 3), (2, 1), 1, 1, "same", 0.0, "dorefa", 7, 9),
    (48, 40, 5, 3, 1, 8, "same", 1.0, "ste", 13, 13),
    # the register-blocked kernels: blocks of 4 pixels (a partial last one) and of 16
    # (or 8) outputs, zero padding corrected at the border
    (64, 32, 3, 1, 1, 1, "same", 0.0, "ste", 7, 10),
    (128, 48, 3, 2, 1, 1, "same", 1.0, "dorefa", 9, 13),
    # ... on window words: 16 channels per group, a 5-tap row in two words (the second
    # masked), two blocks of outputs per group
    (64, 128, 5, 2, 1, 4, "same", 0.0, "ste", 12, 11),
]


@pytest.mark.parametrize("h,w,stride", [(3, 3, 1), (7, 7, 1), (5, 3, 1), (9, 7, 2),
                                         (4, 9, 1)])
def test_threads_split_pixels_and_blocks_cross_rows(h, w, stride, tmp_path):
    """Threads take runs of output pixels (rows cut anywhere, across images too) and
    short rows' register blocks run on into the next row: PyTorch's integer sums and
    the same bits on 1 and 2 threads, batch 3, zero padding corrected at every edge."""
    torch.manual_seed(3)
    model = nn.Sequential(
        BinaryConv2d(64, 32, 3, stride=stride, padding="same", pad_values=0.0,
                     input_quantizer=SteSign(), kernel_quantizer=SteSign()),
        nn.BatchNorm2d(32),
        BinaryConv2d(32, 48, 3, padding="same", pad_values=0.0, input_quantizer=SteSign(),
                     kernel_quantizer=SteSign()),
        nn.Conv2d(48, 64, 1))  # a float 1 x 1 conv: pixels split too
    model = randomize_bn(model).eval()
    path = tmp_path / "m.bfp"
    export_packed(model, path, input_size=(h, w), channels=64)
    x = np.random.default_rng(0).standard_normal((3, 64, h, w), dtype=np.float32)
    outs = []
    for threads in (1, 2):
        eng = load_packed(path, threads=threads)
        y, recs = eng.run(x, trace=True)
        assert check_layers_exact(model, recs) == 2
        outs.append((y, eng.run(x), [r["acc"] for r in recs]))
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert rel_err(outs[0][0], ref) < 1e-5
    (y1, z1, a1), (y2, z2, a2) = outs
    assert np.array_equal(y1, y2) and np.array_equal(z1, z2) and np.array_equal(y1, z1)
    assert all(np.array_equal(a, b) for a, b in zip(a1, a2, strict=True))


def _q(kind: str):
    return {"ste": SteSign, "approx": ApproxSign,
            "dorefa": lambda: DoReFa(1, "weights")}[kind]()


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-k{c[2]}-s{c[3]}-"
                         f"d{c[4]}-g{c[5]}-{c[6]}{int(c[7])}-{c[8]}")
def test_binary_conv_exact(case, tmp_path):
    cin, cout, k, s, d, g, pad, pv, q, h, w = case
    torch.manual_seed(1)
    conv = BinaryConv2d(cin, cout, k, stride=s, dilation=d, groups=g, padding=pad, pad_values=pv,
                        input_quantizer=_q(q), kernel_quantizer=_q(q), bias=True)
    model = nn.Sequential(conv)
    eng, y, recs, ref = run_both(model, (cin, h, w), tmp_path)
    assert [r["op"] for r in recs] == ["bconv"]
    assert check_layers_exact(model, recs) == 1
    assert rel_err(y, ref) < 1e-5


def test_scaled_weights_and_rsign_input(tmp_path):
    """MagnitudeAwareSign weights (+-scale per channel) and RSign's learned input shift."""
    torch.manual_seed(2)
    rs = RSign(24)
    with torch.no_grad():
        rs.shift.uniform_(-0.5, 0.5)
    conv = BinaryConv2d(24, 16, 3, padding="same", pad_values=1.0, input_quantizer=rs,
                        kernel_quantizer=MagnitudeAwareSign())
    model = nn.Sequential(conv, BatchNorm2d(16), nn.PReLU(16))
    randomize_bn(model)
    eng, y, recs, ref = run_both(model, (24, 6, 6), tmp_path)
    check_layers_exact(model, recs)
    assert rel_err(y, ref) < 1e-5
    assert [op.node["op"] for op in eng.ops] == ["pack", "bconv"]  # BN and PReLU fused


@pytest.mark.parametrize("mult,k,stride,pv", [(1, 3, 1, 0.0), (2, 3, 2, 1.0), (1, 1, 1, 1.0)])
def test_binary_depthwise_exact(mult, k, stride, pv, tmp_path):
    torch.manual_seed(3)
    dw = BinaryDepthwiseConv2d(70, k, stride=stride, padding="same", pad_values=pv,
                               depth_multiplier=mult, bias=True,
                               input_quantizer=DoReFa(1, "weights"),
                               depthwise_quantizer=DoReFa(1, "weights"))
    model = nn.Sequential(dw)
    eng, y, recs, ref = run_both(model, (70, 7, 7), tmp_path)
    assert [r["op"] for r in recs] == ["bdwconv"]
    check_layers_exact(model, recs)
    assert rel_err(y, ref) < 1e-5


@pytest.mark.parametrize("k,pv", [(1, 0.0), (3, 0.0), (3, 1.0)])
def test_binary_separable_exact(k, pv, tmp_path):
    """1x1 depthwise folds into one binary conv; a 3x3 one runs binary depthwise + float."""
    torch.manual_seed(4)
    sep = BinarySeparableConv2d(40, 24, k, padding="same", pad_values=pv, bias=True)
    model = nn.Sequential(sep)
    eng, y, recs, ref = run_both(model, (40, 6, 6), tmp_path)
    assert [r["op"] for r in recs] == (["bconv"] if k == 1 else ["bdwconv"])
    check_layers_exact(model, recs)
    assert rel_err(y, ref) < 1e-5


def test_binary_dense_exact(tmp_path):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), BinaryLinear(100, 37, bias=True),
                          nn.BatchNorm1d(37), BinaryLinear(37, 5))
    randomize_bn(model)
    eng, y, recs, ref = run_both(model, (4, 5, 5), tmp_path, batch=3)
    assert [r["op"] for r in recs] == ["bconv", "bconv"]
    check_layers_exact(model, recs)
    assert rel_err(y, ref) < 1e-5


def test_binary_maxpool_of_signs(tmp_path):
    """sign(maxpool(x)) = maxpool(sign(x)): the pool runs on packed words (AND)."""
    torch.manual_seed(6)
    model = nn.Sequential(
        BinaryConv2d(16, 70, 3, padding="same", pad_values=1.0),
        nn.MaxPool2d(2),
        BinaryConv2d(70, 8, 3, padding="same", pad_values=0.0),
    )
    eng, y, recs, ref = run_both(model, (16, 10, 10), tmp_path)
    ops = [op.node["op"] for op in eng.ops]
    assert "bmaxpool" in ops and "maxpool" not in ops
    assert check_layers_exact(model, recs) == 2
    assert rel_err(y, ref) < 1e-5


def test_residual_block_keeps_float_and_packed(tmp_path):
    """A QuickNet block: conv, ReLU, BN, + input, all in one epilogue writing float and bits."""
    from binface.models.quicknet import QuickNetBlock

    torch.manual_seed(7)
    model = randomize_bn(nn.Sequential(QuickNetBlock(64), QuickNetBlock(64)))
    eng, y, recs, ref = run_both(model, (64, 8, 8), tmp_path)
    assert [op.node["op"] for op in eng.ops] == ["pack", "bconv", "bconv"]
    first = eng.ops[1]
    assert first.attrs["nres"] == 1 and first.pack is not None and first.out_float
    check_layers_exact(model, recs)
    assert rel_err(y, ref) < 1e-5


# ---------------------------------------------------------------- the binary zoo
@pytest.mark.parametrize("name", BINARY_ZOO)
def test_binary_zoo_end_to_end(name, tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name))
    path = tmp_path / f"{name}.bfp"
    export_packed(model, path)
    eng = load_packed(path)
    x = np.random.default_rng(0).standard_normal((1, 3, 112, 112), dtype=np.float32)
    y, recs = eng.run(x, trace=True)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert y.shape == ref.shape
    assert rel_err(y, ref) < 1e-4
    n = check_layers_exact(model, recs)
    # two threads split each layer's rows: the same bits, traced or not (compared once
    # BLAS is on one thread in both: loading with threads sets it, and a BLAS GEMM on
    # two threads may round differently)
    eng2 = load_packed(path, threads=2)
    y1, recs1 = eng.run(x, trace=True)
    y2, recs2 = eng2.run(x, trace=True)
    assert np.array_equal(eng2.run(x), y1) and np.array_equal(y2, y1)
    assert all(np.array_equal(a["acc"], b["acc"]) and np.array_equal(a["output"], b["output"])
               for a, b in zip(recs1, recs2, strict=True))
    # every binary layer runs as xor + popcount: the engine's binary MACs are the larq count's
    from binface.profile import profile

    t = profile(model.backbone).totals
    macs = eng.summary()["binary_macs"]
    if name == "binaryfacenet":
        # DoReFa layers included; a separable 1x1's depthwise step is a per-channel sign
        # flip folded into its (now binary) pointwise conv
        folded = 2 * 64 * (28 * 28 + 14 * 14)
        assert macs == t["macs_1bit"] - folded == t["macs_runtime_binary"]
        assert n == 19
    else:
        assert macs == t["macs_1bit"] == t["macs_runtime_binary"]


def test_batch_and_plain_run(tmp_path):
    torch.manual_seed(0)
    model = create_model("quicknet_small").eval()
    export_packed(model, tmp_path / "q.bfp")
    eng = load_packed(tmp_path / "q.bfp", threads=1)
    x = np.random.default_rng(1).standard_normal((3, 3, 112, 112), dtype=np.float32)
    y = eng.run(x)
    assert y.shape == (3, 512)
    assert rel_err(eng.run(x[1:2]), y[1:2]) < 1e-5  # (BLAS sums may round differently)
    y2 = eng.run(x)  # buffers are reused between runs: the first result must not change
    assert np.array_equal(y, y2)
    # a batch on 2 threads (rows of the whole batch split) and 3 (more than the batch)
    for threads in (2, 3):
        assert np.array_equal(load_packed(tmp_path / "q.bfp", threads=threads).run(x), y)


# the paths a case runs: the planar kernel (on 1, 2 and 3 threads, or on one only),
# the padded copy
_PLANAR, _PLANAR_1T, _PADDED = ("planar",), ("planar, one thread",), ("padded",)


@pytest.mark.parametrize("cin,nout,k,stride,pad,paths", [
    (3, 16, 3, 2, 1, _PLANAR + _PADDED),  # QuickNet's stem (16 outputs: one vector)
    (3, 48, 3, 1, 1, _PLANAR),  # the register block with 3 vectors of outputs
    # (BinaryFaceFormer's 32 and BinaryFaceNet's 64 run in the zoo's end-to-end tests)
    (1, 20, 5, 1, 2, _PADDED),  # any output count (the loop of unknown length), one channel
    (4, 8, 2, 3, 0, _PADDED),  # stride past the kernel, no padding, odd output width
    (2, 24, 3, 1, (1, 0), _PADDED),  # padding on one axis only
    # the planar kernel's borders (one thread: each shape is a kernel to compile, and
    # the rows' split across threads is the same code as above): one padded axis and
    # strides that differ by axis; padding past the kernel (output columns and rows
    # that read no pixel) with a stride past it
    (2, 32, 3, (2, 1), (1, 0), _PLANAR_1T),
    (3, 16, 2, 3, 3, _PLANAR_1T),
])
def test_small_input_conv_matches_pytorch(cin, nout, k, stride, pad, paths, tmp_path,
                                          monkeypatch):
    """The direct conv for few input channels (padded copy, blocks of pixels, the last
    pixels of a row one by one or partly past its end), on a batch and on 1, 2 and 3
    threads; with outputs in whole vectors, also reading the NCHW input as it is
    (the planar kernel: the image batch), the padded copy's border done apart."""
    from binface.runtime import kernels as K
    from binface.runtime.ops.fused import ConvOp

    torch.manual_seed(0)
    module = randomize_bn(nn.Sequential(nn.Conv2d(cin, nout, k, stride, pad, bias=False),
                                        nn.BatchNorm2d(nout), nn.PReLU(nout))).eval()
    export_packed(module, tmp_path / "c.bfp", input_size=(23, 21), channels=cin)
    x = np.random.default_rng(0).standard_normal((3, cin, 23, 21), dtype=np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    assert K.conv_small_planar_fits(nout) == any(p.startswith("planar") for p in paths)
    for path in paths:
        planar = path.startswith("planar")
        if not planar:  # the padded copy (what an input that is not the image batch takes)
            monkeypatch.setattr(ConvOp, "reads_planar", lambda self, x: False)
        eng = load_packed(tmp_path / "c.bfp", threads=1)
        conv = next(op for op in eng.ops if isinstance(op, ConvOp) and op.small)
        y = eng.run(x)
        assert conv.reads_planar(x) == planar
        assert y.shape == ref.shape and rel_err(y, ref) < 1e-5
        x2 = x[::-1].copy()  # new values in the same kept input: the replay reads them
        assert rel_err(eng.run(x2), y[::-1]) < 1e-6
        for t in () if path.endswith("one thread") else (2, 3):
            assert np.array_equal(load_packed(tmp_path / "c.bfp", threads=t).run(x), y)


@pytest.mark.parametrize("channels", [64, 48])
def test_gated_stem_is_recomputed_not_stored(channels, tmp_path):
    """BinaryFaceNet's squeeze-excite on its RGB stem: the pack of stem x gate becomes
    the stem recomputed with the gate in its epilogue (the IR loop at 64 channels in
    groups of 16; the numba loops at 48 in groups of 12), so the float stem output is
    never stored. Exact sums, and the same outputs as the file's own nodes."""
    from binface.models.binaryfacenet import BinarySqueezeExcite, ConvBNPReLU, QConv
    from binface.runtime.ops.fused import GatedConvOp

    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(
        ConvBNPReLU(3, channels, 1), BinarySqueezeExcite(channels),
        QConv(channels, channels, 3, stride=2, padding="same", groups=4)))
    eng, y, recs, ref = run_both(model, (3, 112, 112), tmp_path)
    assert sum(isinstance(op, GatedConvOp) for op in eng.ops) == 1
    assert "prelu" not in {o for op in eng.ops for o in op.outputs}  # no float stem map
    assert check_layers_exact(model, recs) == 5
    assert rel_err(y, ref) < 1e-5
    plain = load_packed(tmp_path / "m.bfp", fuse=False)
    assert not any(isinstance(op, GatedConvOp) for op in plain.ops)
    x = np.random.default_rng(1).standard_normal((3, 3, 112, 112), dtype=np.float32)
    want = plain.run(x)
    for threads in (1, 2):
        eng = load_packed(tmp_path / "m.bfp", threads=threads)
        assert np.array_equal(eng.run(x), want) and np.array_equal(eng.run(x[:1]), want[:1])


@pytest.mark.parametrize("c, k, stride, pad", [
    (16, 3, 2, 1),  # QuickNet's: one vector, blocks of 8 pixels
    (48, 3, 1, 1),  # three vectors, blocks of 4
    (80, 5, 2, 2),  # a stripe of 64 channels and one of 16
    (20, 3, 1, 1),  # not whole vectors: the loop kernel
])
def test_float_depthwise_matches_pytorch(c, k, stride, pad, tmp_path):
    """Float depthwise convs (the register block on a padded copy where the channels
    fill vectors), on a batch and on 1 and 2 threads, repeated runs replayed."""
    from binface.runtime.ops.fused import ConvOp

    torch.manual_seed(0)
    module = randomize_bn(nn.Sequential(nn.Conv2d(c, c, k, stride, pad, groups=c, bias=False),
                                        nn.BatchNorm2d(c), nn.PReLU(c))).eval()
    export_packed(module, tmp_path / "d.bfp", input_size=(13, 11), channels=c)
    x = np.random.default_rng(0).standard_normal((3, c, 13, 11), dtype=np.float32)
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    eng = load_packed(tmp_path / "d.bfp", threads=1)
    conv = next(op for op in eng.ops if isinstance(op, ConvOp))
    assert conv.depthwise and conv.blocked_dw == (c % 16 == 0)
    y = eng.run(x)
    assert y.shape == ref.shape and rel_err(y, ref) < 1e-5
    for threads in (1, 2):
        eng = load_packed(tmp_path / "d.bfp", threads=threads)
        for _ in range(2):
            assert np.array_equal(eng.run(x), y)
        x2 = -x
        assert rel_err(eng.run(x2), module(torch.from_numpy(x2)).detach().numpy()) < 1e-5


def test_fused_ops_refuse_wrong_shapes(tmp_path):
    """The ops built at load name the value of the wrong shape in one line: a gate that
    does not hold N x C values, a head input of the wrong channel count."""
    from binface.models.binaryfacenet import BinarySqueezeExcite, ConvBNPReLU
    from binface.runtime.ops.floats import PoolDenseOp
    from binface.runtime.ops.fused import GatedConvOp

    torch.manual_seed(0)
    model = nn.Sequential(ConvBNPReLU(3, 64, 1), BinarySqueezeExcite(64),
                          BinaryConv2d(64, 64, 3, padding="same"), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(64, 32)).eval()
    export_packed(model, tmp_path / "m.bfp", input_size=(112, 112))
    eng = load_packed(tmp_path / "m.bfp")
    x = np.random.default_rng(0).standard_normal((1, 3, 112, 112), dtype=np.float32)
    env, ctx = dict(eng.consts), eng.context(1)
    env[eng.input_name] = eng.check_input(x)
    for op in eng.ops:
        if isinstance(op, GatedConvOp):
            bad = dict(env)
            bad[op.inputs[1]] = np.ones((1, 63), np.float32)
            with pytest.raises(PackedFormatError, match=r"gate .* has shape \[1, 63\]") as err:
                op(bad, ctx)
            _one_line(err.value)
        if isinstance(op, PoolDenseOp):
            bad = dict(env)
            bad[op.inputs[0]] = np.ones((1, 48, 2, 2), np.float32)
            with pytest.raises(PackedFormatError, match=r"\[M, H, W, 64\] float32") as err:
                op(bad, ctx)
            _one_line(err.value)
        op(env, ctx)
    assert {type(op) for op in eng.ops} >= {GatedConvOp, PoolDenseOp}


@pytest.mark.parametrize("bn", [True, False])
def test_embedding_head_is_one_op(bn, tmp_path):
    """Global pool, flatten, dense (20 outputs: a vector and a scalar tail) [, BN1d]
    run as one op, with the same outputs as the file's own four (three) nodes."""
    from binface.runtime.ops.floats import PoolDenseOp

    torch.manual_seed(0)
    layers = [BinaryConv2d(16, 32, 3, padding="same"), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
              nn.Linear(32, 20)] + ([nn.BatchNorm1d(20)] if bn else [])
    model = randomize_bn(nn.Sequential(*layers))
    eng, y, recs, ref = run_both(model, (16, 7, 7), tmp_path, batch=3)
    assert [type(op) for op in eng.ops].count(PoolDenseOp) == 1 and len(eng.ops) == 3
    assert rel_err(y, ref) < 1e-5
    x = np.random.default_rng(2).standard_normal((3, 16, 7, 7), dtype=np.float32)
    want = load_packed(tmp_path / "m.bfp", fuse=False).run(x)
    for threads in (1, 2):
        eng = load_packed(tmp_path / "m.bfp", threads=threads)
        for _ in range(2):  # the second run replays the head's calls
            assert np.array_equal(eng.run(x), want)


@pytest.mark.parametrize("name", ["mobilefacenet", "edgeface_xs"])
def test_packed_engine_runs_float_models(name, tmp_path):
    """The engine's float ops (grouped / depthwise convs, attention, softmax, norms)."""
    torch.manual_seed(0)
    model = randomize_bn(create_model(name))
    export_packed(model, tmp_path / "f.bfp")
    x = np.random.default_rng(2).standard_normal((2, 3, 112, 112), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    y = load_packed(tmp_path / "f.bfp", threads=1).run(x)
    assert rel_err(y, ref) < 1e-4
    assert np.array_equal(load_packed(tmp_path / "f.bfp", threads=2).run(x), y)


# ---------------------------------------------------------------- deployment: no torch
def test_engine_loads_and_runs_without_torch(tmp_path):
    torch.manual_seed(0)
    model = create_model("binaryfacenet").eval()
    export_packed(model, tmp_path / "b.bfp")
    x = np.random.default_rng(3).standard_normal((1, 3, 112, 112), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    with torch.no_grad():
        np.save(tmp_path / "ref.npy", model(torch.from_numpy(x)).numpy())
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any import of torch now fails
        "import numpy as np\n"
        "from binface.runtime import load_packed\n"
        f"e = load_packed({str(tmp_path / 'b.bfp')!r})\n"
        f"y = e.run(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"ref = np.load({str(tmp_path / 'ref.npy')!r})\n"
        "print(float(np.abs(y - ref).max() / np.abs(ref).max()))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    err, mods = out.stdout.strip().splitlines()
    assert float(err) < 1e-4
    assert mods == "['torch']"  # only the None placeholder: nothing imported it


# ---------------------------------------------------------------- the file format
def test_bfp_roundtrip_and_safetensors_compatible(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
               "b": np.array([1, 2**63], dtype=np.uint64), "c": np.zeros(0, np.int32)}
    graph = {"nodes": [], "x": [1, 2]}
    write_bfp(tmp_path / "t.bfp", graph, tensors)
    g2, t2 = read_bfp(tmp_path / "t.bfp")
    assert g2 == graph and set(t2) == set(tensors)
    for k in tensors:
        assert np.array_equal(t2[k], tensors[k]) and t2[k].dtype == tensors[k].dtype
    st = pytest.importorskip("safetensors.numpy")
    loaded = st.load_file(str(tmp_path / "t.bfp"))
    assert np.array_equal(loaded["b"], tensors["b"])


@pytest.fixture(scope="module")
def small_bfp(tmp_path_factory):
    path = tmp_path_factory.mktemp("bfp") / "small.bfp"
    torch.manual_seed(0)
    export_packed(nn.Sequential(BinaryConv2d(8, 8, 3, padding="same")).eval(), path,
                  input_size=(6, 6), channels=8)
    return path


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg
    return msg


def test_corrupt_file_is_one_clear_error(small_bfp, tmp_path):
    blob = bytearray(small_bfp.read_bytes())
    blob[-3] ^= 0xFF  # a flipped bit in the weights
    bad = tmp_path / "bad.bfp"
    bad.write_bytes(bytes(blob))
    with pytest.raises(PackedFormatError) as e:
        load_packed(bad)
    assert "corrupt" in _one_line(e.value)
    bad.write_bytes(bytes(blob[:100]))  # truncated
    with pytest.raises(PackedFormatError) as e:
        load_packed(bad)
    _one_line(e.value)
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(PackedFormatError) as e:
        load_packed(bad)
    assert "not a binface packed model" in _one_line(e.value)
    with pytest.raises(PackedFormatError) as e:
        load_packed(tmp_path / "missing.bfp")
    _one_line(e.value)


def test_version_mismatch_is_one_clear_error(small_bfp, tmp_path):
    blob = small_bfp.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    header["__metadata__"]["version"] = "99"
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with pytest.raises(PackedFormatError) as e:
        parse_bfp(struct.pack("<Q", len(raw)) + raw + blob[8 + n:], "future.bfp")
    msg = _one_line(e.value)
    assert "version 99" in msg and "re-export" in msg


def test_unsupported_op_is_named(tmp_path):
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)

    with pytest.raises(UnsupportedOpError) as e:
        export_packed(Odd(), tmp_path / "odd.bfp", input_size=(4, 4))
    assert "cumsum" in _one_line(e.value)
    # an op this engine does not know, in a file from elsewhere
    graph = {"input": "input", "input_shape": [[1, 0], 8, 6, 6], "outputs": ["y"],
             "nodes": [{"op": "frobnicate", "name": "f0", "in": ["input"], "out": ["y"]}]}
    write_bfp(tmp_path / "future.bfp", graph, {})
    with pytest.raises(UnsupportedOpError) as e:
        load_packed(tmp_path / "future.bfp")
    assert "frobnicate" in _one_line(e.value)


def test_wrong_input_shape_is_one_clear_error(small_bfp):
    eng = load_packed(small_bfp)
    for bad in (np.zeros((1, 3, 6, 6), np.float32), np.zeros((8, 6, 6), np.float32),
                np.zeros((1, 8, 7, 6), np.float32)):
        with pytest.raises(InputShapeError) as e:
            eng.run(bad)
        assert "expects input of shape (N, 8, 6, 6)" in _one_line(e.value)
    with pytest.raises(InputShapeError):
        eng.run([[1.0]])


# ---------------------------------------------------------------- CLI
def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_export_packed_and_check(capsys, tmp_path):
    out = tmp_path / "qs.bfp"
    code, stdout, _ = run_cli(capsys, "export", "quicknet_small", "-o", str(out), "--check",
                              "--json")
    assert code == 0
    info = json.loads(stdout)
    assert info["binary_layers"] == 16 and info["max_rel_error"] < 1e-4 and out.is_file()


def test_cli_export_checkpoint(capsys, tmp_path):
    model = create_model("binaryfacenet", embedding_size=64)
    ckpt = tmp_path / "bfn.pt"
    torch.save({"model": "binaryfacenet", "model_kwargs": {"embedding_size": 64},
                "state_dict": model.state_dict()}, ckpt)
    code, stdout, _ = run_cli(capsys, "export", str(ckpt), "-o", str(tmp_path / "b.bfp"),
                              "--check")
    assert code == 0 and "binary layers" in stdout
    assert load_packed(tmp_path / "b.bfp").run(
        np.zeros((1, 3, 112, 112), np.float32)).shape == (1, 64)
    torch.save({"weights": 1}, tmp_path / "junk.pt")
    code, _, err = run_cli(capsys, "export", str(tmp_path / "junk.pt"))
    assert code == 2 and "not a binface checkpoint" in err and err.count("\n") == 1


def test_cli_bench_json(capsys, tmp_path):
    code, stdout, _ = run_cli(capsys, "bench", "quicknet_small", "--runtime", "torch,packed",
                              "--repeats", "4", "--warmup", "1", "--rounds", "2", "--json")
    assert code == 0
    res = json.loads(stdout)
    assert res["model"] == "quicknet_small" and res["threads"] == 1 and res["batch"] == 1
    assert [r["runtime"] for r in res["results"]] == ["torch", "packed"]
    for r in res["results"]:
        assert {"median_ms", "p90_ms", "fps", "peak_rss_mb"} <= set(r)
        assert 0 < r["median_ms"] <= r["p90_ms"] and r["fps"] > 0 and r["peak_rss_mb"] > 0
    torch_rss, packed_rss = (r["peak_rss_mb"] for r in res["results"])
    assert packed_rss < torch_rss  # the packed worker never loads torch


def test_xor_popcount_peak_counts_bits():
    """The register-blocked block of the binary convs (4 pixels x BLOCK_CHANNELS dot
    products), through the peak kernel that calls it, against popcounts done here."""
    from binface.runtime.bench import popcount_peak
    from binface.runtime.kernels import BLOCK_CHANNELS, BLOCK_PIXELS, xor_popcount_peak

    rng = np.random.default_rng(3)
    nk = 7
    w = rng.integers(0, 2**63, (nk, BLOCK_CHANNELS), dtype=np.uint64)
    xs = rng.integers(0, 2**63, BLOCK_PIXELS * nk, dtype=np.uint64)
    want, x2 = 0, xs.copy()
    for r in range(5):  # after each call the kernel flips bit 0 of one input word
        sums = [sum(bin(int(x2[p * nk + k] ^ w[k, c])).count("1") for k in range(nk))
                for p in range(BLOCK_PIXELS) for c in range(BLOCK_CHANNELS)]
        want += 64 * nk - 2 * sums[r % len(sums)]  # the dot product, as the block stores it
        x2[r % x2.size] ^= np.uint64(1)
    assert xor_popcount_peak(xs, w, 5) == want and np.array_equal(xs, x2)
    assert popcount_peak(64, seconds=0.01) > 1e8  # at least 0.1 G binary MAC/s


def test_cli_bench_per_layer(capsys, small_bfp):
    code, stdout, _ = run_cli(capsys, "bench", str(small_bfp), "--runtime", "packed",
                              "--per-layer", "--repeats", "2", "--json")
    assert code == 0
    res = json.loads(stdout)
    eng = load_packed(small_bfp)
    assert len(res["layers"]) == len(eng.ops) and res["peak_gmacs_per_s"] > 0
    binary = [r for r in res["layers"] if r["macs_1bit"]]
    assert sum(r["macs_1bit"] for r in binary) == eng.summary()["binary_macs"]
    assert all(r["op"] in ("bconv", "bdwconv") and r["pct_of_peak"] > 0 for r in binary)
    assert all(r["pct_of_peak"] is None for r in res["layers"] if not r["macs_1bit"])
    assert abs(sum(r["ms"] for r in res["layers"]) - res["total_ms"]) < 1e-9
    code, stdout, _ = run_cli(capsys, "bench", str(small_bfp), "--runtime", "packed",
                              "--per-layer", "--repeats", "2")
    assert code == 0 and "% peak" in stdout and "bconv" in stdout
    code, _, err = run_cli(capsys, "bench", str(small_bfp), "--runtime", "torch,packed",
                           "--per-layer")
    assert code == 2 and "--per-layer" in err and err.count("\n") == 1


def test_cli_bench_errors(capsys, small_bfp):
    from binface.runtime.lce import lce_available

    if not lce_available():
        code, _, err = run_cli(capsys, "bench", "quicknet", "--runtime", "lce")
        assert code == 2 and "pip install 'binface[lce]'" in err and err.count("\n") == 1
        code, _, err = run_cli(capsys, "export", "quicknet", "--format", "lce", "-o",
                               str(small_bfp.with_suffix(".tflite")))
        assert code == 2 and "pip install 'binface[lce]'" in err and err.count("\n") == 1
        assert not small_bfp.with_suffix(".tflite").exists()
    code, _, err = run_cli(capsys, "bench", "quicknet", "--runtime", "torch,tpu")
    assert code == 2 and "unknown runtime 'tpu'" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "bench", str(small_bfp), "--runtime", "torch")
    assert code == 2 and "cannot run a .bfp" in err
    code, _, err = run_cli(capsys, "bench", "quiknet", "--runtime", "packed")
    assert code == 2 and "unknown model" in err


def test_measure_api(small_bfp):
    from binface.runtime import measure

    r = measure(small_bfp, "packed", repeats=3, warmup=1)
    assert r["runtime"] == "packed" and r["median_ms"] > 0
    with pytest.raises(RuntimeUnavailableError):
        measure(small_bfp, "lce")
    with pytest.raises(BinfaceError):
        measure(small_bfp, "torch")


class _TwoHeads(nn.Module):
    """One float map read by two binary convs of different padding, and binary tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(6, 40, 3, padding=1)
        self.a = BinaryConv2d(40, 24, 3, padding="same", pad_values=0.0, bias=True)
        self.b = BinaryConv2d(40, 24, 1, input_quantizer=DoReFa(1, "weights"))
        self.tok = QuantLinear(24, 10, bias=True, input_quantizer=SteSign(),
                               kernel_quantizer=SteSign())

    def forward(self, x):
        h = self.stem(x)
        y = torch.relu(self.a(h)) + self.b(h)
        return self.tok(y.flatten(2).transpose(1, 2))  # (N, HW, 10): binary dense on tokens


def test_shared_input_and_token_dense(tmp_path):
    torch.manual_seed(8)
    model = _TwoHeads()
    eng, y, recs, ref = run_both(model, (6, 5, 7), tmp_path)
    assert y.shape == (2, 35, 10)
    assert check_layers_exact(model, recs) == 3
    assert rel_err(y, ref) < 1e-5


def test_blas_threads_set_without_threadpoolctl():
    """The engine holds numpy's OpenBLAS to one thread through OpenBLAS's own setter
    (threadpoolctl is not a runtime dependency); its getter must then say 1."""
    import ctypes

    from binface.runtime import engine as E

    found = []
    if not Path("/proc/self/maps").is_file():
        pytest.skip("no /proc/self/maps (not Linux)")
    with open("/proc/self/maps") as fh:
        paths = {ln.split()[-1] for ln in fh if "openblas" in ln.lower()
                 and ln.split()[-1].startswith("/")}
    for path in paths:
        lib = ctypes.CDLL(path)
        get = getattr(lib, "scipy_openblas_get_num_threads64_", None) or getattr(
            lib, "openblas_get_num_threads", None)
        if get is not None:
            found.append(get)
    if not found:
        pytest.skip("numpy is not linked against OpenBLAS here")
    before = found[0]()
    try:
        assert E._openblas_threads(1) is True
        assert all(get() == 1 for get in found)
    finally:
        E._openblas_threads(before)


def test_time_jobs_of_no_jobs_and_bad_thread_counts():
    """No jobs: nothing to time; a job's own thread count must be positive too."""
    from binface.errors import BinfaceError
    from binface.runtime.bench import Job, time_jobs

    assert time_jobs([]) == []
    for bad in ({"threads": 0}, {"threads": -1}, {"batch": 0}):
        with pytest.raises(BinfaceError, match="must be positive"):
            time_jobs([Job("packed", "x.bfp", **bad)])


def test_time_jobs_from_another_source_tree(small_bfp, tmp_path):
    """Job.src: the worker imports binface from that tree (a before / after comparison
    in one run); a folder without binface/runtime is refused in one line."""
    from binface.runtime.bench import Job, time_jobs

    this = str(Path(__file__).resolve().parents[1] / "src")
    res = time_jobs([Job("packed", str(small_bfp)), Job("packed", str(small_bfp), src=this)],
                    repeats=2, rounds=1)
    assert all(r["median_ms"] > 0 for r in res)
    fake = tmp_path / "fake"  # a tree whose binface cannot import: its worker must fail
    (fake / "binface" / "runtime").mkdir(parents=True)
    (fake / "binface" / "__init__.py").write_text("raise ImportError('the other tree')\n")
    with pytest.raises(BinfaceError, match="the other tree"):
        time_jobs([Job("packed", str(small_bfp), src=str(fake))], repeats=1)
    with pytest.raises(BinfaceError, match="not a binface source folder") as err:
        time_jobs([Job("packed", str(small_bfp), src=str(tmp_path))], repeats=1)
    _one_line(err.value)



def _omp_layer() -> bool:
    """Whether numba's threads here are an OpenMP team (after one parallel launch)."""
    import numba
    from numba import njit, prange

    @njit(parallel=True)
    def touch(a):
        for i in prange(a.shape[0]):
            a[i] = i

    touch(np.zeros(4))
    return numba.threading_layer() == "omp"


@pytest.mark.parametrize("name", ["binaryfacenet", "quicknet_small", "binaryfaceformer_add",
                                  "mobilefacenet", "binary_densenet28"])
def test_repeated_runs_match_fresh_engines(name, tmp_path):
    """Convs, binary ops, element-wise chains and pools replay their last calls when
    their inputs are the same objects as last run (kept buffers, views of the input):
    new images, a new batch size and a trace run in between must all give what a
    fresh engine gives."""
    torch.manual_seed(0)
    export_packed(randomize_bn(create_model(name)), tmp_path / "m.bfp")
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((n, 3, 112, 112), dtype=np.float32) for n in (1, 1, 3, 1)]
    eng = load_packed(tmp_path / "m.bfp")
    for i, x in enumerate(xs):
        if i == 3:
            eng.run(x, trace=True)  # fresh buffers, no replay, then back to the kept ones
        want = load_packed(tmp_path / "m.bfp").run(x)
        assert np.array_equal(eng.run(x), want)
        x *= -1  # the same array object with new values: replayed calls read them
        assert np.array_equal(eng.run(x), load_packed(tmp_path / "m.bfp").run(x))
    # packs, concatenation chains, the squeeze-excite gate (a kept sigmoid, the gated
    # stem), reshapes and the additive attention's float ops replay too: every op does
    assert eng._flat is not None and eng._flat[0] is xs[-1]


@pytest.mark.parametrize("name", ["quicknet_small", "binary_densenet28", "binaryfaceformer_sep"])
def test_shared_float_maps_match_fresh_buffers(name, tmp_path):
    """Conv outputs whose lives do not overlap share buffers (``share_float_maps``); a
    trace run gives every op fresh arrays, so the two must agree bit for bit, on
    residual chains, DenseNet concatenations and attention's views alike."""
    torch.manual_seed(0)
    export_packed(randomize_bn(create_model(name)), tmp_path / "m.bfp")
    eng = load_packed(tmp_path / "m.bfp")
    owners = [op for op in eng.ops if getattr(op, "_slot", None)]
    slots = [op._slot[1] for op in owners]
    assert len(set(slots)) < len(slots)  # some buffer is shared
    if name == "quicknet_small":  # across shapes: a later stage writes over an earlier one's
        shapes = {}
        for op in owners:
            shapes.setdefault(op._slot[1], set()).add(str(op.out_shape))
        assert max(len(v) for v in shapes.values()) > 1
        # on several threads only maps of one shape share (each core keeps its half)
        two = load_packed(tmp_path / "m.bfp", threads=2)
        shapes = {}
        for op in two.ops:
            if getattr(op, "_slot", None):
                shapes.setdefault(op._slot[1], set()).add(str(op.out_shape))
        assert max(len(v) for v in shapes.values()) == 1
    x = np.random.default_rng(3).standard_normal((2, 3, 112, 112), dtype=np.float32)
    y = eng.run(x)
    assert np.array_equal(eng.run(x, trace=True)[0], y) and np.array_equal(eng.run(x), y)
    x1 = x[:1].copy()  # another batch size: the shared buffers grow or are viewed anew
    assert np.array_equal(eng.run(x1), load_packed(tmp_path / "m.bfp").run(x1))
    assert np.array_equal(eng.run(x), y)


def test_pad_in_place_skips_the_copy_and_keeps_the_bits(tmp_path):
    """A pool or stem conv feeding a conv that pads its input writes straight inside
    that conv's padded buffer (``pad_in_place``): the conv's copy is gone from its
    calls, and the outputs equal a trace run's (fresh arrays, copies) bit for bit,
    at two batch sizes and on two threads."""
    torch.manual_seed(0)
    export_packed(randomize_bn(create_model("quicknet_small")), tmp_path / "m.bfp")
    rng = np.random.default_rng(5)
    for threads in (1, 2):
        eng = load_packed(tmp_path / "m.bfp", threads=threads)
        pairs = [(op, op._into) for op in eng.ops if getattr(op, "_into", None) is not None]
        assert len(pairs) >= 3  # the three transitions' max-pools -> depthwise convs
        for n in (1, 3, 1):
            x = rng.standard_normal((n, 3, 112, 112), dtype=np.float32)
            y = eng.run(x)
            assert np.array_equal(eng.run(x), y)  # replayed
            for _, conv in pairs:
                names = [getattr(fn, "__name__", "") for fn, _ in conv._fast[2]]
                assert not any(name.startswith("pad_nhwc") for name in names), names
            assert np.array_equal(eng.run(x, trace=True)[0], y)


def test_flat_replay_reads_the_input_and_falls_back(tmp_path):
    """On the same input array as last run, an engine whose ops all replay issues last
    run's kernel calls in one list (``_flat``): new values in that array give new
    outputs, and another array, batch size or a trace run takes the normal path."""
    torch.manual_seed(0)
    export_packed(randomize_bn(create_model("quicknet_small")), tmp_path / "m.bfp")
    eng = load_packed(tmp_path / "m.bfp")
    ref = load_packed(tmp_path / "m.bfp", fuse=False)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 112, 112), dtype=np.float32)
    eng.run(x)
    assert np.array_equal(eng.run(x), ref.run(x)) and eng._flat is not None
    for _ in range(2):
        x[...] = rng.standard_normal(x.shape, dtype=np.float32)  # same object
        assert eng._flat[0] is x
        assert np.array_equal(eng.run(x), ref.run(x.copy()))
    x.shape = (1, 6, 112, 112)  # the same object reshaped in place: refused, not replayed
    with pytest.raises(InputShapeError):
        eng.run(x)
    x.shape = (2, 3, 112, 112)
    y1 = x[:1].copy()
    assert np.array_equal(eng.run(y1), ref.run(y1))  # another batch: normal path
    assert np.array_equal(eng.run(x, trace=True)[0], ref.run(x))
    assert np.array_equal(eng.run(x), ref.run(x))


def test_replay_does_not_reuse_a_copied_residual(tmp_path):
    """A residual that had to be copied to channels-last (here the NCHW model input
    itself) is not replayed: the copy would hold last run's values."""

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = BinaryConv2d(8, 8, 3, padding="same")

        def forward(self, x):
            return self.conv(x) + x

    torch.manual_seed(0)
    export_packed(Res().eval(), tmp_path / "r.bfp", input_size=(6, 6), channels=8)
    eng = load_packed(tmp_path / "r.bfp")
    assert any(getattr(op, "nres", 0) for op in eng.ops)  # the add is fused: a residual
    x = np.random.default_rng(0).standard_normal((1, 8, 6, 6), dtype=np.float32)
    for _ in range(3):
        assert np.array_equal(eng.run(x), load_packed(tmp_path / "r.bfp").run(x))
        x *= -1.5  # same object, new values


@pytest.mark.parametrize("width", [1, 15, 16, 17, 40])
def test_rgb_pad_copy_interleaves_every_width(width):
    """The RGB input's padded channels-last copy (vector shuffles for 16 pixels at a
    time, then one by one) equals numpy's, for widths around the vector length."""
    from binface.runtime import kernels

    x = np.random.default_rng(width).standard_normal((2, 3, 5, width), dtype=np.float32)
    xp = np.full((2, 7, width + 2, 3), 9.0, np.float32)
    kernels.pad_nhwc(x.transpose(0, 2, 3, 1), xp, 1, 1, 1)
    want = np.full_like(xp, 9.0)
    want[:, 1:6, 1:width + 1] = x.transpose(0, 2, 3, 1)
    assert np.array_equal(xp, want)


def test_weights_and_buffers_start_on_a_cache_line(tmp_path):
    from binface.runtime.ops.layout import ALIGN, aligned_copy, aligned_empty

    for shape, dt in (((3, 5), np.float32), ((1,), np.uint64), ((7, 1, 3), np.int32)):
        a = aligned_empty(shape, dt, zero=True)
        assert a.shape == shape and a.dtype == dt and a.ctypes.data % ALIGN == 0
        assert a.flags.c_contiguous and a.flags.writeable and not a.any()
    big = np.arange(10, dtype=">f4")  # a big-endian source comes back native
    b = aligned_copy(big)
    assert b.dtype.isnative and np.array_equal(b, big) and b.ctypes.data % ALIGN == 0
    path = tmp_path / "m.bfp"
    export_packed(nn.Sequential(BinaryConv2d(64, 32, 3, padding="same")).eval(), path,
                  input_size=(7, 7), channels=64)
    _, tensors = read_bfp(path)
    assert all(t.ctypes.data % ALIGN == 0 for t in tensors.values())
    eng = load_packed(path)
    eng.run(np.zeros((1, 64, 7, 7), np.float32))
    blocks = [op.wblk for op in eng.ops if getattr(op, "wblk", None) is not None
              and op.wblk.size > 1]
    assert blocks and all(w.ctypes.data % ALIGN == 0 for w in blocks)
    bufs = [a for op in eng.ops for a in op.__dict__.get("_bufs", {}).values()]
    assert bufs and all(a.ctypes.data % ALIGN == 0 for a in bufs)


@pytest.mark.skipif(not _omp_layer(), reason="regions need numba's OpenMP threading layer")
@pytest.mark.parametrize("name,batches", [("quicknet_small", (1,)),
                                          ("binaryfacenet", (2,))])
def test_parallel_regions_match_one_thread(name, batches, tmp_path, monkeypatch):
    """On 2 threads, from the REGION_AFTER-th replay on, the flat replay's runs of
    kernels go as parallel regions (chunk variants between spin barriers, one launch a
    run): the bits equal a 1-thread engine's for new values in the same array, at
    each batch size. Every call of both models is a kernel (BinaryFaceNet's gate sigmoid
    too), so each makes one region."""
    from binface.runtime.engine import REGION_AFTER
    from binface.runtime.region import Region

    torch.manual_seed(0)
    export_packed(randomize_bn(create_model(name)), tmp_path / "m.bfp")
    one = load_packed(tmp_path / "m.bfp", threads=1)
    two = load_packed(tmp_path / "m.bfp", threads=2)
    rng = np.random.default_rng(11)
    for n in batches:
        x = rng.standard_normal((n, 3, 112, 112), dtype=np.float32)
        for i in range(REGION_AFTER + 3):
            x[...] = rng.standard_normal(x.shape, dtype=np.float32)
            assert np.array_equal(two.run(x), one.run(x.copy())), (n, i)
            plan = two.__dict__.get("_plan")
            built = plan is not None and plan[0] is two._flat
            assert built == (i >= REGION_AFTER), (n, i)  # run 0 records, 1.. replay
        regions = [fn for fn, _ in plan[1] if isinstance(fn, Region)]
        assert len(regions) == 1 and len(plan[1]) == 1
        assert not any(r.aborts for r in regions)  # their chunks ran at once
    if name == "quicknet_small":
        # the chunking trial (region.TRIAL_EVERY runs apart): the region keeps the choice
        # of chunks per thread that ran faster, here by a fake clock, and the bits stay
        from binface.runtime import region as reg

        r = regions[0]
        fast = {"k": 4}
        clock = {"t": 0, "start": True}

        def fake_ns() -> int:
            if not clock["start"]:
                clock["t"] += 50 if r._cut == fast["k"] else 100
            clock["start"] = not clock["start"]
            return clock["t"]

        monkeypatch.setattr(reg, "perf_counter_ns", fake_ns)
        for k, trials in ((4, r.trials + 1), (1, r.trials + 2)):
            fast["k"] = k
            r._runs = 0  # a trial next
            for _ in range(reg.TRIAL_RUNS * len(reg.CHUNK_CHOICES) + 2):
                x[...] = rng.standard_normal(x.shape, dtype=np.float32)
                assert np.array_equal(two.run(x), one.run(x.copy())), k
            assert r.chunks == k and r.trials == trials and not r.aborts
            assert (r.words[r._nt_at] == 2 * k).all()  # the kernels' chunk counts
    two.regions = False  # the plain launches again: the same bits
    assert np.array_equal(two.run(x), one.run(x))
    if name == "binaryfacenet":
        # a region whose chunks cannot all run at once (here: numba on one thread, so
        # one thread would run both chunks in turn) must not hang: its start times out,
        # no kernel runs, and the region makes the plain calls from then on
        import numba

        region = regions[0]
        before = [np.array(a, copy=True) for a in two._flat[4]]
        x[...] = rng.standard_normal(x.shape, dtype=np.float32)
        want = one.run(x.copy())
        from binface.runtime.region import ABORT_AFTER

        numba.set_num_threads(1)
        try:
            for _ in range(ABORT_AFTER):
                for fn, args in plan[1]:
                    fn(*args)
        finally:
            numba.set_num_threads(2)
        assert region.aborted and region.aborts == ABORT_AFTER
        assert np.array_equal(two._flat[4][0], want) and not np.array_equal(before[0], want)
        two.regions = True
        assert np.array_equal(two.run(x), want)  # the aborted region's plain calls


@pytest.mark.skipif(not _omp_layer(), reason="regions need numba's OpenMP threading layer")
def test_region_barrier_orders_the_threads_phases():
    """Each thread writes its slot of a phase, waits at the barrier, then reads every
    slot of that phase: all must be there, over many phases and generations."""
    import numba
    from numba import njit, prange

    from binface.runtime.region import BAR_WORDS, _barrier

    @njit(parallel=True)
    def phases(bar, seen, nt, k):
        for ch in prange(nt):
            gen = bar[8]
            for p in range(k):
                seen[p, ch] = p + 1
                gen = _barrier(bar, nt, gen)
                for o in range(nt):
                    if seen[p, o] != p + 1:
                        seen[p, nt + ch] = -1

    nt = numba.get_num_threads()
    bar = np.zeros(BAR_WORDS, np.int64)
    for _ in range(3):
        seen = np.zeros((500, 2 * nt), np.int64)
        phases(bar, seen, nt, 500)
        assert (seen[:, :nt] == np.arange(1, 501)[:, None]).all()
        assert (seen[:, nt:] == 0).all()
    assert bar[8] == 1500 and bar[0] == 0


@pytest.mark.skipif(not _omp_layer(), reason="regions need numba's OpenMP threading layer")
@pytest.mark.parametrize("late", [True, False])
def test_region_chunks_are_claimed_once(late):
    """A row kernel's chunk variant claims its chunks (``kernels._thread_chunk``): each
    thread its own share front to back, then what is left of the other's from the back.
    Every chunk runs once; a thread that comes late finds its share done by the other
    (here thread 1 starts only when thread 0 is through)."""
    import numba
    from numba import njit, prange

    from binface.runtime.kernels import _thread_chunk, reset_chunks
    from binface.runtime.region import _atomic_load, _atomic_store

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 numba threads")

    @njit(parallel=True)
    def claim(runs, order, flag, nt, late):
        for _ in prange(2):
            t = numba.get_thread_id()
            spins = 0
            while late and t == 1 and _atomic_load(flag, 0) == 0 and spins < 1 << 30:
                spins += 1
            for k, c in enumerate(_thread_chunk(nt)):
                runs[c] += 1
                order[t, k] = c
            if t == 0:
                _atomic_store(flag, 0, 1)

    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        for nt in (8, 7, 2):
            runs = np.zeros(nt, np.int64)
            order = np.full((2, nt + 1), -1, np.int64)
            reset_chunks(2)
            claim(runs, order, np.zeros(8, np.int64), nt, late)
            assert (runs == 1).all(), (nt, runs)
            h = nt // 2
            if late:  # thread 0: its share, then thread 1's from the back
                assert list(order[0, :nt]) == [*range(h), *range(nt - 1, h - 1, -1)]
                assert (order[1] == -1).all()
            for t, (lo, hi) in enumerate(((0, h), (h, nt))):
                own = [c for c in order[t] if lo <= c < hi]
                assert own == sorted(own) or t == 1 and late
    finally:
        numba.set_num_threads(before)


def test_batches_in_passes_match_one_run(tmp_path):
    """On several threads a batch larger than ``tile`` runs in passes of ``tile``
    images through one kept input array (the last pass padded): the bits equal one
    run over the whole batch and the 1-thread engine's, at two batch sizes in turn,
    and the caller's array is left as it was."""
    torch.manual_seed(0)
    export_packed(randomize_bn(create_model("quicknet_small")), tmp_path / "m.bfp")
    one = load_packed(tmp_path / "m.bfp", threads=1)
    two = load_packed(tmp_path / "m.bfp", threads=2)
    whole = load_packed(tmp_path / "m.bfp", threads=2)
    whole.tile = 0
    assert two.tile == 2 and one.tile == 0
    rng = np.random.default_rng(13)
    for n in (5, 3):
        x = rng.standard_normal((n, 3, 112, 112), dtype=np.float32)
        keep = x.copy()
        y = two.run(x)
        assert y.shape[0] == n and np.array_equal(x, keep)
        assert np.array_equal(y, one.run(x)) and np.array_equal(y, whole.run(x))
        assert two._tile_in.shape[0] == 2 and two._flat[0] is two._tile_in
    assert not two.__dict__.get("_no_flat")
    # a model whose ops do not all keep their calls (a layer norm's fresh numpy arrays)
    # goes back to whole batches after one tiled call, with the same bits
    graph, tensors = lower(capture(_LayerNormed().eval(), (4, 5), channels=3))
    two, one = PackedEngine(graph, tensors, threads=2), PackedEngine(graph, tensors)
    x = rng.standard_normal((3, 3, 4, 5), dtype=np.float32)
    for _ in range(2):
        assert np.array_equal(two.run(x), one.run(x))
    assert two._no_flat and two.__dict__.get("_flat") is None


class _LayerNormed(nn.Module):
    def forward(self, x):
        return F.layer_norm(x * 2.0, (5,))
