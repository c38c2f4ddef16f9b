"""The base of every engine op: one node of a ``.bfp`` graph, prepared once at load.

A ``.bfp`` file may come from anywhere, and the numba kernels trust their ``cfg``
arrays and the shapes of the arrays they are given (no bounds checks: that is what
makes them fast). So each op checks, in its constructor, every attribute and tensor
its kernel relies on (the helpers below; a defect is a ``PackedFormatError`` naming
the node), and checks the arrays it takes from other nodes where it calls a kernel
(a few integer comparisons). The limits here are far above what any model reaches.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from binface.runtime import kernels as K
from binface.runtime.errors import PackedFormatError
from binface.runtime.ops.layout import (
    _DUMMY_F4,
    _DUMMY_U4,
    _F32,
    aligned_empty,
    as_nchw,
    nhwc,
    resolve,
)

MAX_INT = 1 << 24  # any dimension, pad, stride, kernel size or count in an attribute
MAX_VALUE_BYTES = 1 << 30  # one value (or an op's buffer), per sample of the batch
MAX_MACS = 1 << 36  # multiply-accumulates of one op, per sample

_U64 = np.dtype(np.uint64)
_REQUIRED = object()


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def conv_out(size: int, pad_lo: int, pad_hi: int, kernel: int, stride: int,
             dilation: int = 1, ceil_mode: bool = False) -> int:
    """PyTorch's output length of a conv / pool along one axis (0 if the window never fits)."""
    span = size + pad_lo + pad_hi - dilation * (kernel - 1) - 1
    if span < 0 or stride < 1:
        return 0
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + pad_lo:  # the last window must start inside the input
        out -= 1
    return out


def _slot_view(slot: tuple, n: int, shape: tuple, dtype) -> np.ndarray:
    """``shape`` over the memory of a shared buffer (``share_float_maps``), sized for
    the largest of its users at batch ``n``; the same array object run after run while
    that memory stays (replays compare objects)."""
    pool, sid, users = slot
    need = math.prod(shape) * np.dtype(dtype).itemsize
    raw = pool.get(sid)
    if raw is None or raw.nbytes < need:
        cap = max(math.prod(resolve(s, n)) for s in users) * np.dtype(dtype).itemsize
        raw = pool[sid] = aligned_empty(max(cap, need), np.uint8)
    views = pool.setdefault(("views", sid), {})
    kept = views.get((shape, dtype))
    if kept is None or kept[0] is not raw:
        kept = views[(shape, dtype)] = (raw, raw[:need].view(dtype).reshape(shape))
    return kept[1]


class RunContext:
    """Per-run state: batch size, trace collection, and the kernel set (``k``: the
    serial kernels, or their ``parallel=True`` twins for one input on several threads)."""

    def __init__(self, n: int, trace: bool, parallel: bool = False) -> None:
        self.n = n
        self.trace = trace
        self.fresh = trace
        self.k = K.PARALLEL if parallel else K
        self.nt = numba.get_num_threads() if parallel else 1  # the row kernels' chunks
        self.records: list[dict] = []
        self.floats: dict[str, np.ndarray] = {}  # packed value -> the float it is the sign of
        self.chains: dict = {}  # concatenation chain -> its buffer
        self.bases: dict[str, tuple] = {}  # value -> (chain buffer, channels) it is a view of


