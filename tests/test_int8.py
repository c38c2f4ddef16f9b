"""8-bit models: ONNX Runtime static int8 (QDQ), quantisation-aware training, int8 counting."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from binface.cli import main
from binface.compare import cpu_simd
from binface.errors import BinfaceError
from binface.models import create_model
from binface.models.loading import load_model
from binface.nn.qat import is_qat, qat_layers
from binface.profile import profile
from binface.runtime import export_onnx, export_onnx_int8, load_onnx
from binface.runtime.int8 import calibration_images, int8_summary
from binface.train.config import load_config
from binface.train.loop import Trainer
from helpers import RandomFaces, register_test_models

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A tiny synthetic benchmark: a .rec of 32 faces and packs of 20 pairs."""
    from binface.data.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, identities=8, images_per_identity=4, pairs=20, workers=1, progress=False)
    return out


def _has_vnni() -> bool:
    """x86 CPUs without VNNI run ORT's U8S8 convs through vpmaddubsw, whose int16 pair sums
    saturate (ORT's quantisation docs; their cure is reduce_range), so int8 agrees less
    with fp32 there: the bounds below are looser on such a host."""
    simd = cpu_simd()
    # ARM (no avx2) has its own dot products; unreadable flags count as VNNI (strict bounds)
    return "avx2" not in simd or "avx512_vnni" in simd or "avx_vnni" in simd


VNNI = _has_vnni()


def _faces(path, n=40):
    faces = calibration_images(path, (112, 112), n)
    return (faces.transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 127.5


def _unit(e):
    return e / np.linalg.norm(e, axis=1, keepdims=True)


# ---------------------------------------------------------------- post-training static int8
def test_ptq_export_is_int8_qdq_and_agrees_with_fp32(synth, tmp_path):
    torch.manual_seed(0)
    model = create_model("mobilefacenet")  # default init (see docs/int8.md for a trained one)
    info = export_onnx_int8(model, tmp_path / "m8.onnx", calibrate=synth / "train.rec",
                            images=32)
    assert info["mode"] == "ptq" and info["calibration_images"] == 32
    proto = onnx.load(str(tmp_path / "m8.onnx"))
    g = proto.graph
    ops = [n.op_type for n in g.node]
    assert ops.count("QuantizeLinear") > 40 and ops.count("DequantizeLinear") > 40
    int8 = {i.name for i in g.initializer if i.data_type == onnx.TensorProto.INT8}
    convs = [n for n in g.node if n.op_type == "Conv"]
    weight_of = {n.output[0]: n.input[0] for n in g.node if n.op_type == "DequantizeLinear"}
    assert len(convs) >= 49 and all(weight_of.get(c.input[1]) in int8 for c in convs)
    dq = next(n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in int8
              and numpy_helper.to_array(
                  next(i for i in g.initializer if i.name == n.input[1])).size > 1)
    assert dq  # a per-channel weight scale
    assert info["float_weight_ops"] == 0 and int8_summary(proto)["int8_weights"] >= 49
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["binface.precision"] == "int8" and meta["binface.binary"] == "0"

    export_onnx(model, tmp_path / "m32.onnx")
    x = _faces(synth / "synth_lfw.bin")  # faces that were not calibrated on
    fp32 = _unit(load_onnx(tmp_path / "m32.onnx").run(x))
    q8 = _unit(load_onnx(tmp_path / "m8.onnx").run(x))  # the runner bench and eval use
    cos = (fp32 * q8).sum(1)
    assert cos.min() >= (0.98 if VNNI else 0.97), cos.min()
    # and closer to its own fp32 embedding than to any other face's
    assert ((q8 @ fp32.T).argmax(1) == np.arange(len(x))).all()


def test_reduce_range_holds_7_bit_weights_and_agrees_on_any_x86(synth, tmp_path):
    """ORT's remedy for CPUs without VNNI: 7-bit weights cannot saturate vpmaddubsw's
    int16 pair sums, so the strict bound holds on every host (0.973 -> 0.987 measured on
    an AVX2-only EPYC)."""
    torch.manual_seed(0)
    model = create_model("mobilefacenet")
    info = export_onnx_int8(model, tmp_path / "r8.onnx", calibrate=synth / "train.rec",
                            images=32, reduce_range=True)
    assert info["weight_bits"] == 7
    g = onnx.load(str(tmp_path / "r8.onnx")).graph
    w = [numpy_helper.to_array(i).astype(np.int64) for i in g.initializer
         if i.data_type == onnx.TensorProto.INT8]
    assert len(w) >= 49 and max(np.abs(a).max() for a in w) <= 64
    export_onnx(model, tmp_path / "r32.onnx")
    x = _faces(synth / "synth_lfw.bin")
    cos = (_unit(load_onnx(tmp_path / "r32.onnx").run(x))
           * _unit(load_onnx(tmp_path / "r8.onnx").run(x))).sum(1)
    assert cos.min() >= 0.98, cos.min()


def test_cli_export_int8_from_a_pack_and_a_folder(synth, tmp_path, capsys):
    out = tmp_path / "m8.onnx"
    args = ["export", "mobilefacenet", "--format", "onnx", "--int8", "--calibrate",
            str(synth / "synth_lfw.bin"), "--calibration-images", "8", "-o", str(out)]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"wrote {out}: int8 ONNX (QDQ") and "calibrated on 8 images" in line
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    folder = tmp_path / "faces" / "someone"
    folder.mkdir(parents=True)
    images, _ = _pack_images(synth / "synth_lfw.bin", 3)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i}.png")
    faces = calibration_images(tmp_path / "faces", (112, 112), 5)
    assert faces.shape == (3, 112, 112, 3) and (faces == images).all()


