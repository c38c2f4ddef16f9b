"""The packed engine: runs a ``.bfp`` graph with numpy and numba only (no torch).

The engine prepares one op object per node at load (``OPS``, from the op table in
``ops/table.py``; implementations in ``ops/binary.py``, ``ops/fused.py`` and
``ops/floats.py``) and runs them in order on a dict of named values. The file
format and every op's attributes are in docs/packed-format.md.

A file may be crafted: the engine checks the graph's structure at load (order,
names, counts), each op checks its own attributes and tensors, and every run
checks the size of each value it makes. Whatever a crafted graph still makes
numpy or numba raise becomes one ``PackedFormatError`` naming the file and the
node; a valid file never gets there.
"""

from __future__ import annotations

import heapq
import os

import numba
import numpy as np
from numba.core.errors import NumbaError

from binface.errors import InputShapeError
from binface.runtime.bfp import read_bfp
from binface.runtime.errors import PackedFormatError, UnsupportedOpError
from binface.runtime.ops.base import (
    MAX_MACS,
    MAX_VALUE_BYTES,
    Op,
    RunContext,
    _ConvLike,
    check_dims,
)
from binface.runtime.ops.binary import BConvOp, BDwConvOp, BMaxPoolOp, PackOp
from binface.runtime.ops.floats import AffineOp, LinearOp, PoolDenseOp, pool_dense
from binface.runtime.ops.fused import ConvOp, PoolOp, gated_conv
from binface.runtime.ops.layout import _F32, as_nchw, nhwc, pack_bits, resolve
from binface.runtime.ops.table import ENGINE_OPS as OPS

__all__ = ["MAX_NODES", "OPS", "Op", "PackedEngine", "RunContext", "as_nchw", "load_packed",
           "nhwc", "pack_bits", "pad_in_place", "resolve", "set_blas_threads"]

# on several threads, the flat replay's kernels run as one parallel region from this
# replay on (compiling it takes a few seconds, so one-off runs never pay for it)
REGION_AFTER = 3
MAX_NODES = 8192  # the zoo's largest graph (mobilefaceformer) has 511 nodes
MAX_TOTAL_BYTES = 1 << 31  # all values one run makes, per sample (the zoo needs < 200 MB)
# what numpy and numba raise on a graph no exporter writes (crafted attributes)
_CRAFTED = (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError,
            MemoryError, NumbaError)


