"""ONNX export and the ONNX Runtime runner: every float model of the zoo matches PyTorch."""

import json

import numpy as np
import pytest
import torch

from binface.cli import main
from binface.errors import InputShapeError
from binface.models import create_model, list_models

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from binface.runtime import export_onnx, load_onnx  # noqa: E402

FLOAT_ZOO = list_models("cnn") + list_models("hybrid")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rel_err(a, b) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("name", FLOAT_ZOO)
def test_float_zoo_onnx_matches_pytorch(name, tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(create_model(name))
    path = tmp_path / f"{name}.onnx"
    info = export_onnx(model, path)
    proto = onnx.load(str(path), load_external_data=False)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert info["binary"] is False
    runner = load_onnx(path)
    x = np.random.default_rng(0).standard_normal((2, 3, 112, 112), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    y2 = runner.run(x)
    assert y2.shape == ref.shape and rel_err(y2, ref) < 1e-4
    assert rel_err(runner.run(x[:1]), ref[:1]) < 1e-4  # dynamic batch


def test_binary_model_in_onnx_is_exact(tmp_path):
    """BinaryFaceNet's binary layers run as float in ONNX Runtime, without the Conv+BN folds
    that would turn exact zero sums into +-eps before a sign."""
    torch.manual_seed(0)
    model = create_model("binaryfacenet").eval()
    info = export_onnx(model, tmp_path / "b.onnx")
    assert info["binary"] is True
    runner = load_onnx(tmp_path / "b.onnx")
    assert runner.binary
    x = np.random.default_rng(1).standard_normal((2, 3, 112, 112), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert rel_err(runner.run(x), ref) < 1e-4


def test_onnx_runner_rejects_wrong_shapes(tmp_path):
    torch.manual_seed(0)
    export_onnx(create_model("mobilefacenet"), tmp_path / "m.onnx")
    runner = load_onnx(tmp_path / "m.onnx")
    with pytest.raises(InputShapeError) as e:
        runner.run(np.zeros((1, 3, 96, 96), np.float32))
    assert "\n" not in str(e.value) and "(N, 3, 112, 112)" in str(e.value)


def test_cli_export_onnx(capsys, tmp_path):
    out = tmp_path / "e.onnx"
    assert main(["export", "edgeface_xs", "--format", "onnx", "-o", str(out), "--check",
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert out.is_file() and info["opset"] == 17 and info["max_rel_error"] < 1e-4
