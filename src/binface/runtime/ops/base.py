"""The base of every engine op: one node of a ``.bfp`` graph, prepared once at load."""

from __future__ import annotations

import numpy as np

from binface.runtime import kernels as K
from binface.runtime.errors import PackedFormatError
from binface.runtime.ops.layout import _DUMMY_F4, _DUMMY_U4, _F32, as_nchw, nhwc, resolve


class RunContext:
    """Per-run state: batch size and trace collection."""

    def __init__(self, n: int, trace: bool, fresh: bool = False) -> None:
        self.n = n
        self.trace = trace
        self.fresh = trace or fresh
        self.records: list[dict] = []
        self.floats: dict[str, np.ndarray] = {}  # packed value -> the float it is the sign of
        self.chains: dict = {}  # concatenation chain -> its buffer
        self.bases: dict[str, tuple] = {}  # value -> (chain buffer, channels) it is a view of


class Op:
    """One node, prepared once at load: tensors resolved, cfg arrays built."""

    def __init__(self, node: dict, tensors: dict[str, np.ndarray], graph: dict) -> None:
        self.node = node
        self.name = node.get("name", node["op"])
        self.inputs = node["in"]
        self.outputs = node["out"]
        self.attrs = node.get("attrs", {})
        self.tensors = tensors
        self.shapes = graph.get("shapes", {})

    def buffer(self, ctx: RunContext, key: str, shape: tuple, dtype=_F32,
               zero: bool = False) -> np.ndarray:
        """An output array, reused from run to run (fresh ones would page-fault every time).

        Packed outputs are zeroed once: kernels never write their halo. Trace runs
        (whose records outlive the run) and runs on several threads get fresh arrays.
        """
        if ctx.fresh:
            return np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
        bufs = self.__dict__.setdefault("_bufs", {})
        arr = bufs.get(key)
        if arr is None or arr.shape != shape:
            arr = np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
            bufs[key] = arr
        return arr

    def t(self, key: str) -> np.ndarray | None:
        name = self.attrs.get(key)
        if name is None:
            return None
        try:
            return self.tensors[name]
        except KeyError:
            raise PackedFormatError(f"node {self.name}: tensor {name!r} is missing") from None

    def __call__(self, env: dict, ctx: RunContext) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _epilogue_cfg(cfg: np.ndarray, attrs: dict, out_float: bool) -> None:
    pk = attrs.get("pack")
    cfg[K.EP_NRES] = int(attrs.get("nres", 0))
    cfg[K.EP_OUT_FLOAT] = int(out_float)
    cfg[K.EP_OUT_PACK] = int(pk is not None)
    if pk is not None:
        cfg[K.EP_PMODE] = 0 if pk["mode"] == "pos" else 1
        cfg[K.EP_PG] = pk["groups"]
        cfg[K.EP_PCG] = pk["cg"]
        cfg[K.EP_PWPG] = (pk["cg"] + 63) // 64
        cfg[K.EP_PPT] = pk["pads"][0]
        cfg[K.EP_PPL] = pk["pads"][2]


class _ConvLike(Op):
    """Shared plumbing of the ops with a fused epilogue: residual inputs and outputs."""

    n_main_inputs = 1

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        a = self.attrs
        self.ep = self.t("ep")
        self.out_float = bool(a.get("out_float", True))
        self.pack = a.get("pack")
        self.nres = int(a.get("nres", 0))
        self.linear = bool(a.get("linear", False))
        self.cfg = np.zeros(K.CFG_SIZE, np.int64)
        _epilogue_cfg(self.cfg, a, self.out_float)
        self.out_shape = a["out_shape"]  # logical output shape (N, O, Ho, Wo) or (..., O)

    def residuals(self, env: dict) -> tuple[np.ndarray, np.ndarray]:
        res = [_DUMMY_F4, _DUMMY_F4]
        for i in range(self.nres):
            r = env[self.inputs[self.n_main_inputs + i]]
            res[i] = nhwc(r) if r.ndim == 4 else np.ascontiguousarray(
                r.reshape(-1, 1, 1, r.shape[-1]), dtype=_F32)
        return res[0], res[1]

    def alloc_outputs(self, ctx: RunContext, m: int, ho: int, wo: int, nout: int):
        """(float NHWC or dummy, packed or dummy, cfg) for one call."""
        cfg = self.cfg
        want_float = self.out_float or ctx.trace
        if want_float != bool(cfg[K.EP_OUT_FLOAT]):
            cfg = cfg.copy()
            cfg[K.EP_OUT_FLOAT] = int(want_float)
        y = self.buffer(ctx, "y", (m, ho, wo, nout)) if want_float else _DUMMY_F4
        q = _DUMMY_U4
        if self.pack is not None:
            pk = self.pack
            t, b, l, r = pk["pads"]
            q = self.buffer(ctx, "q", (m, ho + t + b, wo + l + r,
                                       pk["groups"] * ((pk["cg"] + 63) // 64)), np.uint64, True)
        return y, q, cfg

    def store(self, env: dict, ctx: RunContext, y: np.ndarray, q: np.ndarray) -> None:
        outs = list(self.outputs)
        yl = None
        if self.out_float or ctx.trace:
            yl = self.logical(y, ctx.n)
        if self.out_float:
            env[outs.pop(0)] = yl
        if self.pack is not None:
            qname = outs.pop(0)
            env[qname] = q
            if ctx.trace:
                ctx.floats[qname] = yl
        if ctx.trace and yl is not None:
            ctx.floats[self.name + ":y"] = yl

    def logical(self, y: np.ndarray, n: int) -> np.ndarray:
        if self.linear:
            return y.reshape(resolve(self.out_shape, n))
        return as_nchw(y)