def _describe(exc: BaseException) -> str:
    """One line: the exception's type and the start of its message."""
    if isinstance(exc, MemoryError):
        return "out of memory"
    text = " ".join(str(exc).split())
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_names(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def check_graph(graph, tensors: dict[str, np.ndarray]) -> None:
    """The graph's structure: types, counts, names unique, every value made before use.

    Raises ``PackedFormatError`` (without the file name, which the engine adds).
    """
    if not isinstance(graph, dict):
        raise PackedFormatError(f"the graph is a JSON {type(graph).__name__}, not an object")
    nodes = graph.get("nodes")
    if not isinstance(nodes, list):
        raise PackedFormatError("the graph has no list of nodes")
    if len(nodes) > MAX_NODES:
        raise PackedFormatError(f"the graph has {len(nodes)} nodes, more than the limit of "
                                f"{MAX_NODES}")
    inp = graph.get("input", "input")
    dims = check_dims(graph.get("input_shape"))
    if not isinstance(inp, str) or dims is None or len(dims) < 2 or 0 in dims[1:]:
        raise PackedFormatError("the graph's input or input_shape is invalid")
    if int(np.prod(dims, dtype=object)) * 4 > MAX_VALUE_BYTES:
        raise PackedFormatError(f"the input shape {list(dims)} is beyond the limit")
    outputs, consts = graph.get("outputs"), graph.get("consts", [])
    if not _is_names(outputs) or not outputs or not _is_names(consts):
        raise PackedFormatError("the graph's outputs or consts are not lists of names")
    if not isinstance(graph.get("shapes", {}), dict):
        raise PackedFormatError("the graph's shapes are not a JSON object")
    for c in consts:
        if c not in tensors:
            raise PackedFormatError(f"const {c!r} is not among the tensors")
    made = {inp, *consts}
    names: set[str] = set()
    for i, node in enumerate(nodes):
        if not isinstance(node, dict) or not isinstance(node.get("op"), str):
            raise PackedFormatError(f"node {i} is not an object with an op")
        name = node.setdefault("name", f"{node['op']}{i}")
        if not isinstance(name, str) or name in names:
            raise PackedFormatError(f"node {i}: name {name!r} is not a unique string")
        names.add(name)
        where = f"node {name} ({node['op']})"
        ins, outs = node.get("in"), node.get("out")
        if not _is_names(ins) or not _is_names(outs):
            raise PackedFormatError(f"{where}: in / out are not lists of names")
        for v in ins:
            if v not in made:
                raise PackedFormatError(f"{where}: input {v!r} is not made by an earlier node")
        for v in outs:
            if v in made:
                raise PackedFormatError(f"{where}: output {v!r} is made twice")
            made.add(v)
    for o in outputs:
        if o not in made:
            raise PackedFormatError(f"the graph's output {o!r} is made by no node")


def _readers(ops: list[Op]) -> dict[str, int]:
    """How many op inputs read each value."""
    readers: dict[str, int] = {}
    for op in ops:
        for name in op.inputs:
            readers[name] = readers.get(name, 0) + 1
    return readers


def fuse_gated_packs(ops: list[Op], graph: dict, tensors: dict) -> list[Op]:
    """Replace each ``pack`` of a few-channel conv's float output times a gate (the
    squeeze-excite on BinaryFaceNet's RGB stem) by the conv recomputed with the gate
    in its epilogue (:class:`~binface.runtime.ops.fused.GatedConvOp`), when nothing
    else reads that float output; the conv itself then stores only its packed signs."""
    producer = {o: op for op in ops for o in op.outputs}
    readers = _readers(ops)
    swap: dict[int, Op | None] = {}
    for op in ops:
        if type(op) is not PackOp or not op.gate or op.affine or op.linear:
            continue
        src = op.inputs[0]
        conv = producer.get(src)
        if (type(conv) is not ConvOp or not conv.small or not conv.out_float or conv.nres > 1
                or conv.outputs[0] != src or readers.get(src) != 1 or src in graph["outputs"]
                or op.channels != conv.nout or id(conv) in swap):
            continue
        swap[id(op)] = gated_conv(conv, op, op.inputs[1], tensors, graph)
        keep = None
        if conv.pack is not None:  # the conv's own signs (the gate's squeeze reads them)
            node = {**conv.node, "out": conv.outputs[1:],
                    "attrs": {**conv.attrs, "out_float": False}}
            keep = ConvOp(node, tensors, graph)
        swap[id(conv)] = keep
    if not swap:
        return ops
    return [o for o in (swap.get(id(op), op) for op in ops) if o is not None]


def fuse_heads(ops: list[Op], graph: dict, tensors: dict) -> list[Op]:
    """Replace each run of adaptive_avgpool (1 x 1), reshape, linear [, affine], each
    feeding only the next, by one :class:`~binface.runtime.ops.floats.PoolDenseOp`."""
    readers = _readers(ops)

    def chained(a: Op, b: Op) -> bool:  # b reads a's only output, which nothing else reads
        return (len(a.outputs) == 1 and b.inputs == a.outputs and readers[a.outputs[0]] == 1
                and a.outputs[0] not in graph["outputs"])

    out: list[Op] = []
    i = 0
    while i < len(ops):
        fused = None
        for size in (4, 3):
            run = ops[i:i + size]
            if len(run) == size and all(chained(a, b) for a, b in zip(run, run[1:], strict=False)):
                fused = pool_dense(run, graph, tensors)
                if fused is not None:
                    break
        out.append(fused or ops[i])
        i += size if fused is not None else 1
    return out


def pad_in_place(ops: list[Op], graph: dict) -> None:
    """Let an op whose float map only feeds a conv that pads its input (a depthwise conv
    after a pool, a stem's conv) write that map straight inside the conv's padded
    buffer: the conv's copy of it (``pad_nhwc``) is then skipped. Set as ``op._into``;
    trace runs, with fresh arrays, still copy."""
    readers = _readers(ops)
    producer = {op.outputs[0]: op for op in ops if op.outputs}
    for op in ops:
        op._into = None
    for op in ops:
        if type(op) is not ConvOp or not op.pads_input:
            continue
        name = op.inputs[0]
        src = producer.get(name)
        if (src is None or readers.get(name) != 1 or name in graph["outputs"]
                or not ((type(src) is ConvOp and src.out_float and not src.linear)
                        or type(src) is PoolOp)
                or _nhwc_shape(src) != op.in_shape):
            continue
        src._into = op


def _nhwc_shape(op: Op) -> tuple[int, ...]:
    """The (H, W, C) of a conv's or pool's float output at batch 1."""
    if type(op) is PoolOp:
        return (*op.out_hw, op.in_shape[2])
    return (*op.out_hw, op.nout)


# ops whose outputs are arrays of their own (never views of their inputs)
_OWN_OUTPUTS = (_ConvLike, PackOp, BMaxPoolOp, PoolOp, PoolDenseOp, LinearOp, AffineOp)


def share_float_maps(ops: list[Op], graph: dict, any_shape: bool = True) -> None:
    """Let the float outputs of conv-like ops share buffers where their values' lives do
    not overlap: a map is then written to memory another op used a few ops ago, still
    in L2, instead of to its own buffer, cold since the last run (a QuickNet stage's
    28 x 28 x 64 maps are 200 KB each). A value lives until the last op that reads it
    or anything that may be a view of it (any op not in ``_OWN_OUTPUTS``); graph
    outputs live forever. A buffer may serve maps of any shapes (it grows to the largest
    of its users), and an op takes the one freed last among those whose value is dead:
    its memory was written most recently, so a smaller map of a later stage is written
    over the previous stage's, still in cache, not into memory of its own first touched
    in this run (the first bconv of each QuickNet stage ran 15-30 % slower for that).
    Not with ``any_shape`` False (the engine on several threads): a smaller map's
    halves then fall on memory the other core wrote (BinaryFaceNet on 2 threads 0.87
    -> 0.92 ms), so buffers are shared only between maps of one shape.
    Trace runs keep fresh arrays."""
    roots: dict[str, set[int]] = {}  # value -> the owners' buffers it may be a view of
    last: dict[int, float] = {}  # owner index -> last op reading its buffer
    for i, op in enumerate(ops):
        seen: set[int] = set()
        for name in op.inputs:
            for r in roots.get(name, ()):
                last[r] = max(last.get(r, i), i)
                seen.add(r)
        owner = isinstance(op, _ConvLike) and op.out_float
        for j, name in enumerate(op.outputs):
            if owner and j == 0:
                roots[name] = {i}
                last.setdefault(i, i)
            elif not isinstance(op, _OWN_OUTPUTS):
                roots[name] = set(seen)
    for name in graph["outputs"]:
        for r in roots.get(name, ()):
            last[r] = float("inf")
    pool: dict = {}
    pending: list[tuple[float, int, str]] = []  # min-heap (free after op, slot, key): live
    dead: dict[str, list[tuple[float, int]]] = {}  # key -> max-heap (negated): free to take
    users: dict[int, list] = {}  # slot -> the declared output shapes it serves
    for i, op in enumerate(ops):
        op._slot = None
        if i not in last or op.__dict__.get("_into") is not None:  # see pad_in_place
            continue
        while pending and pending[0][0] < i:
            t, s, k = heapq.heappop(pending)
            heapq.heappush(dead.setdefault(k, []), (-t, s))
        key = "" if any_shape else str(op.out_shape)
        free = dead.get(key)
        slot = heapq.heappop(free)[1] if free else len(users)  # the one freed last
        users.setdefault(slot, []).append(op.out_shape)
        op._slot = (pool, slot, users[slot])
        heapq.heappush(pending, (last[i], slot, key))


def _copies(values: list[np.ndarray]):
    """The run's outputs as float32 arrays of their own (one, or a tuple)."""
    outs = [np.array(v, dtype=_F32, order="C", copy=True) for v in values]
    return outs[0] if len(outs) == 1 else tuple(outs)


class PackedEngine:
    """A loaded packed model. ``run(x)`` takes (N, 3, H, W) float32 and returns numpy."""

    def __init__(self, graph: dict, tensors: dict[str, np.ndarray], source: str = "",
                 threads: int = 1, fuse: bool = True) -> None:
        where = source or "graph"
        try:
            check_graph(graph, tensors)
        except PackedFormatError as exc:
            raise PackedFormatError(f"{where}: {exc}") from None
        self.graph = graph
        self.threads = max(1, int(threads or 1))
        self.regions = True  # see _regions; False: one numba launch per kernel
        # on several threads, images per pass for a larger batch (see _run_tiled); 0:
        # the whole batch at once (as on one thread)
        self.tile = self.threads if self.threads > 1 else 0
        self.source = source
        name = "".join(ch for ch in str(graph.get("model", "model")) if ch.isprintable())
        self.model_name = name[:80] or "model"
        self.input_name = graph.get("input", "input")
        self.input_shape = graph["input_shape"]
        self.outputs = graph["outputs"]
        self.batch_dynamic = bool(graph.get("batch_dynamic", True))
        self.consts = {name: tensors[name] for name in graph.get("consts", [])}
        self.ops: list[Op] = []
        macs = 0
        for node in graph["nodes"]:
            cls = OPS.get(node["op"])
            if cls is None:
                raise UnsupportedOpError(
                    f"{where}: op {node['op']!r} (node {node['name']}) is not "
                    "supported by this packed engine")
            at = f"{where}: node {node['name']} ({node['op']})"
            try:
                op = cls(node, tensors, graph)
            except PackedFormatError as exc:
                raise PackedFormatError(f"{where}: {exc}") from None
            except UnsupportedOpError as exc:
                raise UnsupportedOpError(f"{at}: {exc}") from None
            except _CRAFTED as exc:
                raise PackedFormatError(f"{at}: invalid attributes ({_describe(exc)})") from None
            macs += op.macs_per_sample
            if macs > MAX_MACS:
                raise PackedFormatError(f"{at}: the graph's MACs per sample exceed the limit of "
                                        f"{MAX_MACS}")
            self.ops.append(op)
        if fuse:
            self.ops = fuse_heads(fuse_gated_packs(self.ops, graph, tensors), graph, tensors)
        pad_in_place(self.ops, graph)
        share_float_maps(self.ops, graph, any_shape=self.threads == 1)

    @property
    def binary_ops(self) -> list[Op]:
        return [op for op in self.ops if isinstance(op, (BConvOp, BDwConvOp))]

    def check_input(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise InputShapeError(f"{self.model_name} (packed) expects a numpy array, got "
                                  f"{type(x).__name__}")
        want = resolve(self.input_shape, 1)[1:]
        if x.ndim != 1 + len(want) or tuple(x.shape[1:]) != want or x.shape[0] < 1:
            dims = ", ".join(str(d) for d in want)
            raise InputShapeError(f"{self.model_name} (packed) expects input of shape "
                                  f"(N, {dims}), got {tuple(x.shape)}")
        return np.ascontiguousarray(x, dtype=_F32)

    def run(self, x: np.ndarray, trace: bool = False):
        """Outputs for input ``x``; with ``trace``, also per-binary-layer records.

        A trace record holds the layer's ``source`` (the PyTorch module path), the
        float ``input`` whose signs it consumed, its integer dot products ``acc``
        (before any affine) and its float ``output``, all in PyTorch layout.
        """
        x = self.check_input(x)
        if not self.batch_dynamic and x.shape[0] > 1:
            runs = [self._run(x[i:i + 1], trace) for i in range(x.shape[0])]
            out = np.concatenate([r[0] for r in runs])
            return (out, [rec for r in runs for rec in r[1]]) if trace else out
        tile = self.tile
        if not trace and tile and x.shape[0] > tile and not self.__dict__.get("_no_flat"):
            return self._run_tiled(x, tile)
        out, records = self._run(x, trace)
        return (out, records) if trace else out

    def _run_tiled(self, x: np.ndarray, tile: int):
        """A batch in passes of ``tile`` images through one kept input array: each pass
        is a flat replay (a region on several threads) whose maps stay in the cores'
        caches; the whole batch's maps did not (QuickNet at batch 16, 2 threads:
        7.03 -> 5.84 ms in passes of 2, one thread 12.96 -> 11.45 ms in passes of 2).
        Every op works per image, so the bits are those of one run over the batch. A
        last, partial pass is padded with the batch's first images, so the kept array
        and its replay stay the same. A model that never reaches the flat replay goes
        back to whole batches after its first tiled call."""
        buf = self.__dict__.get("_tile_in")
        if buf is None or buf.shape != (tile, *x.shape[1:]):
            buf = self._tile_in = np.empty((tile, *x.shape[1:]), _F32)
        n = x.shape[0]
        parts: list[list[np.ndarray]] = []
        for i in range(0, n, tile):
            k = min(tile, n - i)
            buf[:k] = x[i:i + k]
            if k < tile:
                buf[k:] = x[:tile - k]
            out = self._run(buf, False)[0]
            if i and self.__dict__.get("_flat") is None:
                # an op that does not keep its calls: passes would only add per-op
                # Python work (BinaryFaceFormer at batch 16: 1.39x -> 1.09x on 2 threads)
                self._no_flat = True
            outs = out if isinstance(out, tuple) else (out,)
            parts.append([o[:k] for o in outs])
        res = [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]
        return res[0] if len(res) == 1 else tuple(res)

    __call__ = run

    def context(self, n: int, trace: bool = False) -> RunContext:
        """A run's state: with more than one thread, the row-parallel kernels (each
        layer's output rows, over the whole batch, cut across numba's threads; splitting
        the batch across Python threads instead scaled 1.0-1.2x on 2 cores)."""
        parallel = self.threads > 1
        if parallel:
            numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
        return RunContext(n, trace, parallel=parallel)

    def _run(self, x: np.ndarray, trace: bool):
        n = x.shape[0]
        ctx = self.context(n, trace)
        flat = self.__dict__.get("_flat")
        if (flat is not None and not trace and flat[0] is x and flat[1] == x.shape
                and flat[2] is ctx.k and flat[5] is self.ops):
            # the same input array as last run, every op replayable: last run's kernel
            # calls again, in one loop (the values in x may be new: the calls read them)
            calls = flat[3] if ctx.nt == 1 or not self.regions else self._regions(flat, ctx)
            for fn, args in calls:
                fn(*args)
            return _copies(flat[4]), ctx.records
        self._flat = None
        env: dict[str, np.ndarray] = dict(self.consts)
        env[self.input_name] = x
        cap, total, total_cap = MAX_VALUE_BYTES * n, 0, MAX_TOTAL_BYTES * n
        op = None
        try:
            for op in self.ops:
                op(env, ctx)
                for o in op.outputs:  # what a crafted graph could grow without bound
                    nb = env[o].nbytes
                    total += nb
                    if nb > cap or total > total_cap:
                        raise op.bad(f"output {o!r} of {nb} bytes takes the run past the limit "
                                     f"of {MAX_VALUE_BYTES} bytes per value / "
                                     f"{MAX_TOTAL_BYTES} in all, per sample")
        except (PackedFormatError, UnsupportedOpError) as exc:
            raise type(exc)(f"{self.source or 'graph'}: {exc}") from None
        except _CRAFTED as exc:
            at = f"node {op.name} ({op.node['op']})" if op is not None else "graph"
            raise PackedFormatError(f"{self.source or 'graph'}: {at}: cannot run "
                                    f"({_describe(exc)})") from None
        self._keep_flat(x, ctx, env)
        return _copies([env[o] for o in self.outputs]), ctx.records

    def _regions(self, flat: tuple, ctx: RunContext) -> list:
        """The flat replay's calls for several threads: from the ``REGION_AFTER``-th
        replay on, its runs of kernels as parallel regions (``runtime/region.py``: one
        launch and a barrier per kernel, not a launch per kernel). Built once per flat
        replay; if that is not possible here, the plain calls."""
        got = self.__dict__.get("_plan")
        if got is not None and got[0] is flat:
            return got[1] if got[2] == numba.get_num_threads() else flat[3]
        seen = self.__dict__.get("_replays")
        n = seen[1] + 1 if seen is not None and seen[0] is flat else 1
        self._replays = (flat, n)
        if n < REGION_AFTER:
            return flat[3]
        calls = flat[3]
        from binface.runtime import region

        if region.regions_supported():
            try:
                calls = region.plan(flat[3], ctx.nt)
            except Exception:  # noqa: BLE001 - a call a region cannot make: launches as before
                calls = flat[3]
        self._plan = (flat, calls, ctx.nt)
        return calls

    def _keep_flat(self, x: np.ndarray, ctx: RunContext, env: dict) -> None:
        """Keep this run's kernel calls as one list when every op kept its own for a
        replay (:meth:`Op.replayed`): a next run on the same input array then issues
        them without going through the ops (about 1 us an op of Python: QuickNet 1.07x
        on one thread). Trace runs and ops that cannot replay (fresh arrays
        every run) leave the engine on its normal path."""
        if ctx.trace:
            return
        calls = []
        for op in self.ops:
            fast = op.__dict__.get("_fast")
            if fast is None or fast[0] is not ctx.k:
                return
            calls += fast[2]
        self._flat = (x, x.shape, ctx.k, calls, [env[o] for o in self.outputs], self.ops)

    def summary(self) -> dict:
        """Op counts and binary MACs per sample (what really runs as xor + popcount)."""
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.node["op"]] = counts.get(op.node["op"], 0) + 1
        return {"model": self.model_name, "ops": counts,
                "binary_macs": int(sum(op.macs_per_sample for op in self.binary_ops))}


def set_blas_threads(threads: int) -> bool:
    """Limit numpy's BLAS (the engine's float GEMMs) to ``threads``; False if not possible.

    The engine parallelises itself (each layer's rows across numba's OpenMP
    threads); BLAS threads of its own would only fight those for the cores: with both
    spinning on a 2-core machine a 1x1 conv took 7 ms instead of 0.05. threadpoolctl is
    used when it is installed; otherwise OpenBLAS's own setter is called through ctypes
    (numpy's wheels ship OpenBLAS), so the runtime still needs numpy and numba only.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return _openblas_threads(int(threads))
    threadpool_limits(limits=int(threads), user_api="blas")
    return True


_OPENBLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads")


def _openblas_threads(threads: int) -> bool:
    """Call the thread setter of every OpenBLAS this process has loaded (Linux; numpy's
    own copy elsewhere). False when none is found."""
    import ctypes
    import glob

    paths: set[str] = set()
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower()
                     and line.split()[-1].startswith("/")}
    except OSError:
        pass
    if not paths:
        libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
        paths = set(glob.glob(os.path.join(libs, "*openblas*")))
    done = False
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _OPENBLAS_SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn(threads)
                done = True
                break
    return done


def load_packed(path: str | os.PathLike, threads: int | None = None,
                limit_blas: bool = True, fuse: bool = True) -> PackedEngine:
    """Load a ``.bfp`` file into a :class:`PackedEngine` (numpy + numba only).

    ``threads``: the row-parallel kernels, each layer's output rows (over the whole
    batch) cut across that many of numba's threads. With
    ``limit_blas``, numpy's BLAS is kept on one thread (process-wide; see
    :func:`set_blas_threads`). ``fuse``: rewrite the graph at load where that saves
    work (:func:`fuse_gated_packs`); False runs the file's nodes as they are.
    """
    if threads and limit_blas:
        # the engine parallelises itself: BLAS threads would only oversubscribe the cores
        set_blas_threads(1)
    graph, tensors = read_bfp(path)
    try:
        return PackedEngine(graph, tensors, str(path), threads=threads or 1, fuse=fuse)
    except (PackedFormatError, UnsupportedOpError):
        raise
    except _CRAFTED as exc:  # the engine names the node; this is the last resort
        raise PackedFormatError(f"{path}: corrupt packed model graph ({_describe(exc)})"
                                ) from None
