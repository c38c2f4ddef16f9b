"""One parallel region per run: the packed engine's kernels on several threads with
spin barriers between them, instead of one numba parallel launch per kernel.

A launch (numba's ``prange`` over OpenMP) costs 2-3 us here; QuickNet makes 29 of
them per image, about a fifth of its time on 2 threads, and none of it shrinks with
more threads. A region launches once: every thread runs its share of each kernel in
turn, then waits at a barrier for the others before the next kernel. A serial kernel
(the head's mean, its affine) runs on one thread between two barriers.

A thread's share is claimed, not fixed: each row kernel's rows are cut into chunks,
and its *chunk* variant (the same source, with the ``prange`` over chunks read as
``kernels._thread_chunk``) claims them one at a time from atomic counters: first its
own share (the even split ``prange`` makes, so each thread works on the rows it wrote
in the layer before), front to back, then what is left of another thread's, from the
back. A thread that starts a kernel late, or runs on a slower core, then does not
hold the others up: this VM's two vCPUs run fma-bound code up to 2.2x apart at times,
and big.LITTLE boards are built that way. With more chunks per thread a faster core
can take more, at a cost where the cores are even (cutting rows finer costs 2-15 %
of the work on one thread, mostly weights read again per chunk), so each region times
1 and 4 chunks per thread now and then and keeps the faster (``chunks``). Row results
do not depend on the chunking, so the bits are those of one thread either way. The
counters are one set per process, so one region runs at a time (a second, started
from another Python thread meanwhile, makes its plain calls).

The kernels are called through their native entry points, from a body that receives
only two arrays (the entry addresses and every call's arguments as raw words:
pointers, shapes, strides, scalars) and rebuilds each call's arguments in a few LLVM
instructions. Compiling that body for a model takes seconds (passing the arrays
themselves into numba's parallel region took a minute and more); the chunk variants
are compiled once and cached like every kernel.

A barrier only works when every chunk has a thread of its own at the same time, which
OpenMP's teams guarantee (numba's ``omp`` threading layer); TBB may run two chunks on
one thread in turn and would deadlock, so regions are built only under ``omp``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from time import perf_counter_ns
from types import FunctionType
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

from .kernels import MAX_TEAM, reset_chunks


# ---------------------------------------------------------------- atomics and the barrier
def _slot(context, builder, sig, args):
    a = context.make_array(sig.args[0])(context, builder, args[0])
    return builder.gep(a.data, [args[1]])


@intrinsic
def _atomic_add(typingctx, arr, idx, val):
    """``arr[idx] += val`` atomically (sequentially consistent); returns the old value."""
    def codegen(context, builder, sig, args):
        return builder.atomic_rmw("add", _slot(context, builder, sig, args), args[2],
                                  "seq_cst")
    return types.int64(arr, types.int64, types.int64), codegen


@intrinsic
def _atomic_load(typingctx, arr, idx):
    def codegen(context, builder, sig, args):
        return builder.load_atomic(_slot(context, builder, sig, args), "acquire", 8)
    return types.int64(arr, types.int64), codegen


@intrinsic
def _atomic_store(typingctx, arr, idx, val):
    def codegen(context, builder, sig, args):
        builder.store_atomic(args[2], _slot(context, builder, sig, args), "release", 8)
        return context.get_dummy_value()
    return types.void(arr, types.int64, types.int64), codegen


@intrinsic
def _atomic_cas(typingctx, arr, idx, expect, val):
    """Set ``arr[idx]`` to ``val`` if it holds ``expect``; returns what it held."""
    def codegen(context, builder, sig, args):
        pair = builder.cmpxchg(_slot(context, builder, sig, args), args[2], args[3],
                               "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)
    return types.int64(arr, types.int64, types.int64, types.int64), codegen


# the barrier's words, each on its own cache line (int64 slots): its count and
# generation, then the start's count and decision (reset before every launch)
COUNT, GENERATION, START_COUNT, START = 0, 8, 16, 24
WAITS = 32  # then each thread's polls at the barriers (a line per thread): who waits
BAR_WORDS = WAITS + 8 * MAX_TEAM
GO, ABORT = 1, 2
START_SPINS = 1 << 24  # about 10-50 ms of waiting for the other threads to arrive
ABORT_AFTER = 3  # starts timed out in a row before a region stays on the plain calls
_RUNNING = threading.Lock()  # held by the region that owns the chunk counter
# A row kernel's chunks per thread, claimed as threads get free: 1 is the even split
# (fastest where the cores run at one speed: cutting rows finer costs 2-15 % of the
# work on one thread, mostly weights read again per chunk), 4 lets a faster core take
# more. A region tries each choice now and then and keeps the faster (see Region).
CHUNK_CHOICES = (1, 4)
TRIAL_EVERY = 256  # runs between two trials
TRIAL_RUNS = 8  # runs of each choice in a trial, alternating; their medians are compared
TRIAL_MARGIN = 0.97  # another choice must beat the even split by 3 % to replace it


@njit(nogil=True, cache=True)
def _start(bar, nt):
    """Whether all ``nt`` chunks run at once, each on a thread of its own: they must all
    arrive here within START_SPINS polls. The last to arrive decides GO; a thread that
    waited too long decides ABORT (the first decision wins, by compare-and-swap), and
    then no thread runs a kernel, so none can wait at a barrier for a chunk that a
    busy thread would only start after it (OpenMP giving fewer threads, a launch
    nested in another): the caller sees ABORT and makes the plain calls instead."""
    if _atomic_add(bar, START_COUNT, 1) == nt - 1:
        reset_chunks(nt)
        _atomic_cas(bar, START, 0, GO)
    else:
        spins = 0
        while _atomic_load(bar, START) == 0:
            spins += 1
            if spins > START_SPINS:
                _atomic_cas(bar, START, 0, ABORT)
    return _atomic_load(bar, START) == GO


@njit(nogil=True, cache=True)
def _barrier(bar, nt, gen):
    """Wait until all ``nt`` threads arrive; the last one resets the chunk counters for
    the next kernel and opens the next generation."""
    if _atomic_add(bar, COUNT, 1) == nt - 1:
        reset_chunks(nt)
        _atomic_store(bar, COUNT, 0)
        _atomic_store(bar, GENERATION, gen + 1)
    else:
        polls = 0
        while _atomic_load(bar, GENERATION) == gen:
            polls += 1
        bar[WAITS + 8 * numba.get_thread_id()] += polls
    return gen + 1


# ---------------------------------------------------------------- chunk variants
_CHUNKS: dict = {}


def chunk_variant(parallel_fn):
    """The chunk variant of a ``parallel=True`` row kernel (``kernels.PARALLEL``): its
    code object with the global ``prange`` read as ``_thread_chunk`` (which the
    kernels' module holds, so the variant keeps that module's globals and numba
    caches it on disk like the kernel itself)."""
    got = _CHUNKS.get(parallel_fn)
    if got is None:
        py = parallel_fn.py_func
        code = _renamed(py.__code__)
        fn = FunctionType(code, py.__globals__, py.__name__.replace("_parallel", "_chunk"),
                          py.__defaults__, py.__closure__)
        fn.__qualname__ = py.__qualname__.replace("_parallel", "_chunk")
        opts = {k: v for k, v in parallel_fn.targetoptions.items()
                if k in ("nogil", "boundscheck", "fastmath")}
        cache = type(parallel_fn._cache).__name__ != "NullCache"
        got = _CHUNKS[parallel_fn] = njit(cache=cache, **opts)(fn)
    return got


def _renamed(code):
    """``code`` with the global name ``prange`` read as ``_thread_chunk``."""
    names = tuple("_thread_chunk" if n == "prange" else n for n in code.co_names)
    return code.replace(co_names=names)


def is_row_kernel(fn) -> bool:
    return isinstance(fn, numba.core.registry.CPUDispatcher) and \
        bool(fn.targetoptions.get("parallel"))


def _entry(dispatcher, args: tuple) -> int:
    """The native entry address of ``dispatcher`` compiled for ``args``' types."""
    sig = tuple(numba.typeof(a) for a in args)
    dispatcher.compile(sig)
    cres = dispatcher.overloads[sig]
    return cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)


