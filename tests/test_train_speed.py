"""The fast training paths give today's gradients (issue 13, section 4).

Every quantizer's gradient is compared with a plain autograd implementation of its
formula (docs/quantizers.md), on maps with ties at the max, in several memory
layouts; a whole BinaryFaceNet's parameter gradients are compared with the same
network running the reference quantizers (monkeypatched in). No timings here: the
speed is measured by benchmarks/train_speed.py.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from binface.models import create_model
from binface.nn import (
    ApproxSign,
    DoReFa,
    EdeSign,
    MagnitudeAwareSign,
    RSign,
    SteSign,
    SwishSign,
)

RTOL = 1e-5


# ------------------------------------------------------------ reference quantizers
def ref_sign(x: torch.Tensor, zero: float) -> torch.Tensor:
    return torch.where(x > 0, 1.0, torch.where(x < 0, -1.0, zero)).to(x.dtype)


def ref_ste(surrogate: torch.Tensor, x: torch.Tensor, zero: float = 1.0) -> torch.Tensor:
    """sign(x) forward, the autograd gradient of ``surrogate`` backward."""
    return ref_sign(x.detach(), zero) + (surrogate - surrogate.detach())


def ref_dorefa1(x: torch.Tensor) -> torch.Tensor:
    """DoReFa weights mode at one bit: the autograd of tanh(x) / max|tanh x|."""
    t = torch.tanh(x)
    return ref_ste(t / t.abs().max(), x, zero=-1.0)


class OldDoReFa1Fn(torch.autograd.Function):
    """binface's DoReFa (k=1, weights) Function before the fast path, verbatim."""

    @staticmethod
    def forward(ctx, x):
        t = torch.tanh(x)
        m = t.abs().amax()
        ctx.save_for_backward(t, m)
        return torch.sign(x).sub_(0.5).sign_()

    @staticmethod
    def backward(ctx, g):
        t, m = ctx.saved_tensors
        dt = 1.0 - t * t
        grad = g * dt / m
        at_max = t.abs() == m
        dm = -(g * t).sum() / (m * m)
        return grad + at_max * (dm / at_max.sum()) * torch.sign(t) * dt


def ref_swish(x: torch.Tensor, beta: float) -> torch.Tensor:
    s = torch.sigmoid(beta * x)
    return ref_ste(2 * s * (1 + beta * x * (1 - s)) - 1, x)


def ref_ede(x: torch.Tensor, t: float) -> torch.Tensor:
    return ref_ste(max(1 / t, 1.0) * torch.tanh(t * x), x)


def ref_approx(x: torch.Tensor) -> torch.Tensor:
    a = x.clamp(-1, 1)
    return ref_ste(2 * a - a * a.abs(), x)  # d/dx = 2 - 2|x| on [-1, 1]


REFERENCES = {
    "ste_sign": (lambda: SteSign(1.0), lambda x: ref_ste(x.clamp(-1, 1), x)),
    "ste_sign_1.3": (lambda: SteSign(1.3), lambda x: ref_ste(x.clamp(-1.3, 1.3), x)),
    "approx_sign": (ApproxSign, ref_approx),
    "swish_sign": (lambda: SwishSign(5.0), lambda x: ref_swish(x, 5.0)),
    "ede_sign_0.5": (lambda: EdeSign(0.5), lambda x: ref_ede(x, 0.5)),
    "ede_sign_3": (lambda: EdeSign(3.0), lambda x: ref_ede(x, 3.0)),
    "dorefa1_weights": (lambda: DoReFa(1, "weights"), ref_dorefa1),
    "dorefa1_weights_old": (lambda: DoReFa(1, "weights"), OldDoReFa1Fn.apply),
}


def assert_grad_close(new: torch.Tensor, ref: torch.Tensor, scale: float = 0.0) -> None:
    """Agreement to RTOL relative over the whole tensor (norm of the difference), and
    element-wise to 10 x RTOL with an absolute floor at RTOL x the largest |ref| (or
    ``scale``: an element whose true gradient is ~0 carries only rounding). A weight
    gradient sums ~1e5 products, so one element may round past RTOL on its own when the
    CPU's SIMD width changes the summation order (seen on an AVX2-only host: 2.5e-5)."""
    floor = RTOL * max(float(ref.abs().max()), scale) + 1e-30
    torch.testing.assert_close(new, ref, rtol=10 * RTOL, atol=floor)
    diff = float((new - ref).double().norm())
    assert diff <= RTOL * max(float(ref.double().norm()), scale) + 1e-30, diff


