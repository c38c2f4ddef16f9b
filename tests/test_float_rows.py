"""The packed engine's float ops as row kernels: element-wise ops on any layouts and
broadcasts, softmax, reductions, splits and concatenations (``kernels.ew``,
``reduce3``, ``softmax_rows``; ``ops/layout.rows3``). They must equal numpy (the trace
runs' path) bit for bit where numpy's order of operations is the same, replay with new
values, and give the same bits on 2 threads as on 1."""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from binface.runtime import kernels as K
from binface.runtime.capture import capture
from binface.runtime.engine import PackedEngine
from binface.runtime.lower import lower
from binface.runtime.ops.layout import like, rows3

_NP = {K.EW_ADD: np.add, K.EW_SUB: np.subtract, K.EW_MUL: np.multiply,
       K.EW_DIV: np.true_divide, K.EW_MAX: np.maximum, K.EW_MIN: np.minimum}


@st.composite
def _operands(draw):
    """An output shape, a layout for the result, and two inputs that broadcast to it,
    each a transposed and / or sliced view of a larger array."""
    nd = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=nd, max_size=nd)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))

    def operand():
        dims = tuple(s if draw(st.booleans()) else 1 for s in shape)
        dims = dims[draw(st.integers(0, nd)):]  # numpy's broadcast: leading dims may go
        perm = draw(st.permutations(range(len(dims))))
        big = [d + draw(st.integers(0, 2)) for d in dims]
        base = rng.uniform(0.5, 2, [big[p] for p in perm]).astype(np.float32)
        v = base[tuple(slice(0, dims[p]) for p in perm)]
        return np.asarray(v.transpose(np.argsort(perm)))  # 0-d stays an array

    order = draw(st.permutations(range(nd)))  # the result's memory order
    return shape, order, operand(), operand()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_operands(), st.sampled_from(sorted(_NP)))
def test_ew_equals_numpy_on_any_layout(case, fn):
    shape, order, a, b = case
    ref = np.empty([shape[p] for p in order], np.float32).transpose(np.argsort(order))
    mem, axes = like(ref, shape)
    y = np.empty(mem, np.float32).transpose(axes)
    assert y.shape == shape and np.argsort(y.strides).tolist() == np.argsort(
        ref.strides).tolist() or 1 in shape  # ref's layout (ties: size-1 dims)
    views = rows3(y, a, b)
    if views is None:  # only 4 dims can fail to fold to 3
        assert len(shape) == 4
        return
    K.ew(fn, False)(views[1], views[2], views[0], 1)  # threads: the engine test below
    assert np.array_equal(y, np.broadcast_to(_NP[fn](a, b), shape))
    copy = np.full(mem, np.nan, np.float32).transpose(axes)
    v = rows3(copy, a)
    if v is not None:
        K.ew(K.EW_COPY, False)(v[1], v[1], v[0], 1)
        assert np.array_equal(copy, np.broadcast_to(a, shape))


def test_max_min_propagate_nan_and_sigmoid_matches_numpy():
    a = np.array([[[1.0, np.nan, 2.0, -1.0, np.inf, -np.inf]]], np.float32)
    b = np.array([[[np.nan, 3.0, 2.0, -2.0, 1.0, 0.0]]], np.float32)
    for code, fn in ((K.EW_MAX, np.maximum), (K.EW_MIN, np.minimum)):
        y = np.empty_like(a)
        K.ew(code, False)(a, b, y, 1)
        np.testing.assert_array_equal(y, fn(a, b))
    x = np.linspace(-20, 20, 301, dtype=np.float32).reshape(1, 1, -1)
    y = np.empty_like(x)
    K.ew(K.EW_SIGMOID, False)(x, x, y, 1)
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-x)), rtol=1e-6, atol=0)  # libm exp


def test_rows3_refuses_what_does_not_fold_to_three_dims():
    y = np.empty((2, 3, 4, 5), np.float32)
    a = np.ones((2, 3, 4, 5), np.float32).transpose(0, 2, 1, 3).copy().transpose(0, 2, 1, 3)
    c = np.ones((1, 3, 1, 1), np.float32)  # per channel: dims (0), (1), (2, 3)
    assert [v.shape for v in rows3(y, y, c)] == [(2, 3, 20)] * 3
    b = np.ones((2, 1, 4, 1), np.float32)  # no two neighbouring dims merge: 4 groups
    assert rows3(y, a, b) is None


class FloatOps(torch.nn.Module):
    """Attention's float ops on channels-last and channels-first views."""

    def forward(self, x):
        n, c, h, w = x.shape
        t = x.permute(0, 2, 3, 1)  # (n, h, w, c): a channels-last view
        a = t * 0.5 + x.mean(dim=1, keepdim=True).permute(0, 2, 3, 1)
        q, k, v = torch.split(a, [1, 2, c - 3], dim=-1)
        s = torch.softmax(q.reshape(n, 1, h * w), dim=-1)  # over the tokens
        ctx = (k.reshape(n, h * w, 2).transpose(1, 2) * s).sum(dim=2)  # (n, 2)
        z = v * v / (1.5 + ctx.amax(dim=1).reshape(n, 1, 1, 1))
        m = torch.cat([z, a, z - a[..., 3:]], dim=-1)
        g = torch.sigmoid(F.normalize(m, dim=2)).clamp(0.3, 0.7)  # norm, clamp, expand
        r = torch.cat([m.amin(dim=(1, 2)), m.sum(dim=(1, 3)), s.reshape(n, -1),
                       torch.softmax(m, dim=1).reshape(n, -1), g.reshape(n, -1),
                       m.clamp(min=1.0).reshape(n, -1)], dim=1)
        return r * 2.0 - 1.0


def _engine(threads: int) -> PackedEngine:
    ir = capture(FloatOps().eval(), (4, 5), channels=8)
    eng = PackedEngine(*lower(ir), threads=threads)
    return eng


def test_float_ops_as_row_kernels_match_numpy_torch_and_one_thread():
    one, two, tracer = _engine(1), _engine(2), _engine(1)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 8, 4, 5)).astype(np.float32)
    for _ in range(6):  # replays, the flat replay, then (2 threads) the regions
        x[...] = rng.standard_normal(x.shape)  # new values in the same array
        got, got2 = one.run(x), two.run(x)
        assert np.array_equal(got, got2)
        numpy_path = tracer.run(x, trace=True)[0]  # trace runs take numpy's functions
        np.testing.assert_allclose(got, numpy_path, rtol=1e-5, atol=1e-5)  # exp, sum order
        with torch.no_grad():
            want = FloatOps()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    kinds = {type(op).__name__ for op in one.ops}
    assert {"SoftmaxOp", "ReduceOp", "SplitOp", "CatOp", "BinaryOp", "VectorNormOp",
            "ClampOp", "UnaryOp", "ExpandOp"} <= kinds
    assert all(op._fast is not None for op in one.ops), [
        op.name for op in one.ops if op._fast is None]
    assert one._flat is not None  # every op replays: one flat list of calls
    names = {getattr(fn, "__name__", "") for fn, _ in one._flat[3]}
    assert {"ew3_0", "ew3_2", "ew3_4", "reduce3", "softmax_rows"} <= names
    if numba.threading_layer() == "omp":
        assert two._plan is not None and two._plan[0] is two._flat