class Op:
    """One node, prepared once at load: tensors resolved, cfg arrays built."""

    n_inputs: tuple[int, int] = (1, 1)  # how many inputs the op takes (least, most)
    n_outputs: tuple[int, int] = (1, 1)
    n_main_inputs = 1  # inputs before the residuals; replays check all of them
    nres = 0
    macs_per_sample = 0

    def __init__(self, node: dict, tensors: dict[str, np.ndarray], graph: dict) -> None:
        self.node = node
        self.name = node.get("name", node["op"])
        self.inputs = node["in"]
        self.outputs = node["out"]
        self.attrs = node.get("attrs", {})
        self.tensors = tensors
        self.shapes = graph.get("shapes", {})
        if not isinstance(self.attrs, dict):
            raise self.bad("attrs is not a JSON object")
        lo, hi = self.n_inputs
        if not lo <= len(self.inputs) <= hi:
            raise self.bad(f"takes {lo}..{hi} inputs, has {len(self.inputs)}")
        lo, hi = self.n_outputs
        if not lo <= len(self.outputs) <= hi:
            raise self.bad(f"makes {lo}..{hi} outputs, has {len(self.outputs)}")

    def replayed(self, env: dict, ctx: RunContext) -> bool:
        """Re-issue the last run's kernel calls if this run is like it: the same input
        objects (kept buffers and their views), so the same arguments. Skips the checks
        and lookups, 5-8 us an op."""
        fast = self.__dict__.get("_fast")
        if fast is None or ctx.trace or fast[0] is not ctx.k:
            return False
        _, ins, calls, outs = fast
        for name, obj in ins:
            if env[name] is not obj:
                return False
        self.issue(calls)
        env.update(outs)
        return True

    @staticmethod
    def issue(calls: list) -> None:
        """Run kernel calls given as (function, arguments) pairs."""
        for fn, args in calls:
            fn(*args)

    def kept_view(self, y: np.ndarray, n: int, make) -> np.ndarray:
        """``make(y)``, the same object while the buffer ``y`` and the batch are the same:
        the next op's inputs are then the very objects it saw last run, so it replays."""
        last = self.__dict__.get("_yl")
        if last is None or last[0] is not y or last[1] != n:
            self._yl = last = (y, n, make(y))
        return last[2]

    def remember(self, env: dict, ctx: RunContext, calls: list, views: tuple | None) -> None:
        """Keep this run's kernel calls for :meth:`replayed`, when every array they read
        is a kept buffer or a view of one or of an input (``views``: the arrays the op
        derived from its inputs; None: not replayable). A copy made here (a residual or
        input turned channels-last) would be stale next time. Replays check the first
        ``n_main_inputs + nres`` inputs, or as many as ``views`` has."""
        self._fast = None
        if ctx.trace or ctx.fresh or views is None:
            return
        ins = self.inputs[:max(self.n_main_inputs + self.nres, len(views))]
        for name, v in zip(ins, views, strict=False):
            src = env[name]
            if v is not _DUMMY_F4 and v is not src and (v.base is None or (
                    v.base is not src and v.base is not src.base)):
                return
        self._fast = (ctx.k, [(n, env[n]) for n in ins], calls,
                      {o: env[o] for o in self.outputs})

    # -- checks of the file (at load) and of the arrays a kernel is given (at run)
    def bad(self, problem: str) -> PackedFormatError:
        """The error for a defect of this node (the engine adds the file name)."""
        return PackedFormatError(f"node {self.name} ({self.node.get('op')}): {problem}")

    def int_attr(self, key: str, lo: int = 0, hi: int = MAX_INT, default=_REQUIRED,
                 where: dict | None = None) -> int:
        a = self.attrs if where is None else where
        v = a.get(key, default)
        if v is _REQUIRED:
            raise self.bad(f"attribute {key!r} is missing")
        if not _is_int(v) or not lo <= v <= hi:
            raise self.bad(f"attribute {key!r} must be an integer in [{lo}, {hi}], "
                           f"not {_short(v)}")
        return v

    def ints_attr(self, key: str, n: int, lo: int = 0, hi: int = MAX_INT, default=_REQUIRED,
                  where: dict | None = None) -> list[int]:
        a = self.attrs if where is None else where
        v = a.get(key, default)
        if v is _REQUIRED:
            raise self.bad(f"attribute {key!r} is missing")
        if (not isinstance(v, list) or len(v) != n
                or not all(_is_int(x) and lo <= x <= hi for x in v)):
            raise self.bad(f"attribute {key!r} must be {n} integers in [{lo}, {hi}], "
                           f"not {_short(v)}")
        return list(v)

    def tensor(self, key: str, dtype, shape: tuple | None = None, ndim: int | None = None,
               required: bool = True) -> np.ndarray | None:
        """The tensor named by attribute ``key``, of ``dtype`` and ``shape`` / ``ndim``."""
        name = self.attrs.get(key)
        if name is None and not required:
            return None
        if not isinstance(name, str):
            raise self.bad(f"attribute {key!r} must name a tensor, not {_short(name)}")
        arr = self.tensors.get(name)
        if arr is None:
            raise self.bad(f"tensor {name!r} ({key}) is missing")
        if arr.dtype != np.dtype(dtype):
            raise self.bad(f"tensor {name!r} ({key}) has dtype {arr.dtype}, "
                           f"not {np.dtype(dtype)}")
        if (shape is not None and arr.shape != tuple(shape)) or (
                ndim is not None and arr.ndim != ndim):
            want = tuple(shape) if shape is not None else f"{ndim}-D"
            raise self.bad(f"tensor {name!r} ({key}) has shape {arr.shape}, not {want}")
        return arr

    def declared(self, value: str, ndim: int | None = None) -> tuple[int, ...]:
        """The declared shape (graph ``shapes``) of ``value`` at batch size 1."""
        s = self.shapes.get(value) if isinstance(self.shapes, dict) else None
        dims = check_dims(s) if s is not None else None
        if dims is None or (ndim is not None and len(dims) != ndim):
            raise self.bad(f"value {value!r} has no valid declared {ndim or ''}-D shape")
        return dims

    def check_size(self, nbytes: int, what: str = "output") -> None:
        if nbytes > MAX_VALUE_BYTES:
            raise self.bad(f"{what} of {nbytes} bytes per sample exceeds the limit of "
                           f"{MAX_VALUE_BYTES} bytes")

    def room(self, ctx: RunContext, shape: tuple, itemsize: int = 4) -> None:
        """Refuse (before allocating) an output of ``shape`` beyond the per-value limit."""
        if math.prod(shape) * itemsize > MAX_VALUE_BYTES * max(ctx.n, 1):
            raise self.bad(f"output of shape {tuple(shape)} exceeds the limit of "
                           f"{MAX_VALUE_BYTES} bytes per sample")

    def mismatch(self, arr: np.ndarray, want: str) -> PackedFormatError:
        return self.bad(f"input {self.inputs[0]!r} is {arr.dtype}{list(arr.shape)}, "
                        f"the attributes imply {want}")

    def buffer(self, ctx: RunContext, key: str, shape: tuple, dtype=_F32,
               zero: bool = False) -> np.ndarray:
        """An output array, reused from run to run (fresh ones would page-fault every time).

        Packed outputs are zeroed once: kernels never write their halo. Trace runs
        (whose records outlive the run) get fresh arrays. So one engine serves one
        caller at a time (its threads work inside each layer).
        """
        if ctx.fresh:
            return np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
        into = self.__dict__.get("_into")
        if key == "y" and into is not None:  # straight into the next conv's padded input
            view = into.inside(into.pad_buffer(ctx, shape[0]))
            if view.shape == shape and view.dtype == dtype:
                return view
        slot = self.__dict__.get("_slot")
        if key == "y" and slot is not None:  # a float map shared along the graph
            return _slot_view(slot, ctx.n, shape, dtype)
        bufs = self.__dict__.setdefault("_bufs", {})
        arr = bufs.get(key)
        if arr is None or arr.shape != shape:
            arr = bufs[key] = aligned_empty(shape, dtype, zero)
        return arr

    def t(self, key: str) -> np.ndarray | None:
        """The tensor named by attribute ``key`` (any dtype and shape), or None."""
        name = self.attrs.get(key)
        if name is None:
            return None
        arr = self.tensors.get(name) if isinstance(name, str) else None
        if arr is None:
            raise self.bad(f"tensor {name!r} ({key}) is missing")
        return arr

    def __call__(self, env: dict, ctx: RunContext) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_dims(dims) -> tuple[int, ...] | None:
    """A declared shape (ints, or ``[a, b]`` for ``a * N + b``) at batch 1; None if invalid."""
    if not isinstance(dims, list) or len(dims) > 8:
        return None
    out = []
    for d in dims:
        if isinstance(d, list) and len(d) == 2 and all(_is_int(x) for x in d):
            a, b = d
            if not (0 <= a <= MAX_INT and 0 <= b <= MAX_INT and a + b >= 0):
                return None
            out.append(a + b)
        elif _is_int(d) and 0 <= d <= MAX_INT:
            out.append(d)
        else:
            return None
    return tuple(out)