def maps(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Activation-like inputs: plain, with ties at the max on one or both sides, saturated
    (|tanh x| = 1 in float32), zeros, in contiguous, channels-last and strided layouts."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 9, 7, generator=g, dtype=dtype)
    out = {"plain": x}
    tie = x.clone()
    tie.view(-1)[[5, 77, 300]] = 5.0  # three maxima above everything else (t = m)
    out["ties_high"] = tie
    neg = x.clone()
    neg.view(-1)[[2, 40]] = -5.5  # the max of |t| on the negative side (t = -m)
    out["ties_low"] = neg
    both = x.clone()
    both.view(-1)[[3, 50]] = 5.0
    both.view(-1)[[9]] = -5.0  # ties on both sides (lo = -hi)
    out["ties_both"] = both
    sat = x.clone()
    sat.view(-1)[[1, 2]] = torch.tensor([12.0, -15.0], dtype=dtype)  # tanh = +-1 exactly
    out["saturated"] = sat
    zeros = x.clone()
    zeros.view(-1)[::11] = 0.0
    out["zeros"] = zeros
    out["channels_last"] = x.contiguous(memory_format=torch.channels_last)
    out["strided"] = torch.randn(3, 8, 18, 7, generator=g, dtype=dtype)[:, :, ::2]
    out["flat"] = x.reshape(-1)[:200]
    out["scalar"] = x.reshape(-1)[7].clone()
    return out


def run(fn, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone(memory_format=torch.preserve_format).requires_grad_(True)
    y = fn(x)
    y.backward(g)
    return y.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(REFERENCES))
def test_quantizer_gradient_matches_its_reference(name, dtype):
    make, ref = REFERENCES[name]
    for case, x in maps(dtype).items():
        g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        y_new, g_new = run(make(), x, g)
        y_ref, g_ref = run(ref, x, g)
        assert torch.equal(y_new, y_ref), (name, case)
        try:  # upstream gradients are ~1: a 1-element map's exact gradient is 0 + rounding
            assert_grad_close(g_new, g_ref, scale=1.0)
        except AssertionError as e:  # pragma: no cover - a failure names the case
            raise AssertionError(f"{name} / {case}: {e}") from None


@pytest.mark.parametrize("name", ["dorefa1_weights", "dorefa1_weights_old"])
def test_dorefa_numba_path_matches_its_reference(name, monkeypatch):
    """The numba kernels (large float32 maps) on the same cases, with the size threshold
    lowered so that these small maps take them (and a map of several chunks)."""
    import binface.nn.quantizers as q

    monkeypatch.setattr(q, "_FUSED_NUMEL", 0)
    make, ref = REFERENCES[name]
    cases = maps(torch.float32)
    big = torch.randn(5, 16, 40, 40, generator=torch.Generator().manual_seed(5))
    big.view(-1)[[7, 70_000, 127_999]] = 6.0  # ties in three different chunks
    cases["several_chunks"] = big
    taken = []
    real = q._fused_backward
    monkeypatch.setattr(q, "_fused_backward", lambda *a: taken.append(1) or real(*a))
    for case, x in cases.items():
        g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        y_new, g_new = run(make(), x, g)
        y_ref, g_ref = run(ref, x, g)
        assert torch.equal(y_new, y_ref), case
        try:
            assert_grad_close(g_new, g_ref, scale=1.0)
        except AssertionError as e:  # pragma: no cover - a failure names the case
            raise AssertionError(f"{name} / {case}: {e}") from None
    assert len(taken) >= 8  # every dense case went through the kernels


def test_dorefa_numba_path_with_nan_is_pytorchs(monkeypatch):
    """A NaN in the map: the same values and gradient as the PyTorch path."""
    import binface.nn.quantizers as q

    x = torch.randn(2, 3, 4, 4)
    x[0, 1, 2, 3] = float("nan")
    g = torch.randn(x.shape)
    y_ref, g_ref = run(DoReFa(1, "weights"), x, g)
    monkeypatch.setattr(q, "_FUSED_NUMEL", 0)
    y_new, g_new = run(DoReFa(1, "weights"), x, g)
    assert torch.equal(y_new, y_ref)
    torch.testing.assert_close(g_new, g_ref, equal_nan=True)


def test_dorefa_max_path_is_exercised():
    """The ties cases really carry a gradient through the max (else they test nothing)."""
    x = maps()["ties_high"]
    g = torch.ones_like(x)
    _, with_max = run(DoReFa(1, "weights"), x, g)
    t = torch.tanh(x)
    without = g * (1 - t * t) / t.abs().max()
    at_max = t.abs() == t.abs().max()
    assert at_max.sum() == 3
    assert (with_max - without)[at_max].abs().min() > 1e-3
    assert_grad_close(with_max[~at_max], without[~at_max])  # elsewhere only the main term


def test_dorefa_gradient_with_an_expanded_upstream_gradient():
    """``y.sum().backward()`` hands the quantizer a stride-0 gradient."""
    x = maps()["ties_both"]
    xa = x.clone().requires_grad_(True)
    DoReFa(1, "weights")(xa).sum().backward()
    xb = x.clone().requires_grad_(True)
    ref_dorefa1(xb).sum().backward()
    assert_grad_close(xa.grad, xb.grad)


def test_dorefa_gradient_keeps_the_input_layout():
    x = maps()["channels_last"].clone().requires_grad_(True)
    DoReFa(1, "weights")(x).backward(torch.ones_like(x))
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_kernel_quantizers_match_their_reference():
    """MagnitudeAwareSign (scale as a constant) and RSign (shift + ApproxSign)."""
    w = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(2)) * 0.9
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(3))
    _, new = run(MagnitudeAwareSign(), w, g)
    scale = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    _, ref = run(lambda v: scale * ref_ste(v.clamp(-1, 1), v), w, g)
    assert_grad_close(new, ref)
    q = RSign(4)
    with torch.no_grad():
        q.shift.copy_(torch.tensor([0.3, -0.2, 0.0, 0.5]))
    x = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(4))
    _, new = run(q, x, torch.ones_like(x))
    _, ref = run(lambda v: ref_approx(v + q.shift.detach().view(1, -1, 1, 1)), x,
                 torch.ones_like(x))
    assert_grad_close(new, ref)


