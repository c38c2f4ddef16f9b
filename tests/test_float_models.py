"""The float zoo of the seed's Table 1: registry, forward/backward, export, architecture facts."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binface.cli import main
from binface.errors import InputShapeError
from binface.models import create_model, list_models, model_info
from binface.nn.attention import TransposedSelfAttention
from binface.nn.blocks import DFCAttention, GDCHead, LoRaLin

# name -> (family, default embedding size)
FLOAT = {
    "mobilefacenet": ("cnn", 128),
    "mobilefacenet_1_5": ("cnn", 256),
    "mbf": ("cnn", 512),
    "shufflefacenet_0_5": ("cnn", 128),
    "shufflefacenet_1_0": ("cnn", 128),
    "shufflefacenet_1_5": ("cnn", 128),
    "shufflefacenet_2_0": ("cnn", 128),
    "vargfacenet": ("cnn", 512),
    "ghostfacenetv2": ("cnn", 512),
    "edgeface_xs": ("hybrid", 512),
    "edgeface_s": ("hybrid", 512),
    "mobilefaceformer": ("hybrid", 128),
    "mobilevitv2_face": ("hybrid", 512),
    "swiftformer_face": ("hybrid", 512),
    "vit_t_face": ("hybrid", 512),
    "vit_s_face": ("hybrid", 512),
}
NAMES = list(FLOAT)
# training-mode batch: 8, or 2 for the heaviest training graphs (keeps the suite fast on CPU)
HEAVY = {"ghostfacenetv2", "mbf", "mobilefacenet_1_5", "vargfacenet", "shufflefacenet_2_0",
         "vit_t_face", "vit_s_face"}


def images(n, seed=0):
    return torch.randn(n, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


def unit(y):
    """Compare embeddings as face recognition uses them: L2-normalised (the raw scale of
    an untrained network in eval mode can be tiny, which would make any atol vacuous)."""
    return F.normalize(y, dim=1)


def test_float_zoo_is_registered_with_family_and_description(capsys):
    for name, (family, _) in FLOAT.items():
        info = model_info(name)
        assert info.family == family
        assert len(info.description) > 20
    assert set(NAMES) <= set(list_models("cnn")) | set(list_models("hybrid"))
    assert main(["models", "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name, (family, _) in FLOAT.items():
        assert listed[name]["family"] == family
        assert listed[name]["description"] == model_info(name).description
    assert main(["models", "--family", "hybrid"]) == 0
    out = capsys.readouterr().out
    assert "edgeface_xs" in out and "mobilefacenet " not in out


@pytest.mark.parametrize("name", NAMES)
def test_eval_forward_batch_1_and_8(name):
    model = create_model(name).eval()
    emb = FLOAT[name][1]
    x = images(8)
    with torch.no_grad():
        y8 = model(x)
        y1 = model(x[:1])
    assert y8.shape == (8, emb) and y1.shape == (1, emb)
    assert torch.isfinite(y8).all()
    # L2-normalisable and sample-independent in eval mode (no mixing across the batch)
    assert (y8.norm(dim=1) > 0).all()
    torch.testing.assert_close(unit(y1), unit(y8[:1]), rtol=0, atol=2e-4)
    # distinct faces give distinct embeddings
    assert (unit(y8[:1]) - unit(y8[1:2])).abs().max() > 1e-2


@pytest.mark.parametrize("name", NAMES)
@torch.enable_grad()  # whatever global grad mode an earlier test left behind
def test_train_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    n = 2 if name in HEAVY else 8
    y = model(images(n, 1))
    assert y.shape == (n, FLOAT[name][1])
    y.pow(2).mean().backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # batch-norm statistics move in training mode
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if bns:
        assert any(m.num_batches_tracked.item() > 0 for m in bns)
    # a batch of one trains too (BN on 1x1 maps and embeddings)
    model.zero_grad()
    y1 = model(images(1, 2))
    assert y1.shape == (1, FLOAT[name][1]) and torch.isfinite(y1).all()
    y1.sum().backward()


@pytest.mark.parametrize("name", NAMES)
def test_torch_export_matches_eager(name):
    model = create_model(name).eval()
    x = images(1, 3)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        exported, eager = program.module()(x), model(x)
    assert exported.shape == eager.shape
    torch.testing.assert_close(unit(exported), unit(eager), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_backbone_only_and_embedding_size(name):
    backbone = create_model(name, backbone_only=True).eval()
    assert backbone.backbone_only and backbone.embedding_size is None
    with torch.no_grad():
        feats = backbone(images(1))
    if name.startswith("vit"):
        assert feats.shape[1:] == (144, 256 if name == "vit_t_face" else 512)
    else:
        assert feats.dim() == 4 and feats.shape[-2:] in {(7, 7), (3, 3)}
    small = create_model(name, embedding_size=64).eval()
    with torch.no_grad():
        assert small(images(2)).shape == (2, 64)


def test_wrong_input_size_is_a_one_line_error():
    model = create_model("mobilefacenet").eval()
    with pytest.raises(InputShapeError, match="112x112"):
        model(torch.randn(1, 3, 96, 96))


def feature_shape(name):
    with torch.no_grad():
        return tuple(create_model(name, backbone_only=True).eval()(images(1)).shape[1:])


def test_architecture_facts_cnns():
    assert feature_shape("mobilefacenet") == (512, 7, 7)
    assert feature_shape("mbf") == (512, 7, 7)
    for w in ("0_5", "1_0", "1_5", "2_0"):  # "7x7x1024 before the GDC"
        assert feature_shape(f"shufflefacenet_{w}") == (1024, 7, 7)
    assert feature_shape("vargfacenet") == (320, 7, 7)
    assert feature_shape("ghostfacenetv2") == (1248, 7, 7)  # make_divisible(960 * 1.3, 4)

    mbf = create_model("mbf")
    # insightface's mbf keeps 64 groups on its 128-channel 56x56 "depthwise" conv
    conv = mbf.backbone.stage1[0]
    assert (conv.in_channels, conv.groups) == (128, 64)

    ghost = create_model("ghostfacenetv2")
    stem = ghost.backbone.stem[0]
    assert stem.stride == (1, 1) and stem.out_channels == 20  # width 1.3, stride-1 stem
    # DFC attention on every bottleneck's first ghost module but the first two
    assert sum(isinstance(m, DFCAttention) for m in ghost.modules()) == 14
    assert isinstance(ghost.head, GDCHead) and ghost.head.gdc.kernel_size == (7, 7)

    varg = create_model("vargfacenet")
    grouped = [m for m in varg.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
               and m.groups > 1]
    assert grouped and all(m.in_channels // m.groups == 8 for m in grouped)


def test_architecture_facts_hybrids():
    for name, ratio, heads in (("edgeface_xs", 0.6, 4), ("edgeface_s", 0.5, 8)):
        model = create_model(name)
        lora = [m for m in model.modules() if isinstance(m, LoRaLin)]
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert len(linears) == 2 * len(lora)  # every dense layer is a LoRaLin factor
        for m in lora:
            assert m.rank == max(2, int(min(m.in_features, m.out_features) * ratio))
        xca = [m for m in model.modules() if isinstance(m, TransposedSelfAttention)]
        assert len(xca) == 3 and all(m.num_heads == heads for m in xca)
        assert model.head.fc.rank == int(min(model.backbone.out_channels, 512) * ratio)
    vit = create_model("vit_t_face")
    assert vit.backbone.num_tokens == 144 and len(vit.backbone.blocks) == 12
