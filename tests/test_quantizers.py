"""Each quantizer's forward value and gradient against its formula (docs/quantizers.md),
and what it says it computes at runtime."""

import math

import numpy as np
import pytest
import torch

import binface.errors
import binface.runtime.errors
from binface.nn import (
    ApproxSign,
    DoReFa,
    EdeSign,
    MagnitudeAwareSign,
    RPReLU,
    RSign,
    SignQuantizer,
    SteSign,
    SwishSign,
    get_quantizer,
)
from binface.nn.quantizers import runtime_spec_of

X = torch.tensor([-2.0, -1.3, -1.2, -1.0, -0.7, -0.3, -0.01, 0.0, 0.01, 0.3, 0.7, 1.0, 1.2,
                  1.3, 2.0], dtype=torch.float64)


def value_and_grad(q, x=X):
    x = x.clone().requires_grad_(True)
    y = q(x)
    y.sum().backward()
    return y.detach(), x.grad


def sign_plus(x):
    return torch.tensor([1.0 if v >= 0 else -1.0 for v in x.tolist()], dtype=x.dtype)


def sign_minus(x):
    return torch.tensor([1.0 if v > 0 else -1.0 for v in x.tolist()], dtype=x.dtype)


@pytest.mark.parametrize("clip", [1.0, 1.25])
def test_ste_sign(clip):
    y, g = value_and_grad(SteSign(clip))
    assert torch.equal(y, sign_plus(X))
    assert y[X == 0].item() == 1.0  # sign(0) = +1
    expected = torch.tensor([1.0 if abs(v) <= clip else 0.0 for v in X.tolist()], dtype=X.dtype)
    assert torch.equal(g, expected)