# ------------------------------------------------------------ a whole network
def _reference_dorefa_forward(self: DoReFa, x: torch.Tensor) -> torch.Tensor:
    if self.pm_one:
        return ref_dorefa1(x)
    return _FAST_DOREFA_FORWARD(self, x)


_FAST_DOREFA_FORWARD = DoReFa.forward


def _grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    y = model(x)
    (y * torch.linspace(-1, 1, y.shape[1])).sum().backward()
    return y.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def binaryfacenet_and_input():
    torch.manual_seed(0)
    model = create_model("binaryfacenet").train()
    x = torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(5))
    return model, x


@pytest.mark.parametrize("channels_last", [False, True])
def test_binaryfacenet_gradients_match_the_reference_quantizers(binaryfacenet_and_input,
                                                                channels_last, monkeypatch):
    """Same outputs and, to 1e-5, the same gradient of every parameter, in either layout
    (channels-last convolutions round differently, so each layout is its own reference)."""
    model, x = binaryfacenet_and_input
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if channels_last:
        model = create_model("binaryfacenet").train()
        model.load_state_dict(state)
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y_new, g_new = _grads(model, x)
    model.load_state_dict(state)  # BN running statistics as before
    with monkeypatch.context() as mp:
        mp.setattr(DoReFa, "forward", _reference_dorefa_forward)
        y_ref, g_ref = _grads(model, x)
    model.load_state_dict(state)
    assert torch.equal(y_new, y_ref)
    assert_all_grads_close(g_new, g_ref)


def assert_all_grads_close(g_new: dict, g_ref: dict) -> None:
    """Every parameter's gradient (more than 50 of them) to RTOL, naming a failure."""
    assert set(g_new) == set(g_ref) and len(g_new) > 50
    for name, ref in g_ref.items():
        try:
            assert_grad_close(g_new[name], ref)
        except AssertionError as e:  # pragma: no cover - a failure names the parameter
            raise AssertionError(f"{name}: {e}") from None


# ------------------------------------------------------------ PReLU
def _prelu_cases() -> dict[str, tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 8, 9, 7, generator=g)
    x.view(-1)[::13] = 0.0  # x = 0 takes the slope, as in PyTorch
    return {
        "nchw": (x, 8),
        "channels_last": (x.contiguous(memory_format=torch.channels_last), 8),
        "one_slope": (x, 1),
        "strided": (torch.randn(3, 8, 18, 7, generator=g)[:, :, ::2], 8),  # PyTorch's path
        "tokens": (torch.randn(2, 8, 5, generator=g), 8),  # 3-D: PyTorch's path
        "float64": (x.double(), 8),
    }


