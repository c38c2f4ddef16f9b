"""The binary zoo of the seed's Table 2: exact complexity, forward and backward passes."""

import json

import pytest
import torch

from binface.cli import main
from binface.models import create_model, list_models, model_info
from binface.nn.layers import BinarySeparableConv2d, QuantConv2d, QuantLinear

# REFERENCE section 3, typed in independently of binface.profile.tables:
# 1-bit MACs, 32-bit MACs, 1-bit params, 32-bit params, memory KiB
TABLE2 = {
    "quicknet": (431751168, 6851456, 12533760, 187328, 2261.75),
    "quicknet_small": (258342912, 3423808, 11980800, 161888, 2094.88),
    "binary_densenet28": (893251584, 49997824, 4202496, 352000, 1888.00),
    "binary_densenet37": (1122029568, 48975872, 7593984, 467264, 2752.25),
    "binary_densenet45": (1599971328, 59717632, 12349440, 739072, 4394.50),
    "binaryfacenet": (184992256, 3850752, 165248, 340744, 1351.20),
}
BINARY = list(TABLE2)
NEW_BINARY = ["binaryfaceformer_add", "binaryfaceformer_sep"]  # no Table 2 row: issue 13


def run_json(capsys, *argv):
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_binary_family_is_registered():
    assert sorted(list_models("binary")) == sorted(BINARY + NEW_BINARY)
    for name in BINARY + NEW_BINARY:
        assert model_info(name).family == "binary"


@pytest.mark.parametrize("name", BINARY)
def test_profile_json_reproduces_table2_exactly(name, capsys):
    d = run_json(capsys, "profile", name, "--backbone-only", "--json")
    m1, m32, p1, p32, kib = TABLE2[name]
    assert (d["macs_1bit"], d["macs_32bit"], d["params_1bit"], d["params_32bit"]) == (
        m1, m32, p1, p32)
    assert abs(d["memory_kib"] - kib) <= 0.01
    assert d["macs_kbit"] == 0
    for key in ("macs_1bit", "macs_32bit", "params_1bit", "params_32bit", "memory_kib",
                "macs_runtime_binary"):
        assert key in d
    if name != "binaryfacenet":  # every nominal 1-bit MAC runs as xor + popcount
        assert d["macs_runtime_binary"] == d["macs_1bit"]


def test_binaryfacenet_runtime_binary_is_not_nominal(capsys):
    d = run_json(capsys, "profile", "binaryfacenet", "--backbone-only", "--json", "--per-layer")
    assert d["macs_runtime_binary"] < d["macs_1bit"]
    differing = [layer for layer in d["layers"]
                 if layer["macs_1bit"] != layer["macs_runtime_binary"]]
    assert differing and all(layer["type"] == "BinarySeparableConv2d" for layer in differing)
    # the gap is the 1x1 depthwise steps of the four separable convs (28x28 and 14x14):
    # sign flips folded into the packing, while their pointwise kernels run binary
    assert d["macs_1bit"] - d["macs_runtime_binary"] == 2 * 64 * (28 * 28 + 14 * 14)
    assert main(["profile", "binaryfacenet", "--backbone-only", "--per-layer"]) == 0
    text = capsys.readouterr().out
    flagged = [line for line in text.splitlines() if "BinarySeparableConv2d" in line]
    assert len(flagged) == 4 and all("*" in line for line in flagged)


def test_table_binary_cli(capsys):
    rows = run_json(capsys, "profile", "--table", "binary", "--json")
    assert [r["model"] for r in rows] == BINARY
    for r in rows:
        for key in ("macs_1bit", "macs_32bit", "params_1bit", "params_32bit"):
            assert r[key]["deviation"] == 0
        assert abs(r["memory_kib"]["deviation"]) <= 0.01
    assert main(["profile", "--table", "binary"]) == 0
    text = capsys.readouterr().out
    assert "431,751,168" in text and "MACs" in text and "FLOPs" not in text.replace(
        "not FLOPs", "")


def latent_weights(model):
    for m in model.modules():
        if isinstance(m, (QuantConv2d, QuantLinear)) and m.kernel_quantizer is not None:
            yield m.weight
        if isinstance(m, BinarySeparableConv2d):
            yield m.depthwise_weight
            yield m.pointwise_weight


@pytest.mark.parametrize("name", BINARY)
def test_forward_backward_batch_1_and_8(name):
    torch.manual_seed(0)
    model = create_model(name)
    emb = 128 if name == "binaryfacenet" else 512
    for batch in (1, 8):
        for training in (True, False):
            model.train(training)
            model.zero_grad()
            y = model(torch.randn(batch, 3, 112, 112))
            assert y.shape == (batch, emb)
            assert torch.isfinite(y).all()
            y.square().mean().backward()
            weights = list(latent_weights(model))
            assert weights and all(w.grad is not None for w in weights)
            if batch == 1 and training:
                # a training-mode BatchNorm on one embedding outputs beta (as in Keras),
                # so no gradient can flow upstream: only check that backward runs
                continue
            for w in weights:  # the straight-through gradient reaches every latent weight
                assert w.grad.abs().sum() > 0


@pytest.mark.parametrize("name", BINARY)
def test_backbone_only(name):
    model = create_model(name, backbone_only=True)
    assert model.backbone_only
    with torch.no_grad():
        y = create_model(name, backbone_only=True).eval()(torch.randn(1, 3, 112, 112))
    assert y.dim() == 4
