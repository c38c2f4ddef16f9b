"""Quantizers: small modules with a forward value and a straight-through gradient.

Each quantizer follows larq's definition (docs/quantizers.md). Without autograd
(inference, ``torch.export``, ONNX) a quantizer is only its forward value, a plain
tensor op. When a gradient is needed, the sign quantizers run as small
``autograd.Function``s that keep one tensor for the backward pass (a mask, or x):
binary training is dominated by element-wise work, and the generic "detach trick"
(``value.detach() + g(x) - g(x).detach()``, still used for multi-bit DoReFa) costs
several full-size temporaries per quantizer.

Attributes the profiler and the runtimes read:

- ``precision``: bits of the quantized value (1 for every sign-type quantizer).
- ``pm_one``: ``True`` when every output value is exactly +-1 (a per-channel scale
  factor applied afterwards is allowed, see ``scaled``), so a layer with such
  quantizers on both operands runs as xor + popcount.
- ``scaled``: ``True`` when the +-1 values are multiplied by a per-channel scale.
- :meth:`Quantizer.runtime_spec`: what the quantizer computes on activations in a
  runtime's terms (which sign rule, a learned shift), or a one-line
  ``UnsupportedOpError``. The runtimes read only this, so a new quantizer is added
  here alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from binface.errors import UnsupportedOpError
from binface.nn import autodiff, dorefa_kernels

__all__ = ["QUANTIZERS", "ApproxSign", "DoReFa", "EdeSign", "MagnitudeAwareSign", "Quantizer",
           "RPReLU", "RSign", "SignQuantizer", "SteSign", "SwishSign", "get_quantizer", "is_pm_one",
           "precision_of", "runtime_spec_of"]


def sign_pos(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with sign(0) = +1 (larq's ste_sign convention).

    sign(sign(x) + 0.5) maps {-1, 0, +1} to {-1, +1, +1} in two passes, several times
    faster than ``torch.where`` on a mask; -0.0 gives +1, as ``x >= 0`` does.
    """
    return torch.sign(x).add_(0.5).sign_()