@pytest.mark.parametrize("case", list(_prelu_cases()))
def test_prelu_matches_torch(case):
    """binface's PReLU: nn.PReLU's values and gradients (input and slopes) in every layout."""
    from binface.nn import PReLU

    x, n = _prelu_cases()[case]
    ref, new = torch.nn.PReLU(n).to(x.dtype), PReLU(n).to(x.dtype)
    with torch.no_grad():
        ref.weight.copy_(torch.linspace(-0.3, 0.6, n, dtype=x.dtype))
        new.weight.copy_(ref.weight)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype)
    outs = []
    for mod in (ref, new):
        xx = x.clone(memory_format=torch.preserve_format).requires_grad_(True)
        y = mod(xx)
        y.backward(g)
        outs.append((y.detach(), xx.grad, mod.weight.grad))
    (y_r, gx_r, gw_r), (y_n, gx_n, gw_n) = outs
    assert torch.equal(y_n, y_r)
    assert torch.equal(gx_n, gx_r)
    assert_grad_close(gw_n, gw_r)
    assert gx_n.stride() == gx_r.stride()


def test_prelu_stride_zero_gradient_and_state_dict():
    """``y.sum().backward()`` (a stride-0 gradient) works; the state dict is nn.PReLU's."""
    from binface.nn import PReLU

    x = torch.randn(2, 4, 6, 6).requires_grad_(True)
    m = PReLU(4)
    m(x).sum().backward()
    t = torch.nn.PReLU(4)
    xr = x.detach().clone().requires_grad_(True)
    t(xr).sum().backward()
    assert torch.equal(x.grad, xr.grad)
    assert_grad_close(m.weight.grad, t.weight.grad)
    assert set(m.state_dict()) == set(t.state_dict()) == {"weight"}
    assert isinstance(m, torch.nn.PReLU)


def test_prelu_under_bf16_autocast():
    """Autocast hands PReLU a bf16 input and a float32 slope: PyTorch's own path runs."""
    model = create_model("mobilefacenet").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(2, 3, 112, 112))
    y.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided_grad"])
def test_channel_scale_gradient_matches_plain_autograd(layout):
    from binface.nn.channel_scale import _ChannelScaleFn, channel_scale

    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 5, 9, 7, generator=gen)
    s = torch.rand(3, 5, 1, 1, generator=gen)
    g = torch.randn(x.shape, generator=gen)
    if layout == "nhwc":
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    if layout == "strided_grad":
        g = torch.randn(3, 5, 9, 14, generator=gen)[..., ::2]
    calls = []
    real = _ChannelScaleFn.backward
    _ChannelScaleFn.backward = staticmethod(lambda ctx, gr: calls.append(1) or real(ctx, gr))
    try:
        xa, sa = x.clone().requires_grad_(True), s.clone().requires_grad_(True)
        y = channel_scale(xa, sa)
        y.backward(g)
    finally:
        _ChannelScaleFn.backward = staticmethod(real)
    xb, sb = x.clone().requires_grad_(True), s.clone().requires_grad_(True)
    (xb * sb).backward(g)
    assert calls and torch.equal(y.detach(), (x * s))
    assert_grad_close(xa.grad, xb.grad)
    assert_grad_close(sa.grad, sb.grad)
    if layout == "nhwc":
        assert xa.grad.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------ freed memory kept