def test_approx_sign():
    y, g = value_and_grad(ApproxSign())
    assert torch.equal(y, sign_plus(X))
    expected = torch.tensor([2 * (1 - abs(v)) if abs(v) <= 1 else 0.0 for v in X.tolist()],
                            dtype=X.dtype)
    torch.testing.assert_close(g, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("beta", [5.0, 2.0])
def test_swish_sign(beta):
    y, g = value_and_grad(SwishSign(beta))
    assert torch.equal(y, sign_plus(X))
    expected = torch.tensor(
        [beta * (2 - beta * v * math.tanh(beta * v / 2)) / (1 + math.cosh(beta * v))
         for v in X.tolist()], dtype=X.dtype)
    torch.testing.assert_close(g, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("t", [0.1, 1.0, 10.0])
def test_ede_sign(t):
    y, g = value_and_grad(EdeSign(t))
    assert torch.equal(y, sign_plus(X))
    k = max(1 / t, 1.0)
    expected = torch.tensor([k * t * (1 - math.tanh(t * v) ** 2) for v in X.tolist()],
                            dtype=X.dtype)
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-12)
    assert get_quantizer("ede_sign", t=t).t == t
    with pytest.raises(ValueError, match="positive"):
        EdeSign(0)


def test_dorefa_weights_one_bit_is_sign_with_sign0_minus_one():
    q = DoReFa(k_bit=1, mode="weights")
    y, _ = value_and_grad(q)
    assert torch.equal(y, sign_minus(X))
    assert y[X == 0].item() == -1.0
    assert q.precision == 1 and q.pm_one


@pytest.mark.parametrize("k", [1, 2, 3])
def test_dorefa_weights_value_and_gradient(k):
    q = DoReFa(k_bit=k, mode="weights")
    y, g = value_and_grad(q)
    n = 2**k - 1
    m = max(abs(math.tanh(v)) for v in X.tolist())
    expected = torch.tensor(
        [2 * round((math.tanh(v) / (2 * m) + 0.5) * n) / n - 1 for v in X.tolist()],
        dtype=X.dtype)
    # Python's round() is half-to-even like tf.round; no value here sits on a half except x = 0
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    # straight-through rounding: the gradient is that of tanh(x) / max|tanh(x)|
    x = X.clone().requires_grad_(True)
    (torch.tanh(x) / torch.tanh(x).abs().max()).sum().backward()
    torch.testing.assert_close(g, x.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_dorefa_activations(k):
    x = torch.tensor([-0.5, 0.1, 0.2, 0.45, 0.55, 0.8, 0.95, 1.5], dtype=torch.float64)
    y, g = value_and_grad(DoReFa(k_bit=k), x)
    n = 2**k - 1
    expected = torch.tensor([round(min(max(v, 0.0), 1.0) * n) / n for v in x.tolist()],
                            dtype=x.dtype)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    assert torch.equal(g, torch.tensor([0.0 if v < 0 or v > 1 else 1.0 for v in x.tolist()],
                                       dtype=x.dtype))
    assert DoReFa(k_bit=k).precision == k
    assert not DoReFa(k_bit=k).pm_one  # {0, 1}-valued at one bit, not +-1


def test_dorefa_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        DoReFa(1, mode="kernel")
    with pytest.raises(ValueError, match="k_bit"):
        DoReFa(0)


def test_magnitude_aware_sign():
    torch.manual_seed(0)
    w = (torch.randn(4, 3, 3, 3, dtype=torch.float64) * 0.8).requires_grad_(True)
    q = MagnitudeAwareSign(clip_value=1.0)
    y = q(w)
    y.sum().backward()
    scale = w.detach().abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(y.detach(), scale * sign_plus(w.detach().flatten()).view_as(w))
    expected = scale * (w.detach().abs() <= 1.0).to(w.dtype)
    torch.testing.assert_close(w.grad, expected.expand_as(w))


def test_rsign_shift_and_gradient():
    q = RSign(3).double()
    with torch.no_grad():
        q.shift.copy_(torch.tensor([0.5, -0.5, 0.0]))
    x = torch.tensor([[-0.4, 0.4, 0.0]], dtype=torch.float64).view(1, 3, 1, 1).requires_grad_(True)
    y = q(x)
    # sign(x + shift): -0.4+0.5=0.1 -> +1, 0.4-0.5=-0.1 -> -1, 0 -> +1
    assert y.flatten().tolist() == [1.0, -1.0, 1.0]
    y.sum().backward()
    z = torch.tensor([0.1, -0.1, 0.0], dtype=torch.float64)
    torch.testing.assert_close(x.grad.flatten(), 2 * (1 - z.abs()))
    torch.testing.assert_close(q.shift.grad, 2 * (1 - z.abs()))


def test_rprelu_formula():
    m = RPReLU(2).double()
    with torch.no_grad():
        m.shift_in.copy_(torch.tensor([1.0, -1.0]))
        m.slope.copy_(torch.tensor([0.1, 0.5]))
        m.shift_out.copy_(torch.tensor([2.0, 3.0]))
    x = torch.tensor([[0.0, 0.0], [3.0, -3.0]], dtype=torch.float64).view(2, 2, 1, 1)
    y = m(x).flatten().tolist()
    # channel 0: x - 1 -> prelu(0.1) -> + 2 ; channel 1: x + 1 -> prelu(0.5) -> + 3
    assert y == pytest.approx([0.1 * -1 + 2, 1 + 3, 2 + 2, 0.5 * -2 + 3])


def test_get_quantizer():
    assert isinstance(get_quantizer("ste_sign"), SteSign)
    assert get_quantizer(None) is None
    q = SteSign(1.3)
    assert get_quantizer(q) is q
    with pytest.raises(ValueError, match="unknown quantizer 'sgn'"):
        get_quantizer("sgn")


@pytest.mark.parametrize("q", [SteSign(1.25), ApproxSign(), SwishSign(), DoReFa(1, "weights"),
                               DoReFa(2, "weights"), DoReFa(2), MagnitudeAwareSign(),
                               EdeSign(0.5)])
def test_inference_path_gives_the_training_value(q):
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    x[0, 0, 0, 0] = 0.0
    with torch.no_grad():
        plain = q(x)
    trained = q(x.clone().requires_grad_(True))
    assert torch.equal(plain, trained.detach())


# ---------------------------------------------------------------- runtime meaning
@pytest.mark.parametrize("q,spec", [
    (SteSign(1.25), {"kind": "pos"}), (ApproxSign(), {"kind": "pos"}),
    (SwishSign(), {"kind": "pos"}), (EdeSign(), {"kind": "pos"}),
    (DoReFa(1, "weights"), {"kind": "neg"}),
    (DoReFa(2), {"kind": "dorefa", "k_bit": 2}), (DoReFa(1), {"kind": "dorefa", "k_bit": 1}),
    (None, {"kind": "none"}),
])
def test_runtime_spec(q, spec):
    assert runtime_spec_of(q) == spec


@pytest.mark.parametrize("q", [SteSign(), ApproxSign(), SwishSign(), DoReFa(1, "weights"),
                               DoReFa(3), RSign(4), EdeSign(2.0)])
def test_runtime_spec_gives_the_forward_value(q):
    """The engine's float meaning of each spec is the quantizer's own forward value."""
    from binface.runtime.ops.floats import quantize

    if isinstance(q, RSign):
        with torch.no_grad():
            q.shift.copy_(torch.tensor([0.5, -0.25, 0.0, 1.0]))
    x = torch.randn(2, 4, 5, 5)
    x[0, :, 0, 0] = 0.0
    x[1, :, 0, 0] = -0.0
    spec = q.runtime_spec()
    xs = x + spec["shift"].view(1, -1, 1, 1) if "shift" in spec else x
    with torch.no_grad():
        assert np.array_equal(quantize(xs.numpy(), spec), q(x).numpy())


def test_rsign_runtime_shift_is_a_copy():
    q = RSign(3)
    shift = q.runtime_spec()["shift"]
    assert torch.equal(shift, q.shift.detach()) and not shift.requires_grad
    shift.add_(1.0)
    assert torch.equal(q.shift.detach(), torch.zeros(3))


@pytest.mark.parametrize("q,word", [(MagnitudeAwareSign(), "MagnitudeAwareSign"),
                                    (DoReFa(2, "weights"), "DoReFa")])
def test_runtime_spec_refuses_what_no_runtime_runs(q, word):
    with pytest.raises(binface.errors.UnsupportedOpError, match=word) as e:
        q.runtime_spec()
    assert isinstance(e.value, binface.errors.BinfaceError) and "\n" not in str(e.value)
    # one class, importable from where the runtimes always had it
    assert binface.runtime.errors.UnsupportedOpError is binface.errors.UnsupportedOpError


class _HardTanhSign(SignQuantizer):
    """A quantizer that is new to binface: sign forward, hard-tanh gradient, defined here."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-1, 1) + (torch.sign(x).add(0.5).sign() - x.clamp(-1, 1)).detach()


def test_a_new_quantizer_runs_in_the_engine_without_registration(tmp_path):
    """Capture asks the quantizer what it is: defining it is enough to export it."""
    from torch import nn

    from binface.nn import BinaryConv2d
    from binface.runtime import export_packed, load_packed

    torch.manual_seed(0)
    model = nn.Sequential(BinaryConv2d(8, 4, 3, padding="same", input_quantizer=_HardTanhSign(),
                                       kernel_quantizer=_HardTanhSign())).eval()
    export_packed(model, tmp_path / "m.bfp", input_size=(5, 5), channels=8)
    eng = load_packed(tmp_path / "m.bfp")
    assert [op.node["op"] for op in eng.ops] == ["pack", "bconv"]
    x = np.random.default_rng(0).standard_normal((2, 8, 5, 5), dtype=np.float32)
    with torch.no_grad():
        assert np.array_equal(eng.run(x), model(torch.from_numpy(x)).numpy())
