"""binface privacy: the analytic attacks are exact where the maths says so, the
optimisation attacks improve on their start, membership is at chance on unseen data,
and bad input is one line. Needs the `privacy` extra (scikit-image, SciPy)."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("skimage")
pytest.importorskip("scipy")

from binface.cli import main  # noqa: E402
from binface.errors import BinfaceError  # noqa: E402
from binface.nn import PReLU  # noqa: E402
from binface.nn.layers import BinaryConv2d  # noqa: E402
from binface.nn.quantizers import SteSign  # noqa: E402
from binface.privacy.gradient import (  # noqa: E402
    HEAD_KEY,
    defend,
    dp_gradients,
    invert_gradients,
    label_accuracy,
    observe_gradients,
    recover_dense_input,
    recover_embedding,
    recover_labels,
    step_embedding,
)
from binface.privacy.head import MarginHead  # noqa: E402
from binface.privacy.membership import membership_attack, membership_scores  # noqa: E402
from binface.privacy.metrics import clopper_pearson, psnr  # noqa: E402
from binface.privacy.template import embed, invert_template  # noqa: E402

SIZE = (3, 32, 32)


class Small(nn.Module):
    """A small float (or binary-middle) embedder on 32x32 inputs."""

    def __init__(self, binary: bool = False, dim: int = 16) -> None:
        super().__init__()
        mid = (BinaryConv2d(8, 8, 3, padding="same", input_quantizer=SteSign(),
                            kernel_quantizer=SteSign()) if binary else nn.Conv2d(8, 8, 3, 1, 1))
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), PReLU(8), mid,
                                  nn.BatchNorm2d(8), PReLU(8), nn.AdaptiveAvgPool2d(4),
                                  nn.Flatten(), nn.Linear(128, dim))

    def forward(self, x):
        return self.body(x)


def _head(classes=10, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MarginHead(torch.randn(classes, dim, generator=g), s=16, m=0.3)


def _faces(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1  # smooth images: a prior can help
    return torch.nn.functional.interpolate(base, size=SIZE[1:], mode="bilinear",
                                           align_corners=False)


def test_dense_first_layer_input_is_recovered_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 24), PReLU(24), nn.Linear(24, 16))
    x, y = _faces(1), torch.tensor([3])
    obs = observe_gradients(model, _head(), x, y)
    got = recover_dense_input(obs["1.weight"], obs["1.bias"])
    torch.testing.assert_close(got, x.reshape(-1), rtol=1e-4, atol=1e-5)
    with pytest.raises(BinfaceError, match="bias gradient is zero"):
        recover_dense_input(obs["1.weight"], torch.zeros(24))


@pytest.mark.parametrize("binary", [False, True])
def test_labels_and_embedding_at_batch_one(binary):
    torch.manual_seed(0)
    model, head = Small(binary), _head(40)
    for i, label in enumerate([0, 7, 19, 39]):
        x, y = _faces(1, seed=i), torch.tensor([label])
        obs = observe_gradients(model, head, x, y)
        got = recover_labels(obs[HEAD_KEY], 1)
        assert label_accuracy(y, got) == 1.0
        e = recover_embedding(head.weight, obs[HEAD_KEY])
        true = step_embedding(model, x)[0]
        assert float(e @ true) > 0.999
    # batches: labels as multisets, most of them found
    x, y = _faces(4), torch.tensor([1, 5, 9, 30])
    obs = observe_gradients(model, head, x, y)
    assert label_accuracy(y, recover_labels(obs[HEAD_KEY], 4)) >= 0.75
    assert label_accuracy(torch.tensor([2, 2]), torch.tensor([2, 5])) == 0.5


def test_observing_leaves_batchnorm_statistics_alone():
    model = Small()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    observe_gradients(model, _head(), _faces(2), torch.tensor([1, 2]))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_inverting_gradients_improves_on_its_start():
    torch.manual_seed(0)
    model, head = Small(), _head()
    x, y = _faces(1), torch.tensor([4])
    obs = observe_gradients(model, head, x, y)
    start = torch.rand((1, *SIZE), generator=torch.Generator().manual_seed(0)) * 2 - 1
    rec, info = invert_gradients(model, head, obs, y, (1, *SIZE), steps=60, restarts=1,
                                 lr=0.05, tv=0.05)
    assert psnr(x[0].numpy(), rec[0].numpy()) > psnr(x[0].numpy(), start[0].numpy()) + 1.0
    assert 0.0 <= info["distance"] < info["distances"][0] + 1e-9


def test_binary_networks_can_be_inverted_through_their_estimators():
    torch.manual_seed(0)
    model, head = Small(binary=True), _head()
    x, y = _faces(1), torch.tensor([2])
    obs = observe_gradients(model, head, x, y)
    rec, info = invert_gradients(model, head, obs, y, (1, *SIZE), steps=10, restarts=1)
    assert rec.shape == x.shape and np.isfinite(info["distance"])


def test_template_inversion_matches_the_template():
    torch.manual_seed(0)
    model = Small().eval()
    x = _faces(2)
    t = embed(model, x)
    rec, info = invert_template(model, t, tuple(x.shape), steps=80, restarts=1, lr=0.05)
    assert min(info["cosine"]) > 0.9
    with pytest.raises(BinfaceError, match="templates of size 8 do not fit"):
        invert_template(model, torch.randn(2, 8), tuple(x.shape), steps=1)


def test_membership_is_at_chance_on_a_model_that_saw_neither_set():
    torch.manual_seed(0)
    model, head = Small(), _head(20)
    a = membership_scores(model, head, _faces(64, seed=1))
    b = membership_scores(model, head, _faces(64, seed=2))
    res = membership_attack(a, b)
    lo, hi = res["auc_ci95"]
    assert lo <= 0.5 <= hi and 0.0 <= res["advantage"] <= 1.0
    sep = membership_attack(np.linspace(1, 2, 20), np.linspace(0, 0.9, 20))
    assert sep["auc"] == 1.0 and sep["advantage"] == 1.0


def test_defences_prune_and_sign_what_the_client_sends():
    torch.manual_seed(0)
    model, head = Small(), _head(40)
    x, y = _faces(1), torch.tensor([7])
    obs = observe_gradients(model, head, x, y)
    assert defend(obs, "none") is obs
    pruned = defend(obs, "prune:0.9")
    for k, g in obs.items():
        kept = pruned[k] != 0
        assert int(kept.sum()) <= g.numel() - int(0.9 * g.numel())  # 90% zeroed at least
        if kept.any() and (~kept).any():  # what stays is the largest in magnitude
            assert float(g[kept].abs().min()) >= float(g[~kept].abs().max())
        torch.testing.assert_close(pruned[k][kept], g[kept])
    signed = defend(obs, "sign")
    for k, g in obs.items():
        assert torch.equal(torch.sign(signed[k]), torch.sign(g))
        torch.testing.assert_close(signed[k].abs().max(), g.abs().mean())
    # after sign compression every class centre's gradient has the same norm (the norm
    # rule of label recovery has nothing to rank), and the analytic embedding degrades
    norms = signed[HEAD_KEY].norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, float(norms[0])))
    e = recover_embedding(head.weight, signed[HEAD_KEY])
    assert float(e @ step_embedding(model, x)[0]) < 0.999
    for bad in ("prune", "prune:1.5", "prune:x", "noise", "sign:2", "dp", "dp:1",
                "dp:0:1", "dp:1:-1", "dp:1:nan", "dp:x:1"):
        with pytest.raises(BinfaceError, match="defence"):
            defend(obs, bad)


@pytest.mark.parametrize("binary", [False, True])
def test_dp_sgd_clips_each_sample_and_adds_opacus_noise(binary):
    """dp:C:SIGMA: without noise and with a large C it is the plain step on running
    BatchNorm statistics; each sample's gradient is clipped to norm C (all tensors
    together); the noise has standard deviation SIGMA x C / batch."""
    pytest.importorskip("opacus")
    torch.manual_seed(0)
    model, head = Small(binary), _head(40)
    x, y = _faces(4), torch.tensor([3, 7, 11, 7])

    def flat(grads):
        return torch.cat([grads[k].flatten() for k in sorted(grads)])

    plain = observe_gradients(model, head, x, y, train=False)  # mean over the batch
    same = dp_gradients(model, head, x, y, clip=1e9, noise=0.0)
    scale = float(flat(plain).abs().max())  # rounding: the sum runs in another order
    torch.testing.assert_close(flat(same), flat(plain), rtol=1e-4, atol=1e-5 * scale)
    per = [flat(observe_gradients(model, head, x[i:i + 1], y[i:i + 1], train=False))
           for i in range(4)]
    clip = 0.5 * min(float(p.norm()) for p in per)  # every sample is clipped
    clipped = flat(dp_gradients(model, head, x, y, clip=clip, noise=0.0))
    want = sum(p * (clip / (float(p.norm()) + 1e-6)) for p in per) / 4
    torch.testing.assert_close(clipped, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    noisy = flat(dp_gradients(model, head, x, y, clip=clip, noise=2.0, seed=1))
    std = float((noisy - clipped).std())
    assert std == pytest.approx(2.0 * clip / 4, rel=0.1)
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_bad_input_is_one_line():
    model = Small()
    with pytest.raises(BinfaceError, match="margin head"):
        observe_gradients(model, None, _faces(1), torch.tensor([0]))
    with pytest.raises(BinfaceError, match="2 images for 3 labels"):
        observe_gradients(model, _head(), _faces(2), torch.tensor([0, 1, 2]))
    with pytest.raises(BinfaceError, match="below 10"):
        observe_gradients(model, _head(), _faces(1), torch.tensor([10]))
    with pytest.raises(BinfaceError, match="embeddings of size 16 do not fit"):
        MarginHead(torch.randn(5, 8))(torch.randn(1, 16), torch.tensor([0]))
    with pytest.raises(BinfaceError):
        clopper_pearson(3, 2)
    lo, hi = clopper_pearson(0, 16)
    assert lo == 0.0 and 0.15 < hi < 0.25


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from binface.data.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, identities=8, images_per_identity=3, pairs=200, workers=1, progress=False)
    return out


def test_cli_gradient_template_membership(synth, tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["privacy", "gradient", "mobilefacenet", "--data", str(synth), "--images", "2",
                 "--steps", "2", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    m = rep["metrics"]
    assert rep["precision"] == "float" and not rep["trained"]
    assert m["label_accuracy"]["n"] == 2 and len(m["label_accuracy"]["ci95"]) == 2
    assert m["psnr"]["n"] == 2 and m["embedding_cosine"]["mean"] > 0.99
    assert (out / "grid.png").read_bytes()[:4] == b"\x89PNG"
    assert "not a proof of privacy" in (out / "report.md").read_text()
    # nothing is replaced without --overwrite; bad input is one line
    assert main(["privacy", "gradient", "mobilefacenet", "--data", str(synth), "--images", "2",
                 "--out", str(out)]) == 2
    assert main(["privacy", "gradient", "mobilefacenet", "--data", str(synth), "--images", "1",
                 "--batch", "2", "--out", str(tmp_path / "b")]) == 2
    assert "--batch 2 is larger than --images 1" in capsys.readouterr().err
    assert main(["privacy", "gradient", "mobilefacenet", "--data", str(synth), "--images", "2",
                 "--steps", "2", "--defence", "prune:0.5", "--out", str(tmp_path / "d")]) == 0
    d = json.loads((tmp_path / "d" / "report.json").read_text())
    assert d["budget"]["defence"] == d["metrics"]["defence"] == "prune:0.5"
    assert main(["privacy", "gradient", "mobilefacenet", "--data", str(synth), "--images", "2",
                 "--defence", "prune:2", "--out", str(tmp_path / "d2")]) == 2
    assert "defence 'prune:2'" in capsys.readouterr().err and not (tmp_path / "d2").exists()
    if importlib.util.find_spec("opacus") is not None:
        assert main(["privacy", "gradient", "mobilefacenet", "--data", str(synth), "--images",
                     "2", "--batch", "2", "--steps", "2", "--defence", "dp:1:0.5", "--out",
                     str(tmp_path / "dp")]) == 0
        d = json.loads((tmp_path / "dp" / "report.json").read_text())
        assert d["metrics"]["defence"] == "dp:1:0.5" and d["metrics"]["batchnorm"] == "running"
        assert main(["privacy", "gradient", "mobilefacenet", "--data", str(synth), "--images",
                     "2", "--defence", "dp:1:0.5", "--bn", "batch", "--out",
                     str(tmp_path / "dp2")]) == 2
        assert "drop --bn batch" in capsys.readouterr().err and not (tmp_path / "dp2").exists()
    assert main(["privacy", "template", "mobilefacenet", "--data", str(synth), "--images", "2",
                 "--steps", "2", "--fmr", "0.01", "--out", str(tmp_path / "t")]) == 0
    t = json.loads((tmp_path / "t" / "report.json").read_text())["metrics"]
    assert t["threshold"]["impostor_pairs"] == 100 and t["success_attack_rate"]["n"] == 2
    assert main(["privacy", "template", "mobilefacenet", "--data", str(synth), "--images", "2",
                 "--out", str(tmp_path / "t2")]) == 2
    assert "100 impostor pairs cannot set a threshold at FMR 0.001" in capsys.readouterr().err
    assert main(["privacy", "membership", "mobilefacenet", "--data", str(synth), "--holdout",
                 str(synth), "--images", "4", "--out", str(tmp_path / "m")]) == 2
    assert "other identities" in capsys.readouterr().err