_FAULTS = """
import os, resource, sys
import torch
from binface.models import create_model
model = create_model("mobilefacenet").train()
model(torch.randn(2, 3, 112, 112))  # the first training forward: keep_freed_memory()
from binface.nn.memory import keep_freed_memory
def faults():
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(16_000_000)  # 64 MB, above glibc's largest mmap threshold
    del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0
faults(), faults()  # glibc settles in two rounds
print(keep_freed_memory(), faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux")
                    or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("keep", ["1", "0"])
def test_a_training_forward_keeps_freed_memory(keep):
    """After a zoo model's first training forward (and two rounds to settle) a large
    buffer freed and allocated again is not faulted in again (16,000 4 KiB pages
    otherwise); BINFACE_KEEP_MEMORY=0 keeps glibc's default."""
    env = {**os.environ, "BINFACE_KEEP_MEMORY": keep, "THP_MEM_ALLOC_ENABLE": "0",
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    kept, faults = out[0] == "True", int(out[1])
    assert kept == (keep == "1")
    assert faults < 1000 if kept else faults > 10000, faults


def test_dorefa_backward_kernel_exp_is_accurate():
    """The numba backward's own exp: g s (1 - s) within 1e-6 of float64 where it is not
    tiny, and below 1e-30 where float32 underflows (|x| > 43.6, argument clamped)."""
    from binface.nn import dorefa_kernels

    x = torch.cat([torch.linspace(-12, 12, 200_001),
                   torch.tensor([0.0, 1e-30, -1e-30, 43.7, -43.7, 80.0, -80.0,
                                 float("inf"), -float("inf")])])
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    out = torch.empty_like(x)
    gs, gsum = dorefa_kernels.backward_from_x(g, x, out, 4.0)
    s = torch.sigmoid(2 * x.double())
    ref = 4.0 * g.double() * s * torch.sigmoid(-2 * x.double())  # s (1 - s), no cancelling
    big = ref.abs() > 1e-25
    rel = ((out.double() - ref).abs() / ref.abs())[big]
    assert float(rel.max()) < 1e-6
    assert float((out.double() - ref).abs()[~big].max()) < 1e-30
    assert gs == pytest.approx(float((g.double() * s).sum()), rel=1e-6, abs=1e-6)
    assert gsum == pytest.approx(float(g.double().sum()), rel=1e-9, abs=1e-9)


# ------------------------------------------------------------ fused pointwise stem
@pytest.mark.parametrize("case", ["plain", "ties", "signs_only", "one_small_image"])
def test_fused_stem_matches_the_modules(case):
    """binface.nn.fused_stem: x = PReLU(BN(conv1x1(img))) and DoReFa(x) with every
    gradient (conv, BN, PReLU slope; the path through max|tanh x|, ties split)
    and BN's running statistics as the modules one by one give them."""
    import copy

    from torch import nn

    from binface.nn import BatchNorm2d, PReLU
    from binface.nn.fused_stem import can_fuse, pointwise_stem

    gen = torch.Generator().manual_seed(5)
    conv, bn, act = nn.Conv2d(3, 16, 1, bias=False), BatchNorm2d(16), PReLU(16)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        bn.weight.copy_(torch.rand(16, generator=gen) + 0.5)
        bn.bias.copy_(torch.randn(16, generator=gen) * 0.3)
        act.weight.copy_(torch.rand(16, generator=gen) - 0.5)
        bn.running_var.fill_(2.0)
    shape = (1, 3, 3, 3) if case == "one_small_image" else (4, 3, 12, 10)
    img = torch.randn(shape, generator=gen)
    if case == "ties":  # two identical, large pixels: the max of |x| sits there, twice
        img[0, :, 0, 0] = img[1, :, 3, 3] = torch.tensor([4.0, -3.0, 5.0])
    img = img.contiguous(memory_format=torch.channels_last)
    gx = torch.randn((shape[0], 16, *shape[2:]), generator=gen)
    gq = torch.randn(gx.shape, generator=gen)
    if case == "signs_only":
        gx = None
    ref_mods = [copy.deepcopy(m) for m in (conv, bn, act)]
    for m in (conv, bn, act, *ref_mods):
        m.train()

    def run(fused: bool):
        mods = (conv, bn, act) if fused else ref_mods
        x_in = img.clone()
        if fused:
            assert can_fuse(x_in, *mods)
            assert not can_fuse(x_in.clone().requires_grad_(True), *mods)  # the modules
            x, q = pointwise_stem(x_in, *mods)
        else:
            x = mods[2](mods[1](mods[0](x_in)))
            q = DoReFa(1, "weights")(x)
        loss = (q * gq).sum() + (0 if gx is None else (x * gx).sum())
        loss.backward()
        return x.detach(), q.detach(), [p.grad for m in mods for p in m.parameters()]

    x1, q1, gp1 = run(True)
    x0, q0, gp0 = run(False)
    torch.testing.assert_close(x1, x0, rtol=1e-5, atol=1e-5)
    assert torch.equal(q1, q0)
    for a, b in zip(gp1, gp0, strict=True):
        assert_grad_close(a, b)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(bn, name), getattr(ref_mods[1], name))
    assert int(bn.num_batches_tracked) == int(ref_mods[1].num_batches_tracked) == 1