def check_pack_attrs(op: Op, pk: dict) -> tuple[int, int, int, list[int]]:
    """``(mode, groups, cg, pads)`` of a ``pack`` node or a fused epilogue's ``pack``."""
    if not isinstance(pk, dict):
        raise op.bad("attribute 'pack' is not a JSON object")
    mode = pk.get("mode")
    if mode not in ("pos", "neg"):
        raise op.bad(f"pack mode must be 'pos' or 'neg', not {_short(mode)}")
    groups = op.int_attr("groups", 1, where=pk)
    cg = op.int_attr("cg", 1, where=pk)
    pads = op.ints_attr("pads", 4, default=[0, 0, 0, 0], where=pk)
    return 0 if mode == "pos" else 1, groups, cg, pads


def _epilogue_cfg(op: Op, cfg: np.ndarray, attrs: dict, out_float: bool) -> None:
    pk = attrs.get("pack")
    cfg[K.EP_NRES] = op.int_attr("nres", 0, 2, default=0)
    cfg[K.EP_OUT_FLOAT] = int(out_float)
    cfg[K.EP_OUT_PACK] = int(pk is not None)
    if pk is not None:
        mode, groups, cg, pads = check_pack_attrs(op, pk)
        cfg[K.EP_PMODE] = mode
        cfg[K.EP_PG] = groups
        cfg[K.EP_PCG] = cg
        cfg[K.EP_PWPG] = (cg + 63) // 64
        cfg[K.EP_PPT] = pads[0]
        cfg[K.EP_PPL] = pads[2]


