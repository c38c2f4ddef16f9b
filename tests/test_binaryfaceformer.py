"""BinaryFaceFormer models: registry, budget (MACs, runtime-binary share, memory), runtimes."""

import numpy as np
import pytest
import torch

from binface.cli import main
from binface.errors import BinfaceError
from binface.models import create_model, list_models, model_info
from binface.models.binaryfaceformer import planned_budget
from binface.nn import BinaryConv2d
from binface.profile import profile
from binface.runtime.engine import load_packed
from binface.runtime.export import export_packed

MODELS = ["binaryfaceformer_sep", "binaryfaceformer_add"]
BINARYFACENET_KIB = 1351.2  # seed Table 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("name", MODELS)
def test_registered_as_binary_with_112_input(name):
    assert name in list_models("binary") and model_info(name).family == "binary"
    torch.manual_seed(0)
    model = create_model(name).eval()
    assert model.input_size == (112, 112)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 112, 112)).shape == (2, 128)
        backbone = create_model(name, backbone_only=True).eval()
        assert backbone(torch.randn(1, 3, 112, 112)).shape == (1, 256, 7, 7)


@pytest.mark.parametrize("name", MODELS)
def test_budget(name):
    t = profile(create_model(name)).totals
    one_bit = t["macs_1bit"] + t["macs_matmul_1bit"]
    every = t["macs_total"] + t["macs_matmul"]
    assert t["macs_matmul"] > 0  # the attention products are counted
    assert one_bit >= 0.9 * every
    assert t["macs_runtime_binary"] >= 0.9 * one_bit
    assert t["memory_kib"] <= 2 * BINARYFACENET_KIB
    # the closed-form plan the constructor checks is the profiler's count
    plan = planned_budget((32, 64, 128, 256), name[-3:], 1, 2, 128, (2, 2))
    assert plan["macs_1bit"] == t["macs_1bit"]
    assert plan["macs_32bit"] == t["macs_32bit"] + t["macs_matmul_32bit"]
    assert plan["params_1bit"] == t["params_1bit"]
    assert plan["memory_kib"] == pytest.approx(t["memory_kib"])


def test_profile_json_splits_matmul_by_precision(capsys):
    import json

    assert main(["profile", "binaryfaceformer_add", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["macs_matmul_1bit"] + d["macs_matmul_32bit"] == d["macs_matmul"] > 0


@pytest.mark.parametrize("kwargs,match", [
    ({"heads": 3}, "heads cannot divide"),
    ({"channels": (32, 48, 128, 256)}, "one must divide"),
    ({"channels": (32, 64, 128)}, "4 positive integers"),
    ({"embedding_size": 0}, "embedding_size"),
    ({"embedding_size": 8192}, "over the budget"),
    ({"channels": (512, 16, 16, 16)}, "1-bit"),
    ({"depths": (1,)}, "depths"),
])
@pytest.mark.parametrize("name", MODELS)
def test_bad_kwargs_are_one_line_errors(name, kwargs, match):
    with pytest.raises(BinfaceError, match=match) as e:
        create_model(name, **kwargs)
    assert "\n" not in str(e.value) and name in str(e.value)


@pytest.mark.parametrize("name", MODELS)
def test_packed_engine_runs_every_projection_binary(name, tmp_path):
    torch.manual_seed(1)
    model = create_model(name).eval()
    export_packed(model, tmp_path / "m.bfp")
    eng = load_packed(tmp_path / "m.bfp")
    x = np.random.default_rng(0).standard_normal((2, 3, 112, 112), dtype=np.float32)
    y, recs = eng.run(x, trace=True)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert cosine_rows(y, ref).min() >= 0.99
    convs = {n for n, m in model.named_modules() if isinstance(m, BinaryConv2d)}
    assert {r["source"] for r in recs} == convs  # xor + popcount, each one
    assert eng.summary()["binary_macs"] == profile(model).totals["macs_runtime_binary"]


@pytest.mark.parametrize("name", MODELS)
def test_onnx_matches_pytorch(name, tmp_path):
    pytest.importorskip("onnxruntime")
    from binface.runtime import export_onnx, load_onnx

    torch.manual_seed(2)
    model = create_model(name).eval()
    export_onnx(model, tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((2, 3, 112, 112), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert cosine_rows(load_onnx(tmp_path / "m.onnx").run(x), ref).min() >= 0.9999


def test_trains_a_step():
    torch.manual_seed(3)
    model = create_model("binaryfaceformer_sep").train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(2, 3, 112, 112)).square().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    opt.step()
