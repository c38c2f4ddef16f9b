"""Margin heads against their formulas; Partial FC against the plain head."""

import math

import pytest
import torch
import torch.nn.functional as F

from binface.nn import AdaFace, ArcFace, CombinedMargin, CosFace, PartialFC, make_margin


def test_arcface_and_cosface_formulas():
    cos = torch.tensor([[0.5, 0.2, -0.3], [0.1, 0.9, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    arc = ArcFace(s=64, m=0.5)(cos, labels)
    assert arc[0, 0].item() == pytest.approx(64 * math.cos(math.acos(0.5) + 0.5))
    assert arc[1, 1].item() == pytest.approx(64 * math.cos(math.acos(0.9) + 0.5))
    assert torch.allclose(arc[0, 1:], 64 * cos[0, 1:])  # margin on the target only
    cf = CosFace(s=30, m=0.4)(cos, labels)
    assert cf[0, 0].item() == pytest.approx(30 * (0.5 - 0.4))
    comb = CombinedMargin(s=10, m1=0.9, m2=0.2, m3=0.1)(cos, labels)
    assert comb[1, 1].item() == pytest.approx(10 * (math.cos(0.9 * math.acos(0.9) + 0.2) - 0.1))
    # theta + m past pi: the monotone fallback cos(theta) - m sin(m)
    far = ArcFace(s=1, m=0.5)(torch.tensor([[-0.99]], dtype=torch.float64), torch.tensor([0]))
    assert far.item() == pytest.approx(-0.99 - 0.5 * math.sin(0.5))
    # logits are clamped to [-1, 1] first
    clamped = CosFace(s=1, m=0.0)(torch.tensor([[1.5, -2.0]]), torch.tensor([0]))
    assert clamped.tolist() == [[1.0, -1.0]]


def test_label_minus_one_means_no_target_here():
    cos = torch.tensor([[0.5, 0.2]])
    assert torch.equal(ArcFace(s=2)(cos, torch.tensor([-1])), 2 * cos)


def test_adaface_margin_follows_the_norm():
    ada = AdaFace(s=1.0, m=0.4, h=0.333)
    ada.eval()
    with torch.no_grad():
        ada.batch_mean.fill_(10.0)
        ada.batch_std.fill_(3.0)
    cos = torch.tensor([[0.6, 0.0], [0.6, 0.0]], dtype=torch.float64)
    norms = torch.tensor([19.0, 1.0], dtype=torch.float64)  # high quality, low quality
    out = ada(cos, torch.tensor([0, 0]), norms)
    for i, norm in enumerate((19.0, 1.0)):
        ms = max(-1.0, min(1.0, (norm - 10.0) / (3.0 + 1e-3) * 0.333))
        expected = math.cos(math.acos(0.6) - 0.4 * ms) - (0.4 + 0.4 * ms)
        assert out[i, 0].item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="norms"):
        ada(cos, torch.tensor([0, 0]))


def test_make_margin():
    assert make_margin("arcface").m2 == 0.5
    assert make_margin("cosface", m=0.35).m3 == 0.35
    assert isinstance(make_margin("adaface"), AdaFace)
    with pytest.raises(ValueError, match="unknown margin"):
        make_margin("sphereface")


@pytest.mark.parametrize("margin", ["arcface", "cosface", "adaface"])
def test_partial_fc_full_rate_equals_plain_head(margin):
    torch.manual_seed(0)
    emb = torch.randn(16, 12, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 40, (16,))
    head = PartialFC(make_margin(margin, s=16.0), 12, 40, sample_rate=1.0).double()
    loss = head(emb, labels)
    loss.backward()
    g_emb, g_w = emb.grad.clone(), head.weight.grad.clone()

    emb2 = emb.detach().clone().requires_grad_(True)
    w2 = head.weight.detach().clone().requires_grad_(True)
    cos = F.normalize(emb2) @ F.normalize(w2).T
    ref_margin = make_margin(margin, s=16.0).double()
    logits = (ref_margin(cos, labels, emb2.norm(dim=1, keepdim=True)) if margin == "adaface"
              else ref_margin(cos, labels))
    ref = F.cross_entropy(logits, labels)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    assert torch.allclose(g_emb, emb2.grad, atol=1e-10)
    assert torch.allclose(g_w, w2.grad, atol=1e-10)


def test_partial_fc_sampling_keeps_positives():
    torch.manual_seed(1)
    head = PartialFC(ArcFace(s=8.0), 6, 100, sample_rate=0.2)
    labels = torch.tensor([3, 3, 50, 99, 7, 64])
    local = labels.clone()
    index, remapped = head._sample(local)
    assert len(index) == 20 and torch.all(index[1:] > index[:-1])
    assert set(labels.tolist()) <= set(index.tolist())
    assert torch.equal(index[remapped], labels)  # remapped labels point at the same centres
    loss = head(torch.randn(6, 6, requires_grad=True), labels)
    loss.backward()
    touched = head.weight.grad.abs().sum(1) > 0
    assert touched.sum() == 20  # only the sampled centres get gradient
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(ArcFace(), 4, 10, sample_rate=0.0)