class _ConvLike(Op):
    """Shared plumbing of the ops with a fused epilogue: residual inputs and outputs."""

    n_main_inputs = 1
    n_inputs = (1, 3)
    n_outputs = (1, 2)

    def __init__(self, node, tensors, graph) -> None:
        super().__init__(node, tensors, graph)
        a = self.attrs
        self.out_float = bool(a.get("out_float", True))
        self.pack = a.get("pack")
        self.nres = int(a.get("nres", 0))
        self.linear = bool(a.get("linear", False))
        self.cfg = np.zeros(K.CFG_SIZE, np.int64)
        _epilogue_cfg(self, self.cfg, a, self.out_float)
        if len(self.inputs) != self.n_main_inputs + self.nres:
            raise self.bad(f"has {len(self.inputs)} inputs, not {self.n_main_inputs} + "
                           f"nres = {self.n_main_inputs + self.nres}")
        if len(self.outputs) != int(self.out_float) + int(self.pack is not None) or (
                not self.outputs):
            raise self.bad("its outputs do not match out_float and pack")
        self.out_shape = a.get("out_shape")  # logical shape (N, O, Ho, Wo) or (..., O)
        if check_dims(self.out_shape) is None:
            raise self.bad(f"attribute 'out_shape' is not a shape: {_short(self.out_shape)}")

    def check_epilogue(self, nout: int) -> None:
        """The ``ep`` tensor and a fused ``pack`` for ``nout`` output channels."""
        self.ep = self.tensor("ep", _F32, (6, nout))
        self.cfg[K.EP_KIND] = K.ep_kind(self.ep)  # the IR epilogue skips identity stages
        if self.pack is not None:
            groups, cg = int(self.cfg[K.EP_PG]), int(self.cfg[K.EP_PCG])
            if groups * cg != nout:
                raise self.bad(f"packs {groups} x {cg} channels of its {nout} outputs")
        self.nout = nout

    def residuals(self, env: dict, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
        """The residual inputs, channels-last; each must be of ``shape`` (M, Ho, Wo, O)."""
        res = [_DUMMY_F4, _DUMMY_F4]
        for i in range(self.nres):
            r = env[self.inputs[self.n_main_inputs + i]]
            res[i] = nhwc(r) if r.ndim == 4 else np.ascontiguousarray(
                r.reshape(-1, 1, 1, r.shape[-1]), dtype=_F32)
            if res[i].shape != shape:
                raise self.bad(f"residual {self.inputs[self.n_main_inputs + i]!r} has shape "
                               f"{list(r.shape)}, the attributes imply {list(shape)} (NHWC)")
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
            t, b, l, r = pk.get("pads", (0, 0, 0, 0))
            q = self.buffer(ctx, "q", (m, ho + t + b, wo + l + r,
                                       pk["groups"] * ((pk["cg"] + 63) // 64)), np.uint64, True)
        return y, q, cfg

    def store(self, env: dict, ctx: RunContext, y: np.ndarray, q: np.ndarray) -> None:
        outs = list(self.outputs)
        yl = None
        if self.out_float or ctx.trace:
            yl = self.kept_view(y, ctx.n, lambda a: self.logical(a, ctx.n))
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