def test_binaryfacenet_trains_through_the_fused_stem(monkeypatch):
    """A BinaryFaceNet training forward takes the fused stem; inference, and a model
    with a hook on its stem, take the modules."""
    import binface.models.binaryfacenet as bfn

    calls = []
    real = bfn.pointwise_stem
    monkeypatch.setattr(bfn, "pointwise_stem", lambda *a: calls.append(1) or real(*a))
    model = create_model("binaryfacenet").train()
    x = torch.randn(2, 3, 112, 112)
    y = model(x)
    assert calls == [1]
    y.sum().backward()
    assert model.backbone[0][0].weight.grad is not None
    model.eval()
    with torch.no_grad():
        model(x)
    model.train()
    handle = model.backbone[0][1].register_forward_hook(lambda *a: None)
    model(x)
    assert calls == [1]
    handle.remove()
    seen = []
    model.backbone[1].register_forward_hook(lambda *a: seen.append(1))  # on the SE
    model(x)
    assert calls == [1] and seen == [1]


def test_binaryfacenet_fused_stem_gradients_match_the_modules(binaryfacenet_and_input,
                                                                 monkeypatch):
    """The whole network, fused stem against the modules one by one: same outputs (to
    float rounding) and every parameter's gradient to 1e-5."""
    import binface.models.binaryfacenet as bfn

    model, x = binaryfacenet_and_input
    state = {k: v.clone() for k, v in model.state_dict().items()}
    y_new, g_new = _grads(model, x)
    model.load_state_dict(state)
    with monkeypatch.context() as mp:
        mp.setattr(bfn, "can_fuse", lambda *a: False)
        y_ref, g_ref = _grads(model, x)
    model.load_state_dict(state)
    torch.testing.assert_close(y_new, y_ref, rtol=1e-4, atol=1e-4)
    assert_all_grads_close(g_new, g_ref)


@pytest.mark.parametrize("case", ["plain", "ties", "pads_both_sides"])
def test_scale_sign_pad_matches_the_ops(case):
    """binface.nn.scale_sign: pad(DoReFa(x * s)) with x's and s's gradients (the path
    through max|tanh(x s)|, ties split) as channel_scale, DoReFa and F.pad give them."""
    import torch.nn.functional as F

    from binface.nn.channel_scale import channel_scale
    from binface.nn.scale_sign import scale_sign_pad

    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 8, 10, 12, generator=gen)
    s = torch.rand(3, 8, 1, 1, generator=gen) + 0.1
    if case == "ties":  # the max of |x s| twice
        s[0, 2] = s[1, 5] = 1.0
        x[0, 2, 4, 4] = x[1, 5, 7, 1] = 9.0
    pads = (1, 2, 0, 3) if case == "pads_both_sides" else (0, 1, 0, 1)
    x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(3, 8, 10 + pads[0] + pads[1], 12 + pads[2] + pads[3], generator=gen)

    def run(fused):
        xa, sa = x.clone().requires_grad_(True), s.clone().requires_grad_(True)
        if fused:
            out = scale_sign_pad(xa, sa, pads)
        else:
            out = F.pad(DoReFa(1, "weights")(channel_scale(xa, sa)),
                        (pads[2], pads[3], pads[0], pads[1]), value=0.0)
        out.backward(g)
        return out.detach(), xa.grad, sa.grad

    o1, gx1, gs1 = run(True)
    o0, gx0, gs0 = run(False)
    assert torch.equal(o1, o0)
    assert_grad_close(gx1, gx0)
    assert_grad_close(gs1, gs0)


def test_binaryfacenet_under_bf16_autocast_takes_the_modules(monkeypatch):
    """bf16 autocast (train.amp=bf16): the fused paths step aside, training runs."""
    import binface.models.binaryfacenet as bfn

    calls = []
    real = bfn.pointwise_stem
    monkeypatch.setattr(bfn, "pointwise_stem", lambda *a: calls.append(1) or real(*a))
    model = create_model("binaryfacenet").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(2, 3, 112, 112))
    y.float().sum().backward()
    assert not calls and model.backbone[0][0].weight.grad is not None


def test_binaryfacenet_fused_paths_refuse_a_double_backward():
    """create_graph=True through the fused stem and SE output raises (their backward
    passes are not differentiable) rather than giving a wrong second derivative; the
    privacy attacks use binface.nn.twice_differentiable, where the modules run."""
    from binface.nn import twice_differentiable

    model = create_model("binaryfacenet").train()
    x = torch.randn(2, 3, 112, 112)
    w = model.backbone[0][0].weight
    with pytest.raises(RuntimeError):
        torch.autograd.grad(model(x).sum(), w, create_graph=True)
    with twice_differentiable():
        (g,) = torch.autograd.grad(model(x).sum(), w, create_graph=True)
        g.sum().backward()