def _pack_images(path, n):
    faces = calibration_images(path, (112, 112), n)
    return faces, len(faces)


def _one_line_error(capsys, args, match):
    assert main(args) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and len(cap.err.strip().splitlines()) == 1, cap.err
    assert match in cap.err, cap.err
    return cap.err


def test_bad_calibration_input_is_one_line(synth, tmp_path, capsys):
    base = ["export", "mobilefacenet", "--format", "onnx", "--int8", "-o",
            str(tmp_path / "x.onnx"), "--calibrate"]
    _one_line_error(capsys, base + [str(tmp_path / "nowhere.rec")],
                    "calibration data not found")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, base + [str(tmp_path / "empty")], "no identity subfolders")
    small = tmp_path / "small" / "a"
    small.mkdir(parents=True)
    Image.new("RGB", (96, 96)).save(small / "0.png")
    _one_line_error(capsys, base + [str(tmp_path / "small")], "takes 112x112")
    for n in ("0", "-3"):
        _one_line_error(capsys, base + [str(synth / "train.rec"), "--calibration-images", n],
                        "must be a positive integer")
    _one_line_error(capsys, base[:-1], "needs calibration data")
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(BinfaceError, match="must be a positive integer"):
        export_onnx_int8("mobilefacenet", tmp_path / "y.onnx", calibrate=synth, images=0)


def test_int8_option_errors_and_binary_models_are_refused(synth, tmp_path, capsys):
    out = str(tmp_path / "b.onnx")
    _one_line_error(capsys, ["export", "mobilefacenet", "--int8", "-o", out],
                    "--int8 needs --format onnx")
    _one_line_error(capsys, ["export", "mobilefacenet", "--format", "onnx", "--calibrate",
                             str(synth), "-o", out], "go with --int8")
    _one_line_error(capsys, ["export", "mobilefacenet", "--format", "onnx", "--reduce-range",
                             "-o", out], "--reduce-range goes with --format onnx --int8")
    err = _one_line_error(capsys, ["export", "binaryfacenet", "--format", "onnx", "--int8",
                                   "--calibrate", str(synth / "train.rec"), "-o", out],
                          "binaryfacenet is a binary model")
    assert "--format packed" in err
    assert not (tmp_path / "b.onnx").exists()