# ---------------------------------------------------------------- calls from raw words
def _words(a) -> list[int]:
    """An argument as the words :func:`_caller` reads back."""
    if isinstance(a, np.ndarray):
        return [a.ctypes.data, *a.shape, *a.strides]
    if isinstance(a, (bool, np.bool_, int, np.integer)):
        return [int(a)]
    if isinstance(a, (float, np.floating)):
        return [int(np.float64(a).view(np.int64))]
    raise TypeError(f"a region cannot pass a {type(a).__name__}")


_ARG_TYPES = (types.Array, types.Integer, types.Boolean, types.Float)
_CALLERS: dict = {}


def _caller(argtys: tuple):
    """An intrinsic ``call(addr, words)``: calls the native function at ``addr`` with
    arguments of types ``argtys`` rebuilt from the int64 array ``words``."""
    got = _CALLERS.get(argtys)
    if got is not None:
        return got
    for t in argtys:
        if not isinstance(t, _ARG_TYPES) or t == types.float32:
            raise TypeError(f"a region cannot pass a {t}")

    @intrinsic
    def call(typingctx, addr, words):
        def codegen(context, builder, sig, args):
            i64 = ir.IntType(64)
            data = context.make_array(sig.args[1])(context, builder, args[1]).data
            k = [0]

            def word():
                v = builder.load(builder.gep(data, [ir.Constant(i64, k[0])]))
                k[0] += 1
                return v

            vals = []
            for t in argtys:
                if isinstance(t, types.Array):
                    ary = context.make_array(t)(context, builder)
                    ptr = builder.inttoptr(word(), context.get_data_type(t.dtype).as_pointer())
                    shape = [word() for _ in range(t.ndim)]
                    strides = [word() for _ in range(t.ndim)]
                    size = context.get_abi_sizeof(context.get_data_type(t.dtype))
                    populate_array(ary, data=ptr, shape=shape, strides=strides,
                                   itemsize=context.get_constant(types.intp, size),
                                   meminfo=None)
                    vals.append(ary._getvalue())
                elif isinstance(t, types.Float):
                    vals.append(builder.bitcast(word(), ir.DoubleType()))
                elif isinstance(t, types.Boolean):
                    vals.append(builder.icmp_unsigned("!=", word(), ir.Constant(i64, 0)))
                else:
                    vals.append(builder.trunc(word(), context.get_value_type(t))
                                if t.bitwidth < 64 else word())
            fnty = context.call_conv.get_function_type(types.none, list(argtys))
            fptr = builder.inttoptr(args[0], fnty.as_pointer())
            context.call_conv.call_function(builder, fptr, types.none, list(argtys), vals)
            return context.get_dummy_value()
        return types.none(addr, words), codegen

    _CALLERS[argtys] = call
    return call