def sign_neg(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with sign(0) = -1 (DoReFa at k = 1)."""
    return torch.sign(x).sub_(0.5).sign_()


def _straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """Forward ``value``, backward the gradient of ``surrogate``."""
    return value.detach() + (surrogate - surrogate.detach())


_ONE = torch.tensor(1.0)  # a 0-d operand: takes the other operand's dtype and device


def _needs_grad(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


class _SteSignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, clip: float) -> torch.Tensor:
        # |x| <= clip as bool passes only (no float |x| temporary)
        ctx.save_for_backward(torch.ge(x, -clip).logical_and_(torch.le(x, clip)))
        return sign_pos(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return g * mask, None


class _ApproxSignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return sign_pos(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        # (2 - 2|x|)^+ g in one buffer: -2|x| + 2 rounds as 2 - 2|x|
        return torch.abs(x).mul_(-2.0).add_(2.0).clamp_min_(0.0).mul_(g)


class _SwishSignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.beta = beta
        return sign_pos(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        b = ctx.beta
        bx = b * x
        return g * b * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx)), None


# below this size (kernels, small maps) sum(g tanh x) is taken with tanh itself: 2s - 1
# carries s's absolute rounding (~6e-8), large next to tanh x for small weights
_EXACT_TANH_NUMEL = 1 << 18
# above this size a float32 map takes the numba kernels (tests lower it)
_FUSED_NUMEL = _EXACT_TANH_NUMEL


class _DoReFa1Fn(torch.autograd.Function):
    """DoReFa weights mode at one bit: sign (sign(0) = -1) forward; the gradient of
    tanh(x) / max|tanh(x)|, including the path through the max (split over ties).

    Written for activation maps (BinaryFaceNet quantizes its inputs with it), where
    every full-size pass counts. Two identities keep tanh off the full map (PyTorch's
    CPU tanh is several times slower than its sigmoid):

    - max|tanh x| = tanh(max|x|) (tanh is odd and increasing), so the forward needs
      only a min/max pass over x and the sign;
    - with s = sigmoid(2x): tanh x = 2s - 1 and 1 - tanh^2 x = 4 s (1 - s), so the
      backward is one fused ``sigmoid_backward`` pass (g s (1 - s)) and a scale, and
      the path through the max needs sum(g tanh x) = 2 sum(g s) - sum(g) (two dots).

    The elements at the max are those where |x| = max|x| (ties split evenly).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.parts = None
        if _fused(x):  # large float32 maps: one numba pass (binface.nn.dorefa_kernels)
            out = torch.empty_like(x)
            ctx.parts = dorefa_kernels.forward(_flat(x), _flat(out))
            ctx.lo_hi = (float(ctx.parts[0].min()), float(ctx.parts[1].max()))
            if np.isnan(ctx.lo_hi).any():  # NaN: the backward is PyTorch's, as before
                ctx.parts = None
                return sign_neg(x)
            return out
        lo, hi = torch.aminmax(_flat(x) if _is_dense(x) else x)  # one pass, no copy
        ctx.lo_hi = (float(lo), float(hi))
        return sign_neg(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        lo, hi = ctx.lo_hi
        a = torch.maximum(torch.tensor(hi, dtype=x.dtype), torch.tensor(-lo, dtype=x.dtype))
        m = torch.tanh(a)  # max|tanh x|, a 0-d tensor in x's dtype
        if ctx.parts is not None and g.stride() == x.stride() and _is_dense(g):
            return _fused_backward(ctx, x, g, m, lo, hi)
        s = torch.mul(x, 2.0).sigmoid_()  # 2x is exact; one buffer laid out as x
        # d/dm of sum(g t / m) = -sum(g t) / m^2, with sum(g t) = 2 sum(g s) - sum(g)
        # (saturated, m = 1: 1 - t^2 = 0 at the max and nothing flows through it)
        gt = None if float(m) == 1.0 else _sum_g_tanh(g, s, x)
        # g (1 - t^2) / m = 4 g s (1 - s) / m, written over s (no second buffer)
        grad = torch.ops.aten.sigmoid_backward.grad_input(g, s, grad_input=s).mul_(4.0 / m)
        if gt is None:
            return grad
        dm = -gt / (m * m)
        if not bool(torch.isfinite(dm)):
            return grad
        # dm/dx = sign(x) (1 - t^2) where |x| = max|x|, split over ties: a few elements
        same = grad.stride() == x.stride() and _is_dense(x)  # 1-D views in memory order
        flat_x = _flat(x) if same else x.reshape(-1)  # else in logical order
        idx = _at_max(flat_x, a, lo, hi)
        corr = torch.sign(flat_x[idx]) * (1.0 - m * m) * (dm / idx.numel())
        if same:
            _flat(grad).index_add_(0, idx, corr)
            return grad
        return grad + torch.zeros_like(flat_x).index_add_(0, idx, corr).view(x.shape)


def _fused(x: torch.Tensor) -> bool:
    """Whether DoReFa's one-bit Function takes the numba kernels: a large dense float32
    CPU map (kernels and small maps keep the PyTorch path and its exact tanh)."""
    return (x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() > 0
            and x.numel() > _FUSED_NUMEL and _is_dense(x))


def _fused_backward(ctx, x, g, m, lo: float, hi: float) -> torch.Tensor:
    """``_DoReFa1Fn.backward`` with the numba pass (same formulas, see its docstring)."""
    fm = float(m)
    grad = torch.empty_like(x)  # 4 g s (1 - s) / m, s = sigmoid(2x), laid out as x
    gs, gsum = dorefa_kernels.backward_from_x(_flat(g), _flat(x), _flat(grad), 4.0 / fm)
    if fm == 1.0:
        return grad
    dm = -(2.0 * gs - gsum) / (fm * fm)  # sum(g tanh x) = 2 sum(g s) - sum(g)
    if not np.isfinite(dm):
        return grad
    flat_x = _flat(x)
    where = torch.from_numpy(dorefa_kernels.extreme_indices(flat_x, *ctx.parts, lo, hi))
    if where.numel() == 0:
        return grad
    corr = torch.sign(flat_x[where]) * (1.0 - m * m) * (dm / where.numel())
    _flat(grad).index_add_(0, where, corr.to(grad.dtype))
    return grad


def _sum_g_tanh(g: torch.Tensor, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum(g tanh x), given s = sigmoid(2x)."""
    if x.numel() <= _EXACT_TANH_NUMEL:  # kernels: 2s - 1 loses digits where |x| << 1
        return (g * torch.tanh(x)).sum()
    if g.stride() == s.stride() and _is_dense(s):  # 1-D views in memory order
        return 2.0 * torch.dot(_flat(g), _flat(s)) - _flat(g).sum()
    return (g * (2.0 * s - 1.0)).sum()  # e.g. a stride-0 gradient from y.sum().backward()


def _at_max(flat: torch.Tensor, m: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Indices of the elements of a 1-D tensor where |t| = m (m = max(hi, -lo)): one
    comparison pass when the max sits on one side (t = m or t = -m), else two."""
    if lo == -hi:
        at_max = torch.eq(flat, m).logical_or_(torch.eq(flat, -m))
    else:
        at_max = torch.eq(flat, hi if hi > -lo else lo)
    return at_max.nonzero().view(-1)


def _is_dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill a block of memory without gaps or overlaps (any dim
    order: contiguous, channels-last...), as outputs of element-wise ops do."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride(), strict=True)
                               if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements as a 1-D view in memory order (no copy)."""
    return t.as_strided((t.numel(),), (1,))


class Quantizer(nn.Module):
    """Base class: subclasses set ``precision``, ``pm_one``, implement ``forward`` and,
    when a runtime can run them on activations, :meth:`runtime_spec`."""

    precision: int = 32
    pm_one: bool = False
    scaled: bool = False

    def runtime_spec(self) -> dict[str, Any]:
        """What this quantizer computes on activations, in runtime terms.

        ``{"kind": "pos"}``: sign with sign(0) = +1; ``{"kind": "neg"}``: sign with
        sign(0) = -1; ``{"kind": "dorefa", "k_bit": k}``: k-bit DoReFa activations (a
        float op). An optional ``"shift"`` (a per-channel tensor) is added to the
        input before the sign. Quantizers no runtime can run raise a one-line
        ``UnsupportedOpError``; this default does. See docs/quantizers.md.
        """
        raise UnsupportedOpError(f"quantizer {type(self).__name__} ({self.extra_repr()}) is "
                                 "not supported by the packed engine")

    def extra_repr(self) -> str:
        return f"precision={self.precision}"


class SignQuantizer(Quantizer):
    """A sign with sign(0) = +1 forward (larq's ste_sign value); subclasses pick the gradient.

    Every such quantizer runs as the same ``pos`` sign: the gradient is training-only.
    """

    precision = 1
    pm_one = True

    def runtime_spec(self) -> dict[str, Any]:
        return {"kind": "pos"}


class SteSign(SignQuantizer):
    """sign(x) (sign(0) = +1); gradient 1 where |x| <= clip_value, else 0."""

    def __init__(self, clip_value: float = 1.0) -> None:
        super().__init__()
        self.clip_value = float(clip_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _needs_grad(x):
            return sign_pos(x)
        if autodiff.enabled():
            return _straight_through(sign_pos(x), x.clamp(-self.clip_value, self.clip_value))
        return _SteSignFn.apply(x, self.clip_value)

    def extra_repr(self) -> str:
        return f"clip_value={self.clip_value}"


class ApproxSign(SignQuantizer):
    """sign(x) (sign(0) = +1); gradient 2(1 - |x|) on [-1, 1] (Bi-Real Net)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _needs_grad(x) and autodiff.enabled():  # d/dx (2x - x|x|) = 2 - 2|x| on [-1, 1]
            return _straight_through(sign_pos(x), torch.where(
                x.abs() <= 1.0, 2.0 * x - x * x.abs(), torch.sign(x).detach()))
        return _ApproxSignFn.apply(x) if _needs_grad(x) else sign_pos(x)


class SwishSign(SignQuantizer):
    """sign(x) (sign(0) = +1); gradient of the swish-shaped sign, beta (BNN+).

    d/dx = beta * (2 - beta * x * tanh(beta * x / 2)) / (1 + cosh(beta * x)),
    the derivative of 2 * sigmoid(beta x) * (1 + beta x (1 - sigmoid(beta x))) - 1.
    """

    def __init__(self, beta: float = 5.0) -> None:
        super().__init__()
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _needs_grad(x) and autodiff.enabled():  # the SS function, whose derivative it is
            s = torch.sigmoid(self.beta * x)
            return _straight_through(sign_pos(x), 2.0 * s * (1.0 + self.beta * x * (1.0 - s))
                                     - 1.0)
        return _SwishSignFn.apply(x, self.beta) if _needs_grad(x) else sign_pos(x)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class _EdeSignFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, t: float, k: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.t, ctx.k = t, k
        return sign_pos(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        # k t (1 - tanh^2(t x)) g in one buffer
        th = torch.mul(x, ctx.t).tanh_()
        return torch.sub(_ONE, th.mul_(th), out=th).mul_(g).mul_(ctx.k * ctx.t), None, None


class EdeSign(SignQuantizer):
    """sign(x) (sign(0) = +1); IR-Net's error-decay estimator as the gradient.

    d/dx = k t (1 - tanh^2(t x)) with k = max(1/t, 1): a wide, STE-like gradient
    at small ``t`` that sharpens towards the true sign as ``t`` grows (IR-Net raises
    ``t`` from 0.1 to 10 over training; set ``quantizer.t`` from your schedule).
    """

    def __init__(self, t: float = 1.0) -> None:
        super().__init__()
        if not t > 0:
            raise ValueError(f"EdeSign t must be positive, got {t}")
        self.t = float(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _needs_grad(x):
            return sign_pos(x)
        k = max(1.0 / self.t, 1.0)
        if autodiff.enabled():
            return _straight_through(sign_pos(x), k * torch.tanh(self.t * x))
        return _EdeSignFn.apply(x, self.t, k)

    def extra_repr(self) -> str:
        return f"t={self.t}"


def _round_ste(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Round to ``levels`` steps on [0, 1] with an identity gradient.

    ``torch.round`` rounds half to even like ``tf.round``, which is what makes
    DoReFa's sign(0) = -1 at one bit.
    """
    return _straight_through(torch.round(x * levels) / levels, x)


class DoReFa(Quantizer):
    """DoReFa-Net quantizer with ``k_bit`` bits.

    ``mode="activations"``: clip to [0, 1], round to k bits (gradient 1 inside).
    ``mode="weights"``: tanh, divide by 2 max|tanh|, add 0.5, round to k bits, map
    to [-1, 1]. At k = 1 the weights-mode value is sign(x) with sign(0) = -1.
    """

    def __init__(self, k_bit: int = 2, mode: str = "activations") -> None:
        super().__init__()
        if mode not in ("activations", "weights"):
            raise ValueError(f"DoReFa mode must be 'activations' or 'weights', got {mode!r}")
        if int(k_bit) < 1:
            raise ValueError(f"DoReFa k_bit must be >= 1, got {k_bit}")
        self.k_bit = int(k_bit)
        self.mode = mode
        self.precision = self.k_bit
        self.pm_one = self.k_bit == 1 and mode == "weights"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.k_bit - 1
        if self.pm_one:  # one bit, weights mode: the forward value is sign(x), sign(0) = -1
            if _needs_grad(x) and autodiff.enabled():
                t = torch.tanh(x)
                return _straight_through(sign_neg(x), t / t.abs().amax())
            return _DoReFa1Fn.apply(x) if _needs_grad(x) else sign_neg(x)
        if self.mode == "activations":
            return _round_ste(x.clamp(0.0, 1.0), levels)
        t = torch.tanh(x)
        t = t / (2.0 * t.abs().max()) + 0.5
        return 2.0 * _round_ste(t, levels) - 1.0

    def runtime_spec(self) -> dict[str, Any]:
        """``neg`` at one bit in weights mode, ``dorefa`` in activations mode.

        The float formula at one bit also sends positive values below 2^-24 max|tanh x|
        (of the whole batch) to -1, as 0.5 + tiny rounds to 0.5; ``neg`` does not copy
        that rounding artefact (it would need a batch-wide max before any sign).
        Multi-bit weights mode is a weight quantizer only.
        """
        if self.pm_one:
            return {"kind": "neg"}
        if self.mode == "activations":
            return {"kind": "dorefa", "k_bit": self.k_bit}
        return super().runtime_spec()

    def extra_repr(self) -> str:
        return f"k_bit={self.k_bit}, mode={self.mode!r}"


class MagnitudeAwareSign(Quantizer):
    """Bi-Real Net weight quantizer: ste_sign(w) times the mean |w| of each output channel.

    The scale is treated as a constant in the backward pass (larq stops its gradient).
    Channel axis 0 is the output channel of a PyTorch kernel (O, I, kH, kW).
    """

    precision = 1
    pm_one = True
    scaled = True

    def __init__(self, clip_value: float = 1.0) -> None:
        super().__init__()
        self.clip_value = float(clip_value)
        self._sign = SteSign(clip_value)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(1, w.dim()))
        scale = w.abs().mean(dim=dims, keepdim=True).detach() if dims else w.abs().detach()
        return scale * self._sign(w)

    def runtime_spec(self) -> dict[str, Any]:
        """A weight quantizer only: on activations its scale would depend on the batch."""
        raise UnsupportedOpError("MagnitudeAwareSign as an input quantizer is not supported "
                                 "by the packed engine (its scale depends on the batch)")

    def extra_repr(self) -> str:
        return f"clip_value={self.clip_value}"


class RSign(SignQuantizer):
    """ReActNet's RSign: a learnable per-channel shift, then sign (ApproxSign gradient).

    Output is sign(x + beta_c), sign(0) = +1; input is (N, C, ...).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(channels))
        self._sign = ApproxSign()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return self._sign(x + self.shift.view(shape))

    def runtime_spec(self) -> dict[str, Any]:
        return {"kind": "pos", "shift": self.shift.detach().float().clone()}

    def extra_repr(self) -> str:
        return f"channels={self.shift.numel()}"


class RPReLU(nn.Module):
    """ReActNet's RPReLU: shift, PReLU with a per-channel slope, shift."""

    def __init__(self, channels: int, init_slope: float = 0.25) -> None:
        super().__init__()
        self.shift_in = nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), float(init_slope)))
        self.shift_out = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = x - self.shift_in.view(shape)
        y = torch.where(y >= 0, y, self.slope.view(shape) * y)
        return y + self.shift_out.view(shape)


QUANTIZERS: dict[str, type[Quantizer]] = {
    "ste_sign": SteSign,
    "approx_sign": ApproxSign,
    "swish_sign": SwishSign,
    "ede_sign": EdeSign,
    "dorefa": DoReFa,
    "magnitude_aware_sign": MagnitudeAwareSign,
}


def get_quantizer(spec: str | Quantizer | None, **kwargs) -> Quantizer | None:
    """A quantizer from a name (``"ste_sign"``), an instance, or ``None`` (float)."""
    if spec is None or isinstance(spec, Quantizer):
        return spec
    try:
        return QUANTIZERS[spec](**kwargs)
    except KeyError:
        raise ValueError(f"unknown quantizer {spec!r}; known: {', '.join(QUANTIZERS)}") from None


def precision_of(q: Quantizer | None) -> int:
    """Bits a quantizer produces; 32 for no quantizer (a float operand)."""
    return 32 if q is None else int(q.precision)


def runtime_spec_of(q: Quantizer | None) -> dict[str, Any]:
    """:meth:`Quantizer.runtime_spec`, and ``{"kind": "none"}`` for no quantizer."""
    return {"kind": "none"} if q is None else q.runtime_spec()


def is_pm_one(q: Quantizer | None) -> bool:
    """Whether the operand is +-1 (possibly times a per-channel scale) after ``q``."""
    return q is not None and bool(q.pm_one)