# ---------------------------------------------------------------- quantisation-aware training
def _cfg(out, *overrides):
    return load_config(None, [f"output={out}", "model=test_tiny", "train.batch_size=8",
                              "train.epochs=2", "train.log_every=1", "optim.name=sgd",
                              "optim.lr=0.1", "head.s=16", "train.qat=int8", *overrides])


def _losses(trainer):
    return [(h["step"], h["loss"]) for h in trainer.history if "loss" in h]


@pytest.fixture(scope="module")
def qat_runs(tmp_path_factory):
    """A 12-step QAT run, and the same run stopped after 4 steps and resumed."""
    register_test_models()
    tmp = tmp_path_factory.mktemp("qat")
    full = Trainer(_cfg(tmp / "a"), model=create_model("test_tiny"), train_set=RandomFaces(),
                   progress=False)
    full.fit()
    first = Trainer(_cfg(tmp / "b", "train.max_steps=4"), model=create_model("test_tiny"),
                    train_set=RandomFaces(), progress=False)
    first.fit()
    second = Trainer(_cfg(tmp / "b"), model=create_model("test_tiny"), train_set=RandomFaces(),
                     resume=True, progress=False)
    second.fit()
    return full, first, second, tmp


def test_qat_trains_fake_quantised_and_resumes_exactly(qat_runs):
    full, first, second, tmp = qat_runs
    assert [n for n, _ in qat_layers(full.model)] == ["conv", "fc"]
    curve = dict(_losses(full))
    assert len(curve) == 12
    assert dict(_losses(first) + _losses(second)) == curve  # bit-for-bit
    a, b = full.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys() and any("input_fake_quant.scale" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert float(full.model.conv.input_fake_quant.scale) != 1.0  # ranges were observed
    # a QAT checkpoint loads (strictly, weights only) with its learned scales, in eval mode
    lm = load_model(tmp / "a" / "last.pt")
    assert is_qat(lm.model) and not lm.model.training
    x = torch.randn(3, 3, 112, 112)
    full.model.eval()
    with torch.no_grad():
        assert torch.equal(lm.model(x), full.model(x))
        lm.model(x)  # evaluation does not move the observed ranges
    assert torch.equal(lm.model.conv.input_fake_quant.scale, full.model.conv.input_fake_quant.scale)
    with pytest.raises(BinfaceError, match="train.qat=int8, the config says none"):
        Trainer(_cfg(tmp / "b", "train.qat=none"), model=create_model("test_tiny"),
                train_set=RandomFaces(), resume=True, progress=False)


def test_qat_checkpoint_exports_int8_with_its_learned_scales(qat_runs, tmp_path, capsys):
    full, _, _, tmp = qat_runs
    out = tmp_path / "q.onnx"
    assert main(["export", str(tmp / "a" / "last.pt"), "--format", "onnx", "--int8",
                 "-o", str(out)]) == 0
    assert "learned QAT scales, no calibration data read" in capsys.readouterr().out
    _one_line_error(capsys, ["export", str(tmp / "a" / "last.pt"), "-o",
                             str(tmp_path / "q.bfp")], "--format onnx --int8")
    _one_line_error(capsys, ["export", str(tmp / "a" / "last.pt"), "--format", "onnx",
                             "--int8", "--reduce-range", "-o", str(tmp_path / "r.onnx")],
                    "keeps the 8-bit scales it learned")
    proto = onnx.load(str(out))
    g = proto.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    q = [n for n in g.node if n.op_type == "QuantizeLinear"]
    dq_w = [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(q) == 2 and len(dq_w) == 2  # the two inputs; the two weights stored as int8
    assert all(inits[n.input[0]].dtype == np.int8 for n in dq_w)
    model = full.model.eval()
    act = sorted(float(inits[n.input[1]].reshape(-1)[0]) for n in q)
    learned = sorted(float(m.input_fake_quant.scale) for _, m in qat_layers(model))
    assert np.allclose(act, learned, rtol=1e-6)
    conv_w = next(n for n in dq_w if inits[n.input[0]].ndim == 4)
    assert np.allclose(inits[conv_w.input[1]], model.conv.weight_fake_quant.scale.numpy())
    x = np.random.default_rng(0).standard_normal((4, 3, 112, 112)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = load_onnx(out).run(x)
    assert (_unit(ref) * _unit(got)).sum(1).min() > (0.999 if VNNI else 0.99)


# ---------------------------------------------------------------- accounting
def test_profile_counts_int8_as_8_bit(qat_runs, capsys):
    model = create_model("mobilefacenet")
    fp = profile(model).totals
    p8 = profile(model, precision="int8")
    t = p8.totals
    assert t["macs_kbit"] == fp["macs_32bit"] and t["macs_32bit"] == 0 and p8.kbit_widths == [8]
    assert t["params_kbit"] == 976_000 and t["memory_kib"] < fp["memory_kib"] / 3
    assert not is_qat(model)  # counted on a copy
    _, _, _, tmp = qat_runs
    assert main(["profile", str(tmp / "a" / "last.pt"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kbit_widths"] == [8] and d["macs_32bit"] == 0 and d["macs_kbit"] > 0
    # a QAT checkpoint counts as its float model counted at --precision int8
    same = profile(create_model("test_tiny"), precision="int8").totals
    assert {k: d[k] for k in same} == same
    assert same["params_32bit"] == 4 + 16 + (4 + 1) + (16 + 1)  # biases, scales
    assert main(["profile", "mobilefacenet", "--precision", "int8"]) == 0
    assert "(8-bit)" in capsys.readouterr().out


# ---------------------------------------------------------------- the onnx-int8 runtime
def test_onnx_int8_is_a_runtime_of_bench_and_compare(synth, tmp_path, capsys):
    from binface.compare import render_markdown, run_compare

    assert main(["bench", "mobilefacenet", "--runtime", "onnx,onnx-int8", "--repeats", "3",
                 "--warmup", "1", "--rounds", "1", "--calibrate", str(synth / "train.rec"),
                 "--json"]) == 0
    rows = {r["runtime"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert rows["onnx-int8"]["median_ms"] > 0 and rows["onnx"]["median_ms"] > 0
    # no calibration data: timed on a noise-calibrated graph; a binary model gets a note
    res = run_compare(["mobilefacenet", "binaryfacenet"], runtimes="onnx-int8", repeats=2,
                      warmup=1, rounds=1, progress=False)
    mfn, bfn = res["rows"]
    assert mfn["latency"]["onnx-int8"]["median_ms"] > 0
    assert "binary model" in bfn["latency"]["onnx-int8"]["error"]
    assert "onnx-int8 ms" in render_markdown(res)


def test_train_init_starts_qat_from_a_float_checkpoint(tmp_path):
    """train.init: the float run's weights and class centres start the QAT run."""
    register_test_models()
    fl = Trainer(_cfg(tmp_path / "f", "train.qat=none", "train.max_steps=2"),
                 model=create_model("test_tiny"), train_set=RandomFaces(), progress=False)
    fl.fit()
    ck = tmp_path / "f" / "last.pt"
    q = Trainer(_cfg(tmp_path / "q", f"train.init={ck}"), model=create_model("test_tiny"),
                train_set=RandomFaces(), progress=False)
    state = q.model.state_dict()
    for k, v in fl.model.state_dict().items():
        assert torch.equal(state[k], v), k
    assert torch.equal(q.head.weight.detach(), fl.head.weight.detach())
    assert is_qat(q.model) and q.step == 0
    q.fit()
    assert is_qat(load_model(tmp_path / "q" / "last.pt").model)
    with pytest.raises(BinfaceError, match="holds model 'test_tiny'"):
        Trainer(_cfg(tmp_path / "x", f"train.init={ck}", "model=mobilefacenet"),
                train_set=RandomFaces(), progress=False)


# ---------------------------------------------------------------- what ONNX Runtime runs
def _optimized_ops(path, tmp_path) -> dict:
    """Op counts of the graph ONNX Runtime actually runs (after its fusions)."""
    import collections

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    graph = onnx.load(opts.optimized_model_filepath).graph
    return collections.Counter(n.op_type for n in graph.node)


def test_prelu_is_decomposed_exactly():
    from onnx import TensorProto, helper

    from binface.runtime.onnx_rt import decompose_prelu

    rng = np.random.default_rng(0)
    slope = rng.standard_normal((5, 1, 1)).astype(np.float32)  # any sign, even > 1
    g = helper.make_graph([helper.make_node("PRelu", ["x", "a"], ["y"], name="p")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 3, 4])],
                          [numpy_helper.from_array(slope, "a")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, 5, 3, 4)).astype(np.float32)
    x[0, 0, 0, :3] = [0.0, -0.0, -1e-40]  # zeros and a subnormal
    import onnxruntime as ort

    def run(m):
        return ort.InferenceSession(m.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    ref = run(model)
    assert decompose_prelu(model.graph) == 1
    assert [n.op_type for n in model.graph.node] == ["Relu", "Min", "Mul", "Add"]
    assert np.array_equal(run(model), ref)  # bit for bit


def test_float_export_has_no_prelu_and_int8_convs_run_as_qlinearconv(synth, tmp_path):
    torch.manual_seed(0)
    model = create_model("mobilefacenet")
    export_onnx(model, tmp_path / "m32.onnx")
    assert "PRelu" not in {n.op_type for n in onnx.load(str(tmp_path / "m32.onnx")).graph.node}
    export_onnx_int8(model, tmp_path / "m8.onnx", calibrate=synth / "train.rec", images=16)
    ops = _optimized_ops(tmp_path / "m8.onnx", tmp_path)
    # U8S8: every conv becomes an integer QLinearConv (with int8 activations ORT's
    # S8-to-U8 rewrite leaves the convs before a decomposed PReLU in float)
    assert ops["QLinearConv"] >= 45 and ops["Conv"] == 0, ops


class _ConvBNNet(torch.nn.Module):
    """conv-BN-PReLU twice, then a dense layer: the shape of MobileFaceNet's blocks."""

    def __init__(self) -> None:
        super().__init__()
        from binface.nn.norm import BatchNorm2d
        from binface.nn.prelu import PReLU

        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=4, padding=1, bias=False), BatchNorm2d(8), PReLU(8),
            torch.nn.Conv2d(8, 8, 3, stride=4, padding=1, groups=8, bias=False), BatchNorm2d(8),
            PReLU(8))
        self.fc = torch.nn.Linear(8 * 7 * 7, 16)

    def forward(self, x):
        return self.fc(self.body(x).flatten(1))


def test_qat_folds_batchnorm_into_int8_convs(tmp_path):
    from binface.nn.qat import QATBatchNorm2d, prepare_qat

    torch.manual_seed(0)
    model = prepare_qat(_ConvBNNet())
    bns = [m for m in model.modules() if isinstance(m, QATBatchNorm2d)]
    assert len(bns) == 2  # both follow a conv: their outputs become the convs' outputs
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(20):  # learn ranges and BN statistics
        loss = model(torch.randn(8, 3, 112, 112)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert all(float(m.output_fake_quant.scale) != 1.0 for m in bns)
    export_onnx_int8(model, tmp_path / "q.onnx")
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "BatchNormalization" not in ops and "PRelu" not in ops
    assert _optimized_ops(tmp_path / "q.onnx", tmp_path)["QLinearConv"] == 2
    x = np.random.default_rng(1).standard_normal((6, 3, 112, 112)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = load_onnx(tmp_path / "q.onnx").run(x)
    assert (_unit(ref) * _unit(got)).sum(1).min() > (0.999 if VNNI else 0.99)