# ---------------------------------------------------------------- regions
_BODY_TYPES = (types.int64, types.int64, types.int64[::1], types.int64[::1],
               types.int64[:, ::1])
_BODY_SIG = types.none(*_BODY_TYPES)


@intrinsic
def _call_body(typingctx, addr, ch, nt, bar, addrs, words):
    """Call a region's body at its native address ``addr``."""
    def codegen(context, builder, sig, args):
        fnty = context.call_conv.get_function_type(types.none, list(_BODY_TYPES))
        fptr = builder.inttoptr(args[0], fnty.as_pointer())
        context.call_conv.call_function(builder, fptr, types.none, list(_BODY_TYPES),
                                        list(args[1:]))
        return context.get_dummy_value()
    return types.none(addr, *_BODY_TYPES), codegen


@njit(parallel=True, nogil=True, cache=True)
def _launch(body, nt, bar, addrs, words):
    """The one parallel launch of a region: each thread runs the region's body (a
    function compiled per region, called at its native address, so this launcher is
    compiled once and cached)."""
    for ch in prange(nt):
        _call_body(body, ch, nt, bar, addrs, words)


class Region:
    """A run of kernel calls (``(dispatcher, args)``, as the engine's flat replay keeps
    them) as one parallel region on ``nt`` threads. ``__call__`` runs it; the arrays
    in ``calls`` must stay alive and in place (the engine's kept buffers do)."""

    def __init__(self, calls: list[tuple[Callable, tuple]], nt: int) -> None:
        if not 1 < nt <= MAX_TEAM:
            raise ValueError(f"a region runs on 2 to {MAX_TEAM} threads, not {nt}")
        self.calls, self.nt = calls, nt
        lines = ["def body(ch, nt, bar, addrs, words):",
                 "    if not start(bar, nt):",
                 "        return",
                 "    gen = atomic_load(bar, GENERATION)"]
        glob: dict[str, Any] = {"atomic_load": _atomic_load, "barrier": _barrier,
                                "start": _start, "GENERATION": GENERATION}
        addrs, rows, nt_at = [], [], []
        for i, (fn, args) in enumerate(calls):
            argtys = tuple(numba.typeof(a) for a in args)
            glob[f"c{i}"] = _caller(argtys)
            rows.append([w for a in args for w in _words(a)])
            if is_row_kernel(fn):  # its last argument: the chunk count (see _set_chunks)
                addrs.append(_entry(chunk_variant(fn), args))
                nt_at.append((i, len(rows[-1]) - 1))
                lines.append(f"    c{i}(addrs[{i}], words[{i}])")
            else:  # a serial kernel: one thread
                addrs.append(_entry(fn, args))
                lines.append(f"    if ch == 0:\n        c{i}(addrs[{i}], words[{i}])")
            if i < len(calls) - 1:
                lines.append("    gen = barrier(bar, nt, gen)")
        exec(compile("\n".join(lines) + "\n", "<binface region>", "exec"), glob)
        self.addrs = np.array(addrs, np.int64)
        self.words = np.zeros((len(rows), max(map(len, rows))), np.int64)
        for i, r in enumerate(rows):
            self.words[i, :len(r)] = r
        self.bar = np.zeros(BAR_WORDS, np.int64)
        self._nt_at = tuple(np.array(a, np.intp) for a in zip(*nt_at, strict=True)) \
            if nt_at else None
        self._nt_words = self.words[self._nt_at] if nt_at else None  # one chunk per thread
        self.chunks = 1  # chunks per thread of every row kernel, as the last trial chose
        self.trials = 0  # trials made (one at the first run, then every TRIAL_EVERY runs)
        self._runs = 0
        self._cut = 1  # the chunk count now in ``words``: the calls' own (one per thread)
        self._took: dict[int, list[int]] = {}  # this trial's times per choice
        body = njit(_BODY_SIG, nogil=True)(glob["body"])
        cres = body.overloads[_BODY_TYPES]
        self.body = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
        self._body = body  # keeps the compiled body (its code) alive
        self.aborts = 0  # runs whose start timed out (then the plain calls ran)
        self._in_a_row = 0  # of those, since the last start that went
        self.aborted = False  # ABORT_AFTER in a row: the plain calls from then on
        self()  # the first run here: a failure shows at build, not mid-replay
        if self.aborts:
            raise RuntimeError("the region's chunks did not run at once")

    def waits(self, reset: bool = False) -> np.ndarray:
        """Each thread's polls at this region's barriers so far (thread 0 is the caller's):
        where one thread's count runs far ahead of the others', it waited for them, so
        they ran slower (a slower core, or one shared with other work)."""
        got = self.bar[WAITS:WAITS + 8 * self.nt:8].copy()
        if reset:
            self.bar[WAITS:] = 0
        return got

    def _set_chunks(self, k: int) -> None:
        if self._nt_at is not None and k != self._cut:
            self.words[self._nt_at] = self._nt_words * k
            self._cut = k

    def __call__(self) -> None:
        bar = self.bar
        # another region running (from another Python thread) holds the chunk counter:
        # then the plain calls, as after an abort
        if not self.aborted and _RUNNING.acquire(blocking=False):
            trial = self._runs % TRIAL_EVERY
            self._runs += 1
            timed = trial < TRIAL_RUNS * len(CHUNK_CHOICES) and self._nt_at is not None
            if timed:
                self._set_chunks(CHUNK_CHOICES[trial % len(CHUNK_CHOICES)])
            try:
                bar[START_COUNT] = 0
                bar[START] = 0
                t0 = perf_counter_ns() if timed else 0  # only a trial's runs are timed
                _launch(self.body, self.nt, bar, self.addrs, self.words)
                took = perf_counter_ns() - t0 if timed else 0
            finally:
                _RUNNING.release()
            if timed:
                self._timed(trial, took if bar[START] == GO else None)
            if bar[START] == GO:
                self._in_a_row = 0
                return
            # nothing ran (a thread late by tens of ms, or fewer threads than chunks)
            self.aborts += 1
            self._in_a_row += 1
            self.aborted = self._in_a_row >= ABORT_AFTER
        for fn, args in self.calls:
            fn(*args)

    def _timed(self, trial: int, took: int | None) -> None:
        """A trial's run: its time kept per choice; after the last, the faster kept."""
        if took is not None:
            self._took.setdefault(self._cut, []).append(took)
        if trial == TRIAL_RUNS * len(CHUNK_CHOICES) - 1:
            med = {k: float(np.median(v)) for k, v in self._took.items()}
            k, t = min(med.items(), key=lambda kv: kv[1], default=(1, 0.0))
            even = med.get(1)
            self.chunks = 1 if even is not None and t >= TRIAL_MARGIN * even else k
            self.trials += 1
            self._took = {}
        self._set_chunks(self.chunks)


def regions_supported() -> bool:
    """Whether numba's threads are an OpenMP team (every chunk on a thread of its own)."""
    try:
        return numba.threading_layer() == "omp"
    except ValueError:  # no parallel launch yet in this process
        return False


def plan(calls: list[tuple[Callable, tuple]], nt: int) -> list[tuple[Callable, tuple]]:
    """The calls with each run of two or more numba kernels as one :class:`Region`
    (a call ``(region, ())``); other calls (numpy's) stay as they are between them."""
    out: list = []
    run: list = []

    def close() -> None:
        if len(run) > 1:
            out.append((Region(list(run), nt), ()))
        else:
            out.extend(run)
        run.clear()

    for fn, args in calls:
        if isinstance(fn, numba.core.registry.CPUDispatcher):
            run.append((fn, args))
        else:
            close()
            out.append((fn, args))
    close()
    return out
