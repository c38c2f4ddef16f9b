"""The packed engine: runs a ``.bfp`` graph with numpy and numba only (no torch).

The engine prepares one op object per node at load (``OPS``, from the op table in
``ops/table.py``; implementations in ``ops/binary.py``, ``ops/fused.py`` and
``ops/floats.py``) and runs them in order on a dict of named values. The file
format and every op's attributes are in docs/packed-format.md.
"""

from __future__ import annotations

import os

import numpy as np

from binface.errors import InputShapeError
from binface.runtime.bfp import read_bfp
from binface.runtime.errors import PackedFormatError, UnsupportedOpError
from binface.runtime.ops.base import Op, RunContext
from binface.runtime.ops.binary import BConvOp, BDwConvOp
from binface.runtime.ops.layout import _F32, as_nchw, nhwc, pack_bits, resolve
from binface.runtime.ops.table import ENGINE_OPS as OPS

__all__ = ["OPS", "Op", "PackedEngine", "RunContext", "as_nchw", "load_packed", "nhwc",
           "pack_bits", "resolve", "set_blas_threads"]


class PackedEngine:
    """A loaded packed model. ``run(x)`` takes (N, 3, H, W) float32 and returns numpy."""

    def __init__(self, graph: dict, tensors: dict[str, np.ndarray], source: str = "",
                 threads: int = 1) -> None:
        self.graph = graph
        self.threads = max(1, int(threads or 1))
        self.source = source
        self.model_name = graph.get("model", "model")
        self.input_name = graph.get("input", "input")
        self.input_shape = graph["input_shape"]
        self.outputs = graph["outputs"]
        self.batch_dynamic = bool(graph.get("batch_dynamic", True))
        self.consts = {name: tensors[name] for name in graph.get("consts", [])}
        self.ops: list[Op] = []
        for i, node in enumerate(graph["nodes"]):
            node.setdefault("name", f"{node['op']}{i}")
            cls = OPS.get(node["op"])
            if cls is None:
                raise UnsupportedOpError(
                    f"{source or 'graph'}: op {node['op']!r} (node {node['name']}) is not "
                    "supported by this packed engine")
            self.ops.append(cls(node, tensors, graph))

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
        n = x.shape[0]
        if not self.batch_dynamic and n > 1:
            parts = [x[i:i + 1] for i in range(n)]
        elif self.threads > 1 and n > 1 and not trace:
            parts = np.array_split(x, min(self.threads, n))
        else:
            out, records = self._run(x, trace)
            return (out, records) if trace else out
        if self.threads > 1 and len(parts) > 1 and not trace:
            # the kernels release the GIL: one slice of the batch per thread
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.threads) as pool:
                runs = list(pool.map(lambda p: self._run(p, False, fresh=True), parts))
        else:
            runs = [self._run(p, trace) for p in parts]
        out = np.concatenate([r[0] for r in runs])
        return (out, [rec for r in runs for rec in r[1]]) if trace else out

    __call__ = run

    def _run(self, x: np.ndarray, trace: bool, fresh: bool = False):
        ctx = RunContext(x.shape[0], trace, fresh)
        env: dict[str, np.ndarray] = dict(self.consts)
        env[self.input_name] = x
        for op in self.ops:
            op(env, ctx)
        outs = [np.array(env[o], dtype=_F32, order="C", copy=True) for o in self.outputs]
        return (outs[0] if len(outs) == 1 else tuple(outs)), ctx.records

    def summary(self) -> dict:
        """Op counts and binary MACs per sample (what really runs as xor + popcount)."""
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.node["op"]] = counts.get(op.node["op"], 0) + 1
        return {"model": self.model_name, "ops": counts,
                "binary_macs": int(sum(op.macs_per_sample for op in self.binary_ops))}


def set_blas_threads(threads: int) -> bool:
    """Limit numpy's BLAS (the engine's float GEMMs) to ``threads``; False if not possible.

    The engine's own kernels are single-threaded; an idle BLAS pool spinning on a
    second core only steals it from whatever else runs there.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return False
    threadpool_limits(limits=int(threads), user_api="blas")
    return True


def load_packed(path: str | os.PathLike, threads: int | None = None,
                limit_blas: bool = True) -> PackedEngine:
    """Load a ``.bfp`` file into a :class:`PackedEngine` (numpy + numba only).

    ``threads``: split a batch over that many threads (the kernels release the GIL;
    a batch of one runs on one core) and, with ``limit_blas``, keep numpy's BLAS on
    one thread (process-wide; needs threadpoolctl, which costs some 50 MB of RSS:
    setting OPENBLAS_NUM_THREADS=1 before Python starts is the lean way).
    """
    if threads and limit_blas:
        # the engine parallelises over the batch itself: a BLAS pool per caller thread
        # would only oversubscribe the cores
        set_blas_threads(1)
    graph, tensors = read_bfp(path)
    try:
        return PackedEngine(graph, tensors, str(path), threads=threads or 1)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, (InputShapeError, PackedFormatError)):
            raise
        raise PackedFormatError(f"{path}: corrupt packed model graph ({type(exc).__name__}: "
                                f"{exc})") from None
