"""numba kernels of the packed engine (numpy + numba only: no torch).

Binary activations are packed channels-last: ``P[n, y, x, g * WPG + j]`` is a
uint64 word holding channels ``64 j .. 64 j + 63`` of group ``g`` (``WPG`` words
per group, so every group starts on a word), bit set = -1. The spatial border is
a halo of zero words (= +1) as wide as the consuming conv's padding, so the inner
loops never test bounds; zero padding ("same" with pad value 0) is corrected per
output position by subtracting, for each tap that falls in the halo, the sum of
that tap's +-1 weights.

A binary conv's dot product over ``K`` bits is ``K - 2 popcount(x xor w)``. Where the
outputs per group are a multiple of BLOCK_CHANNELS, the sums come from a block written
in LLVM IR (``_xor_popcount_block``: 8 or 4 pixels x 2 vectors of outputs held in
registers over all K words; VPOPCNTQ with AVX-512 VPOPCNTDQ, a shuffle-based popcount on AVX2,
CNT on NEON). Elsewhere the kernels keep the output channels innermost (weights
stored ``[G, taps * WPG, Og]``) so each loaded input word is xor-ed with a contiguous
row of weight words, a loop LLVM vectorises itself. Every conv ends in one fused epilogue per
output pixel: ``y = act2(act1(v * a1 + b1) * a2 + b2 + res1 + res2)`` with per-channel
PReLU slopes (1 = identity, 0 = ReLU), writing the float output and/or the packed
signs for the next binary layer.

Groups of at most 32 channels (BinaryFaceNet's 16) would waste most of each word;
there ``pack_windows`` puts T = 64 // Cg horizontally adjacent pixels in one word
and ``bconv_win`` reads a kernel row in ceil(kw / T) words.

Scalar arguments travel in one int64 ``cfg`` array (numba's per-call dispatch cost
grows with the number of arguments); the epilogue's six per-channel vectors in
one float32 ``ep`` array of shape (6, C). Lessons measured here: LLVM vectorises a
loop best over zero-based slices passed to a small function, and not when the
output aliases the input or when the loop sits in a big fused body; that is why
the epilogue runs per output row in its own functions.
"""

from __future__ import annotations

import math
from types import FunctionType, SimpleNamespace

import llvmlite.binding as llb
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types, vectorize
from numba.core import cgutils
from numba.core.imputils import RefType, iternext_impl
from numba.extending import intrinsic, lower_builtin, models, register_model

_ONE = np.uint64(1)
_KW = {"cache": True, "nogil": True, "boundscheck": False}
_KW_SMALL = {"cache": True, "nogil": True, "boundscheck": False}
# x * a + b as one fma, as PyTorch's BatchNorm kernel does: the signs that follow then
# agree with PyTorch bit for bit
_KW_FMA = {"cache": True, "nogil": True, "boundscheck": False, "fastmath": {"contract"}}

# Row kernels are compiled twice from one source: serially (one thread) and with
# numba's ``parallel=True`` (``threads`` > 1, one image or a batch), where the
# output rows are cut into ``nt`` contiguous chunks, one per thread (``prange`` over
# chunks, each with its own scratch rows; every row kernel's last argument is ``nt``,
# 1 for the serial ones: numba's thread count read inside a kernel would stop it
# from being cached). Row results do not depend on the chunking, so both
# versions give the same bits. ``PARALLEL`` holds the twins by name.
_PARALLEL: dict = {}


def _twins(fn, **kw):
    """(serial, ``parallel=True``) numba compilations of one row-kernel source."""
    twin = FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel",
                        fn.__defaults__, fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_parallel"  # its own cache entry
    twin.__doc__ = fn.__doc__
    return njit(**kw)(fn), njit(parallel=True, **kw)(twin)


# The chunk claims of the running region (``region.py``): word TEAM holds its thread
# count, and thread t's counter sits at word CLAIM_LINE * (t + 1), a cache line of its
# own: the chunks taken from the front of t's own share (low 32 bits, by t) and from its
# back (high 32 bits, by threads that ran out of their own). Reached by symbol name, so
# the cached chunk variants find it in every process; one region runs at a time in a
# process (``region.Region`` holds a lock).
CLAIM_LINE, TEAM, MAX_TEAM = 8, 0, 64
_CLAIMS = np.zeros(CLAIM_LINE * (MAX_TEAM + 2), np.int64)
_CLAIM_AT = -(-_CLAIMS.ctypes.data // 64) * 64
_CLAIM_SYMBOL = "binface_region_chunk_claims"
llb.add_symbol(_CLAIM_SYMBOL, _CLAIM_AT)


def _claim_word(builder, idx):
    try:
        g = builder.module.get_global(_CLAIM_SYMBOL)
    except KeyError:
        g = ir.GlobalVariable(builder.module, ir.IntType(64), _CLAIM_SYMBOL)
        g.linkage = "external"
    return builder.gep(g, [idx])


@intrinsic
def _claims_add(typingctx, idx, val):
    """Claim word ``idx`` += ``val``, atomically; returns the old value."""
    def codegen(context, builder, sig, args):
        return builder.atomic_rmw("add", _claim_word(builder, args[0]), args[1], "seq_cst")
    return types.int64(types.int64, types.int64), codegen


@intrinsic
def _claims_load(typingctx, idx):
    def codegen(context, builder, sig, args):
        return builder.load_atomic(_claim_word(builder, args[0]), "acquire", 8)
    return types.int64(types.int64), codegen


@intrinsic
def _claims_store(typingctx, idx, val):
    def codegen(context, builder, sig, args):
        builder.store_atomic(args[1], _claim_word(builder, args[0]), "release", 8)
        return context.get_dummy_value()
    return types.void(types.int64, types.int64), codegen


@njit(nogil=True, cache=True)
def reset_chunks(team):
    """No chunk claimed yet, by any of ``team`` threads: before a region's first kernel
    and at each barrier (by the last thread there)."""
    _claims_store(TEAM, team)
    for t in range(team):
        _claims_store(CLAIM_LINE * (t + 1), 0)


_LOW = (1 << 32) - 1


def _claim_next(nt):
    """The next chunk of ``nt`` for this thread, or -1: its own share (an even split,
    as ``prange`` would cut it) front to back, then the other threads' from their back.
    Where the cores run at one speed each thread does just its own share, the rows it
    did in the layer before; a thread on a faster core goes on with a slower one's."""
    team = _claims_load(TEAM)
    t = numba.get_thread_id() % team  # the team is numba's thread count; any id is safe
    for k in range(team):
        u = (t + k) % team
        lo, hi = u * nt // team, (u + 1) * nt // team
        old = _claims_add(CLAIM_LINE * (u + 1), 1 if k == 0 else 1 << 32)
        front, back = old & _LOW, old >> 32
        if front + back < hi - lo:
            return lo + front if k == 0 else hi - 1 - back
    return -1


class ClaimedChunks(types.SimpleIteratorType):
    """What ``prange(nt)`` reads as in a row kernel's chunk variant (``region.py``): the
    chunks this thread claims (``_claim_next``), one at a time. An iterator type, not a
    numba generator: a generator loaded from the cache cannot be called from a kernel
    compiled later in the same process."""

    def __init__(self) -> None:
        super().__init__("claimed_chunks", types.int64)


_CLAIMED = ClaimedChunks()


@register_model(ClaimedChunks)
class _ClaimedModel(models.StructModel):
    def __init__(self, dmm, fe_type) -> None:
        super().__init__(dmm, fe_type, [("nt", types.int64)])


@intrinsic
def _thread_chunk(typingctx, nt):
    def codegen(context, builder, sig, args):
        it = cgutils.create_struct_proxy(_CLAIMED)(context, builder)
        it.nt = context.cast(builder, args[0], sig.args[0], types.int64)
        return it._getvalue()
    return _CLAIMED(nt), codegen


@lower_builtin("iternext", ClaimedChunks)
@iternext_impl(RefType.UNTRACKED)
def _claimed_next(context, builder, sig, args, result):
    it = cgutils.create_struct_proxy(_CLAIMED)(context, builder, value=args[0])
    c = context.compile_internal(builder, _claim_next, types.int64(types.int64), [it.nt])
    result.set_valid(builder.icmp_signed(">=", c, ir.Constant(ir.IntType(64), 0)))
    result.yield_(c)


def _rows(**kw):
    """njit ``fn`` (serial) and register its ``parallel=True`` twin in ``PARALLEL``."""
    def deco(fn):
        serial, _PARALLEL[fn.__name__] = _twins(fn, **kw)
        return serial
    return deco


@intrinsic
def popcount64(typingctx, x):
    """LLVM ``ctpop`` on a uint64 (VPOPCNTQ / POPCNT / CNT, whatever the target has)."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


def _vector_words() -> int:
    """64-bit lanes of the block kernel's vectors: 8 (512 bits) where the CPU has
    AVX-512 VPOPCNTDQ, else 4 (two NEON registers, or one AVX2 register)."""
    try:
        feats = llb.get_host_cpu_features()
        return 8 if feats.get("avx512vpopcntdq") and feats.get("avx512f") else 4
    except Exception:  # noqa: BLE001 - no feature query: the portable width
        return 4


# A block of 4 output pixels x 2 vectors of output channels, accumulated in registers
# over all K words: LLVM's vectoriser, left to itself, keeps the sums in memory and
# reloads and stores them every few words (load-bound at 60-65 % of the xor +
# popcount rate), and with numba's target settings never uses 512-bit vectors. The
# loop is written here in LLVM IR: eight vector sums carried as phi values, each
# input word broadcast once, each weight vector loaded once for the four pixels.
# llvm.ctpop on <N x i64> is VPOPCNTQ with AVX-512 VPOPCNTDQ, a byte-table popcount
# on AVX2 and CNT + pairwise adds on NEON: the same source on every target.
VECTOR_WORDS = _vector_words()
BLOCK_PIXELS, BLOCK_VECTORS = 4, 2
BLOCK_CHANNELS = BLOCK_VECTORS * VECTOR_WORDS


def _array_data(context, builder, signature):
    """data(i, value): the data pointer of the intrinsic's array argument i."""
    def data(i, v):
        return context.make_array(signature.args[i])(context, builder, v).data
    return data


def _block_pointers(builder, npix, xptr, xbase, pstep, wdata, woff, odata, ooff):
    """The pixels' input pointers (x + xbase + p * pstep), the weights' and the output's.
    (Offsets passed in an array cost the caller a loop of stores and the block as many
    loads, per block: a 3-word kernel's blocks spent more on that than on popcounts.)"""
    i64 = ir.IntType(64)
    bases = [builder.gep(xptr, [builder.add(xbase, builder.mul(ir.Constant(i64, p), pstep))])
             for p in range(npix)]
    return bases, builder.gep(wdata, [woff]), builder.gep(odata, [ooff])


def _wrapped_bases(builder, npix, xptr, xbase, pstep, col0, wo, rowstep):
    """The input pointers of ``npix`` pixels running on across rows of ``wo``: pixel 0
    at x + xbase in column ``col0``, each next one ``pstep`` on, or ``rowstep`` down and
    back to column 0 after the last column (a few selects, once per block)."""
    i64 = ir.IntType(64)
    one, zero = ir.Constant(i64, 1), ir.Constant(i64, 0)
    jump = builder.sub(rowstep, builder.mul(builder.sub(wo, one), pstep))
    col, off, bases = col0, xbase, []
    for p in range(npix):
        bases.append(builder.gep(xptr, [off]))
        if p + 1 < npix:
            nxt = builder.add(col, one)
            wrap = builder.icmp_signed("==", nxt, wo)
            col = builder.select(wrap, zero, nxt)
            off = builder.add(off, builder.select(wrap, jump, pstep))
    return bases


def _emit_block(builder, vt, npix: int, nv: int, bases, wptr, optr, krow, kstep, rowgap,
                wstride, nk, ostride, align: int, load_x, step, finish=None,
                per_lane: bool = False, plane=None) -> None:
    """The loop the register blocks share, emitted at ``builder``: npix x nv vector sums
    carried as phi values over k < nk, starting at zero. Per k: nv weight vectors
    loaded at wptr + k * wstride (+ lanes x h), and per pixel ``load_x(base, roff, kk)``
    (a scalar at its kernel-row offset) broadcast and folded in by ``step(sum, x, w)``;
    with ``per_lane``, ``load_x(base, roff, kk, h)`` is a vector of its own for each h
    (a depthwise conv: lane c reads channel c).
    Row offsets walk kernel rows of ``krow`` elements ``kstep`` apart, each row
    ``rowgap`` after the last; with ``plane`` = (rows, gap), every ``rows``-th row is
    ``gap`` after the last instead (kernel rows of an NCHW input: kh rows a channel
    plane, then the next plane). The sums (through ``finish`` if given: a vector of the
    output's type) are stored at optr + p * ostride + lanes x h."""
    i64 = ir.IntType(64)
    lanes = vt.count
    zero, one, zero_s = ir.Constant(vt, None), ir.Constant(i64, 1), ir.Constant(i64, 0)
    lanes0 = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
    pre = builder.block
    loop = builder.append_basic_block("blk.loop")
    done = builder.append_basic_block("blk.done")
    builder.cbranch(builder.icmp_signed(">", nk, zero_s), loop, done)
    builder.position_at_end(loop)
    k, kk, roff = builder.phi(i64), builder.phi(i64), builder.phi(i64)
    counters = [k, kk, roff]
    if plane is not None:
        row = builder.phi(i64)  # the kernel row within its plane
        counters.append(row)
    for phi in counters:
        phi.add_incoming(zero_s, pre)
    sums = [builder.phi(vt) for _ in range(npix * nv)]
    for acc in sums:
        acc.add_incoming(zero, pre)
    wrow = builder.gep(wptr, [builder.mul(k, wstride)])
    wv = [builder.load(builder.bitcast(builder.gep(wrow, [ir.Constant(i64, lanes * h)]),
                                       vt.as_pointer()), align=align) for h in range(nv)]
    new = []
    for px in range(npix):
        if per_lane:
            for h in range(nv):
                new.append(step(sums[nv * px + h], load_x(bases[px], roff, kk, h), wv[h]))
            continue
        xb = builder.insert_element(ir.Constant(vt, ir.Undefined), load_x(bases[px], roff, kk),
                                    ir.Constant(ir.IntType(32), 0))
        xb = builder.shuffle_vector(xb, ir.Constant(vt, ir.Undefined), lanes0)
        for h in range(nv):
            new.append(step(sums[nv * px + h], xb, wv[h]))
    k1, kk1 = builder.add(k, one), builder.add(kk, one)
    wrap = builder.icmp_signed("==", kk1, krow)
    kk_next = builder.select(wrap, zero_s, kk1)
    gap = rowgap
    updates = [k1, kk_next]
    if plane is not None:
        row1 = builder.add(row, one)
        pwrap = builder.icmp_signed("==", row1, plane[0])
        gap = builder.select(pwrap, plane[1], rowgap)
        row_next = builder.select(wrap, builder.select(pwrap, zero_s, row1), row)
    updates.append(builder.add(builder.add(roff, kstep), builder.select(wrap, gap, zero_s)))
    if plane is not None:
        updates.append(row_next)
    for phi, upd in zip(counters, updates, strict=True):
        phi.add_incoming(upd, builder.block)
    for acc, upd in zip(sums, new, strict=True):
        acc.add_incoming(upd, builder.block)
    builder.cbranch(builder.icmp_signed("<", k1, nk), loop, done)
    builder.position_at_end(done)
    fins = [builder.phi(vt) for _ in range(npix * nv)]  # phis first
    for fin, upd in zip(fins, new, strict=True):
        fin.add_incoming(zero, pre)
        fin.add_incoming(upd, loop)
    for px in range(npix):
        for h in range(nv):
            dst = builder.gep(optr, [builder.add(builder.mul(ir.Constant(i64, px), ostride),
                                                 ir.Constant(i64, lanes * h))])
            val = fins[nv * px + h] if finish is None else finish(fins[nv * px + h])
            builder.store(val, builder.bitcast(dst, val.type.as_pointer()), align=4)


def _llvm_intrinsic(builder, name: str, vt, nargs: int):
    """LLVM intrinsic ``name`` taking ``nargs`` values of type ``vt`` and returning one,
    declared once per module."""
    mod = builder.module
    return mod.globals.get(name) or ir.Function(mod, ir.FunctionType(vt, [vt] * nargs), name)


def _block_codegen(masked: bool, npix: int = BLOCK_PIXELS, wrapped: bool = False):
    """LLVM IR of :func:`_xor_popcount_block` for ``npix`` pixels (or of its ``masked``
    twin, whose second argument ``masks`` is and-ed into word k of a pixel as
    masks[k % krow]: window words hold taps past the kernel; or of its ``wrapped``
    twin, whose pixels run on across rows: three more arguments, col0, wo, rowstep,
    see :func:`_wrapped_bases`)."""
    sh = int(masked)  # argument positions after ``x`` move by one with masks

    def codegen(context, builder, signature, args):
        x_v = args[0]
        (xbase, pstep, krow, kstep, rowgap, w_v, woff, wstride, nk, out_v, ooff,
         ostride, kbits) = args[1 + sh:14 + sh]
        i64 = ir.IntType(64)
        nw, nv = VECTOR_WORDS, BLOCK_VECTORS
        vt = ir.VectorType(i64, nw)

        data = _array_data(context, builder, signature)
        bases, wptr, optr = _block_pointers(builder, npix, data(0, x_v), xbase, pstep,
                                            data(6 + sh, w_v), woff, data(10 + sh, out_v), ooff)
        if wrapped:
            bases = _wrapped_bases(builder, npix, data(0, x_v), xbase, pstep, *args[14:17])
        ctpop = _llvm_intrinsic(builder, f"llvm.ctpop.v{nw}i64", vt, 1)
        mptr = data(1, args[1]) if masked else None
        masks_at: dict = {}  # word k's mask, loaded once for all the block's pixels

        def load_x(base, roff, kk):
            xw = builder.load(builder.gep(base, [roff]))
            if not masked:
                return xw
            if id(kk) not in masks_at:
                masks_at[id(kk)] = builder.load(builder.gep(mptr, [kk]))
            return builder.and_(xw, masks_at[id(kk)])

        kb = builder.insert_element(ir.Constant(vt, ir.Undefined), kbits,
                                    ir.Constant(ir.IntType(32), 0))
        kb = builder.shuffle_vector(kb, ir.Constant(vt, ir.Undefined),
                                    ir.Constant(ir.VectorType(ir.IntType(32), nw), [0] * nw))
        ft = ir.VectorType(ir.FloatType(), nw)

        def finish(s):  # the dot product kbits - 2 popcount, as float32 (exact below 2**24)
            return builder.sitofp(builder.sub(kb, builder.shl(s, ir.Constant(vt, [1] * nw))),
                                  ft)

        _emit_block(builder, vt, npix, nv, bases, wptr, optr, krow, kstep, rowgap, wstride, nk,
                    ostride, 8, load_x,
                    lambda acc, xb, w: builder.add(acc, builder.call(ctpop, [builder.xor(xb, w)])),
                    finish)
        return context.get_dummy_value()

    return codegen


_I64 = types.int64


def _make_block(npix: int, masked: bool, wrapped: bool = False):
    """The block intrinsic for ``npix`` pixels (the last, partial block of a row runs
    one for the pixels it has: a 3-wide row no longer computes a fourth)."""
    if wrapped:
        def block(typingctx, x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out,
                  ooff, ostride, kbits, col0, wo, rowstep):
            sig = types.void(x, _I64, _I64, _I64, _I64, _I64, w, _I64, _I64, _I64, out, _I64,
                             _I64, _I64, _I64, _I64, _I64)
            return sig, _block_codegen(False, npix, True)
    elif masked:
        def block(typingctx, x, masks, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk,
                  out, ooff, ostride, kbits):
            sig = types.void(x, masks, _I64, _I64, _I64, _I64, _I64, w, _I64, _I64, _I64, out,
                             _I64, _I64, _I64)
            return sig, _block_codegen(True, npix)
    else:
        def block(typingctx, x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out,
                  ooff, ostride, kbits):
            sig = types.void(x, _I64, _I64, _I64, _I64, _I64, w, _I64, _I64, _I64, out, _I64,
                             _I64, _I64)
            return sig, _block_codegen(False, npix)
    block.__name__ = block.__qualname__ = f"xor_popcount_block{npix}" + (
        "_masked" if masked else "_wrapped" if wrapped else "")
    return intrinsic(block)


_blk1, _blk2, _blk3, _blk4, _blk8 = (_make_block(n, False) for n in (1, 2, 3, 4, 8))
# With 32 vector registers (AVX-512) a row's blocks take 8 pixels: 16 sums held, each
# weight vector loaded once for 8 pixels, half the blocks' set-up and stores per word.
WIDE_PIXELS = 8 if VECTOR_WORDS == 8 else BLOCK_PIXELS
_mblk1, _mblk2, _mblk3, _mblk4, _mblk8 = (_make_block(n, True) for n in (1, 2, 3, 4, 8))
_wblk1, _wblk2, _wblk3, _wblk4, _wblk8 = (_make_block(n, False, True) for n in (1, 2, 3, 4, 8))


@njit(inline="always")
def _block_npix(ox, wo):
    """Pixels of a row's block starting at ``ox``: WIDE_PIXELS while they fit, then
    blocks of the 1-4 pixels left."""
    return WIDE_PIXELS if ox + WIDE_PIXELS <= wo else min(BLOCK_PIXELS, wo - ox)


@njit(inline="always")
def _xor_popcount_block(npix, x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk,
                        out, ooff, ostride, kbits):
    """out[ooff + p * ostride + c] = kbits - 2 * (sum over k < nk of popcount(x[xbase + p *
    pstep + r(k)] xor w[woff + k * wstride + c])) for p < npix (1-4, or 8), c < BLOCK_CHANNELS:
    the dot products, as float32 (overwritten; a separate pass turning int64 sums into
    floats cost as much as a 1 x 1 conv's popcounts). r(k) walks kernel rows of ``krow``
    words ``kstep`` apart, each row ``rowgap`` further on: r(k) = (k % krow) * kstep + (k // krow) *
    (krow * kstep + rowgap). So the pixels' words are read where they lie in the
    packed input."""
    if npix == 8:
        _blk8(x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff, ostride, kbits)
    elif npix >= 4:
        _blk4(x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff, ostride, kbits)
    elif npix == 3:
        _blk3(x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff, ostride, kbits)
    elif npix == 2:
        _blk2(x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff, ostride, kbits)
    else:
        _blk1(x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff, ostride, kbits)


@njit(inline="always")
def _xor_popcount_block_wrapped(npix, x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride,
                                nk, out, ooff, ostride, kbits, col0, wo, rowstep):
    """:func:`_xor_popcount_block` for pixels running on across rows of ``wo``
    (:func:`_wrapped_bases`), outputs ``ostride`` apart throughout."""
    if npix == 8:
        _wblk8(x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff, ostride,
               kbits, col0, wo, rowstep)
    elif npix >= 4:
        _wblk4(x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff, ostride,
               kbits, col0, wo, rowstep)
    elif npix == 3:
        _wblk3(x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff, ostride,
               kbits, col0, wo, rowstep)
    elif npix == 2:
        _wblk2(x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff, ostride,
               kbits, col0, wo, rowstep)
    else:
        _wblk1(x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff, ostride,
               kbits, col0, wo, rowstep)


@njit(inline="always")
def _xor_popcount_block_masked(npix, x, masks, xbase, pstep, krow, kstep, rowgap, w, woff,
                               wstride, nk, out, ooff, ostride, kbits):
    """:func:`_xor_popcount_block` with word k of each pixel and-ed with masks[k % krow]."""
    if npix == 8:
        _mblk8(x, masks, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff,
                ostride, kbits)
    elif npix >= 4:
        _mblk4(x, masks, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff,
                ostride, kbits)
    elif npix == 3:
        _mblk3(x, masks, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff,
                ostride, kbits)
    elif npix == 2:
        _mblk2(x, masks, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff,
                ostride, kbits)
    else:
        _mblk1(x, masks, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff,
                ostride, kbits)


# ---------------------------------------------------------------- float block
# The same register blocking for float convs on few input channels (an RGB stem):
# ``npix`` output pixels x ``nv`` vectors of FMA_LANES output channels, summed with fma
# over all K taps as phi values; each input float is broadcast once, each weight vector
# loaded once for the pixels. Written as numba loops over output rows in memory, the
# stem ran at 7-12 G MAC/s, load- and store-bound.
FMA_LANES = 16  # float32 lanes: one 512-bit register, two AVX2 or four NEON registers


def _llvm_fma(builder, vt):
    """The ``llvm.fma`` intrinsic on float vectors of type ``vt``."""
    return _llvm_intrinsic(builder, f"llvm.fma.v{vt.count}f32", vt, 3)


def _fma_codegen(npix: int, nv: int, per_lane: bool, planar: bool = False):
    """LLVM IR of the float block (see :func:`_fma_block`; ``planar``: two more
    arguments, the plane's rows and gap, see :func:`_emit_block`)."""

    def codegen(context, builder, signature, args):
        x_v, xbase, pstep, krow, kstep, rowgap, w_v, woff, wstride, nk, out_v, ooff, \
            ostride = args[:13]
        i64 = ir.IntType(64)
        vt = ir.VectorType(ir.FloatType(), FMA_LANES)
        data = _array_data(context, builder, signature)
        bases, wptr, optr = _block_pointers(builder, npix, data(0, x_v), xbase, pstep,
                                            data(6, w_v), woff, data(10, out_v), ooff)
        fma = _llvm_fma(builder, vt)

        def load_x(base, roff, kk, h=0):
            if not per_lane:  # one float, broadcast by the block
                return builder.load(builder.gep(base, [roff]))
            ptr = builder.gep(base, [builder.add(roff, ir.Constant(i64, FMA_LANES * h))])
            return builder.load(builder.bitcast(ptr, vt.as_pointer()), align=4)

        _emit_block(builder, vt, npix, nv, bases, wptr, optr, krow, kstep, rowgap, wstride, nk,
                    ostride, 4, load_x, lambda acc, x, w: builder.call(fma, [x, w, acc]),
                    per_lane=per_lane, plane=args[13:15] if planar else None)
        return context.get_dummy_value()

    return codegen


def _make_fblock(npix: int, nv: int, per_lane: bool):
    def block(typingctx, x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff,
              ostride):
        sig = types.void(x, _I64, _I64, _I64, _I64, _I64, w, _I64, _I64, _I64, out, _I64, _I64)
        return sig, _fma_codegen(npix, nv, per_lane)
    block.__name__ = block.__qualname__ = f"{'dw' if per_lane else 'fma'}_block{npix}x{nv}"
    return intrinsic(block)


def _make_pblock(npix: int, nv: int):
    """The float block reading an NCHW input: :func:`_make_fblock`'s arguments, then
    the kernel rows of a channel plane and the gap to the next plane."""
    def block(typingctx, x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff,
              ostride, prows, pgap):
        sig = types.void(x, _I64, _I64, _I64, _I64, _I64, w, _I64, _I64, _I64, out, _I64, _I64,
                         _I64, _I64)
        return sig, _fma_codegen(npix, nv, False, planar=True)
    block.__name__ = block.__qualname__ = f"planar_block{npix}x{nv}"
    return intrinsic(block)


# pixels of a block by its vectors (index): 8 to 16 sums in registers, enough to
# hide the fma latency
FMA_BLOCK_PIXELS = (0, 8, 4, 4, 4)
# [per_lane][full][nv - 1]: the blocks of FMA_BLOCK_PIXELS[nv] pixels (full) or of one
_FB = tuple(tuple(tuple(_make_fblock(FMA_BLOCK_PIXELS[v] if full else 1, v, lane)
                        for v in (1, 2, 3, 4)) for full in (False, True))
            for lane in (False, True))
_f1x1, _f1x2, _f1x3, _f1x4 = _FB[0][0]
_f8x1, _f4x2, _f4x3, _f4x4 = _FB[0][1]
_d1x1, _d1x2, _d1x3, _d1x4 = _FB[1][0]
_d8x1, _d4x2, _d4x3, _d4x4 = _FB[1][1]
# [full][nv - 1]: the same blocks on an NCHW input (_make_pblock)
_PB = tuple(tuple(_make_pblock(FMA_BLOCK_PIXELS[v] if full else 1, v) for v in (1, 2, 3, 4))
            for full in (False, True))
_p1x1, _p1x2, _p1x3, _p1x4 = _PB[0]
_p8x1, _p4x2, _p4x3, _p4x4 = _PB[1]


@njit(inline="always")
def _fma_block(nv, full, per_lane, x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk,
               out, ooff, ostride):
    """out[ooff + p * ostride + c] = sum over k < nk of x[xbase + p * pstep + r(k)] *
    w[woff + k * wstride + c] (float32, fma in k order; overwritten) for the
    FMA_BLOCK_PIXELS[nv] pixels of a full block (one pixel if not ``full``) and
    c < nv * FMA_LANES. r(k) walks kernel rows of ``krow`` taps ``kstep`` floats apart,
    each row ``rowgap`` after the last one's end (as in :func:`_xor_popcount_block`).
    ``per_lane`` (a depthwise conv): lane c reads x[... + r(k) + c], its own channel,
    instead of one float for all lanes."""
    a = (x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff, ostride)
    if per_lane:
        if nv == 1:
            if full:
                _d8x1(*a)
            else:
                _d1x1(*a)
        elif nv == 2:
            if full:
                _d4x2(*a)
            else:
                _d1x2(*a)
        elif nv == 3:
            if full:
                _d4x3(*a)
            else:
                _d1x3(*a)
        elif full:
            _d4x4(*a)
        else:
            _d1x4(*a)
    elif nv == 1:
        if full:
            _f8x1(*a)
        else:
            _f1x1(*a)
    elif nv == 2:
        if full:
            _f4x2(*a)
        else:
            _f1x2(*a)
    elif nv == 3:
        if full:
            _f4x3(*a)
        else:
            _f1x3(*a)
    elif full:
        _f4x4(*a)
    else:
        _f1x4(*a)


# 4-vector (64-output) blocks of 1 to FMA4_PIXELS pixels for pointwise products: the
# pixels left after the full blocks go in one block, not one by one (each pass over
# the pixels streams the whole weight stripe from L2: 9 pixels took 4 + 4 + 1 passes)
FMA4_PIXELS = 6 if VECTOR_WORDS == 8 else 4  # 24 sums fit AVX-512's 32 registers
# the 1- and 4-pixel ones are _fma_block's own (_f1x4, _f4x4)
_g2, _g3, _g5, _g6 = (_make_fblock(n, 4, False) for n in (2, 3, 5, 6))


@njit(inline="always")
def _fma4_block(npix, x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff,
                ostride):
    """:func:`_fma_block` for ``nv`` = 4, one float per pixel, ``npix`` (1-6) pixels."""
    a = (x, xbase, pstep, krow, kstep, rowgap, w, woff, wstride, nk, out, ooff, ostride)
    if npix >= 6:
        _g6(*a)
    elif npix == 5:
        _g5(*a)
    elif npix == 4:
        _f4x4(*a)
    elif npix == 3:
        _g3(*a)
    elif npix == 2:
        _g2(*a)
    else:
        _f1x4(*a)


# ---------------------------------------------------------------- epilogue
# The epilogue runs on one output row of pixels at a time, as separate small
# functions: fused into the conv loops, LLVM stopped vectorising them.
@njit(**_KW_FMA)
def _act_rows(src, dst, ep, r1, r2, nres):
    """dst = act2(act1(src * a1 + b1) * a2 + b2 + r1 + r2) for a [W, C] row of pixels."""
    for i in range(src.shape[0]):
        s = src[i]
        d = dst[i]
        ra = r1[i] if nres > 0 else r1[0]
        rb = r2[i] if nres > 1 else r2[0]
        for o in range(s.shape[0]):
            t = s[o] * ep[0, o] + ep[1, o]
            t = t if t >= 0 else t * ep[2, o]
            t = t * ep[3, o] + ep[4, o]
            if nres > 0:
                t += ra[o]
            if nres > 1:
                t += rb[o]
            d[o] = t if t >= 0 else t * ep[5, o]


# Epilogue stages an op really has (``ep_kind``): bit 0 the first affine, 1 the first
# PReLU, 2 the second affine, 3 the second PReLU, 4 the gate. The IR epilogue has a
# loop of its own for each kind below (what the zoo's layers use) and a general one
# for the rest: on AVX-512's two vector ports the general chain (two fma, two
# compare-selects, two multiplies, the gate's) was the bound, twice a BN + PReLU's.
EP_KINDS = (0b00011, 0b10011, 0b00001, 0b01001, 0b00110, 0b01110, 0b00000)
EP_KIND_ALL = 0b11111


def ep_kind(ep: np.ndarray) -> int:
    """The stages of an epilogue [6, C] that are not the identity (bits as EP_KINDS).
    Skipping one changes at most the sign of a zero (x * 1 + 0 turns -0 into +0),
    which no sign or sum downstream sees."""
    a1 = not (np.all(ep[0] == 1) and np.all(ep[1] == 0))
    a2 = not (np.all(ep[3] == 1) and np.all(ep[4] == 0))
    return int(a1) | int(not np.all(ep[2] == 1)) << 1 | int(a2) << 2 | \
        int(not np.all(ep[5] == 1)) << 3


def _act_codegen(nres: int):
    """LLVM IR of the epilogue (:func:`_act_rows`, then the signs :func:`_pack_rows`
    takes) for C-contiguous [W, C] rows, C a multiple of FMA_LANES. Per vector of
    channels its six ``ep`` vectors stay in registers while the pixels stream past:
    fma, compare-select, fma, residual adds, compare-select, times the gate (flags &
    8: a squeeze-excite product, r2 then a gate row [C]), each stage only where
    ``flags >> 4`` (:func:`ep_kind`) has it; the result is stored (flags & 1) and/or
    its sign mask (flags & 2; compare per flags & 4 as in _pack_rows' mode) or-ed into
    the packed word at p * pstride + g * wpg + j, bit offset (c % cg) % 64 (cg a
    multiple of FMA_LANES, so a vector never straddles words). LLVM's own loops ran
    one 64-channel pixel at a time, their set-up and alias checks costing more than
    the arithmetic, and packing re-read every value."""

    def codegen(context, builder, signature, args):
        src_v, dst_v, ep_v, r1_v, r2_v, npix, nch, q_v, pstride, cg, wpg, flags = args
        i64, f32 = ir.IntType(64), ir.FloatType()
        vt = ir.VectorType(f32, FMA_LANES)
        data = _array_data(context, builder, signature)
        src, dst, ep, qp = data(0, src_v), data(1, dst_v), data(2, ep_v), data(7, q_v)
        res = [data(3, r1_v), data(4, r2_v)][:nres]
        fma = _llvm_fma(builder, vt)
        zero_v, zero = ir.Constant(vt, None), ir.Constant(i64, 0)

        def const(v):
            return ir.Constant(i64, v)

        def vload(ptr, off):
            return builder.load(builder.bitcast(builder.gep(ptr, [off]), vt.as_pointer()),
                                align=4)

        def prelu(t, slope):
            return builder.select(builder.fcmp_ordered(">=", t, zero_v), t,
                                  builder.fmul(t, slope))

        def flag(bit):
            return builder.icmp_signed("!=", builder.and_(flags, const(bit)), zero)

        store_f, pack, le, gated = flag(1), flag(2), flag(4), flag(8)
        kind = builder.or_(builder.and_(builder.ashr(flags, const(4)), const(15)),
                           builder.shl(builder.and_(builder.ashr(flags, const(3)), const(1)),
                                       const(4)))
        pre = builder.block
        outer = builder.append_basic_block("act.chunk")
        load_gate = builder.append_basic_block("act.gate")
        chunk_body = builder.append_basic_block("act.chunk_body")
        next_chunk = builder.append_basic_block("act.next")
        done = builder.append_basic_block("act.done")
        builder.cbranch(builder.and_(builder.icmp_signed(">", nch, zero),
                                     builder.icmp_signed(">", npix, zero)), outer, done)
        builder.position_at_end(outer)
        c, g, within = builder.phi(i64), builder.phi(i64), builder.phi(i64)
        for phi in (c, g, within):
            phi.add_incoming(zero, pre)
        evs = [vload(ep, builder.add(builder.mul(const(j), nch), c)) for j in range(6)]
        builder.cbranch(gated, load_gate, chunk_body)
        builder.position_at_end(load_gate)
        gv_loaded = vload(data(4, r2_v), c)  # flags & 8: r2 holds a gate row [C]
        builder.branch(chunk_body)
        builder.position_at_end(chunk_body)
        gv = builder.phi(vt)
        gv.add_incoming(ir.Constant(vt, [1.0] * FMA_LANES), outer)
        gv.add_incoming(gv_loaded, load_gate)
        # the chunk's packed word (g * wpg + j) and bit offset in it: group g and the
        # offset ``within`` it are carried from chunk to chunk (no division)
        word = builder.add(builder.mul(g, wpg), builder.ashr(within, const(6)))
        shift = builder.and_(within, const(63))
        first = builder.icmp_signed("==", shift, zero)

        def pixel_loop(stages: int):
            """The pixel loop for one kind; returns its first block."""
            inner = builder.append_basic_block(f"act.pix{stages}")
            do_store = builder.append_basic_block("act.store")
            after_store = builder.append_basic_block("act.stored")
            do_pack = builder.append_basic_block("act.pack")
            next_pix = builder.append_basic_block("act.next_pix")
            builder.position_at_end(inner)
            p = builder.phi(i64)
            p.add_incoming(zero, chunk_body)
            off = builder.add(builder.mul(p, nch), c)
            t = vload(src, off)
            if stages & 1:
                t = builder.call(fma, [t, evs[0], evs[1]])
            if stages & 2:
                t = prelu(t, evs[2])
            if stages & 4:
                t = builder.call(fma, [t, evs[3], evs[4]])
            for r in res:
                t = builder.fadd(t, vload(r, off))
            if stages & 8:
                t = prelu(t, evs[5])
            out = builder.fmul(t, gv) if stages & 16 else t
            builder.cbranch(store_f, do_store, after_store)
            builder.position_at_end(do_store)
            builder.store(out, builder.bitcast(builder.gep(dst, [off]), vt.as_pointer()),
                          align=4)
            builder.branch(after_store)
            builder.position_at_end(after_store)
            builder.cbranch(pack, do_pack, next_pix)
            builder.position_at_end(do_pack)
            m = builder.select(le, builder.fcmp_unordered("<=", out, zero_v),
                               builder.fcmp_ordered("<", out, zero_v))
            bits = builder.zext(builder.bitcast(m, ir.IntType(FMA_LANES)), i64)
            wptr = builder.gep(qp, [builder.add(builder.mul(p, pstride), word)])
            old = builder.select(first, zero, builder.load(wptr))
            builder.store(builder.or_(old, builder.shl(bits, shift)), wptr)
            builder.branch(next_pix)
            builder.position_at_end(next_pix)
            p1 = builder.add(p, const(1))
            p.add_incoming(p1, next_pix)
            builder.cbranch(builder.icmp_signed("<", p1, npix), inner, next_chunk)
            return inner

        loops = {k: pixel_loop(k) for k in (EP_KIND_ALL, *EP_KINDS)}
        builder.position_at_end(chunk_body)
        sw = builder.switch(kind, loops[EP_KIND_ALL])
        for k in EP_KINDS:
            sw.add_case(ir.Constant(i64, k), loops[k])
        builder.position_at_end(next_chunk)
        c1 = builder.add(c, const(FMA_LANES))
        w1 = builder.add(within, const(FMA_LANES))
        wrap = builder.icmp_signed(">=", w1, cg)
        c.add_incoming(c1, next_chunk)
        g.add_incoming(builder.select(wrap, builder.add(g, const(1)), g), next_chunk)
        within.add_incoming(builder.select(wrap, zero, w1), next_chunk)
        builder.cbranch(builder.icmp_signed("<", c1, nch), outer, done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return codegen


def _make_act(nres: int):
    def act(typingctx, src, dst, ep, r1, r2, npix, nch, q, pstride, cg, wpg, flags):
        sig = types.void(src, dst, ep, r1, r2, _I64, _I64, q, _I64, _I64, _I64, _I64)
        return sig, _act_codegen(nres)
    act.__name__ = act.__qualname__ = f"act_block{nres}"
    return intrinsic(act)


_act0, _act1, _act2 = (_make_act(r) for r in range(3))


@njit(inline="always")
def _rows_ok(a, c):
    """Whether a 2-D array is C-contiguous rows of ``c`` floats (what _act0-2 read)."""
    return a.strides[1] == 4 and a.strides[0] == 4 * c


@njit(**_KW_SMALL)
def _word_lt(v):
    """64 sign bits: bit b set when v[b] < 0 (sign(0) = +1)."""
    bits = np.uint64(0)
    for b in range(64):
        if v[b] < 0:
            bits |= _ONE << np.uint64(b)
    return bits


@njit(**_KW_SMALL)
def _word_le(v):
    """64 sign bits: bit b set unless v[b] > 0 (sign(0) = -1)."""
    bits = np.uint64(0)
    for b in range(64):
        if not v[b] > 0:
            bits |= _ONE << np.uint64(b)
    return bits


def _make_sign_word(le: bool):
    """64 sign bits of v[off:off + 64] (unit stride) as one compare of a <64 x float>
    vector, bitcast to an i64: VCMPPS into mask registers with AVX-512, compares and
    narrowing elsewhere. The bit loops above (what LLVM made of them) took 3-4x longer.
    ``le``: bit = not v > 0 (an unordered-or-<= compare); else bit = v < 0."""
    def sign_word(typingctx, v, off):
        def codegen(context, builder, signature, args):
            arr = context.make_array(signature.args[0])(context, builder, args[0])
            vt = ir.VectorType(ir.FloatType(), 64)
            x = builder.load(builder.bitcast(builder.gep(arr.data, [args[1]]),
                                             vt.as_pointer()), align=4)
            zero = ir.Constant(vt, [0.0] * 64)
            m = (builder.fcmp_unordered("<=", x, zero) if le
                 else builder.fcmp_ordered("<", x, zero))
            return builder.bitcast(m, ir.IntType(64))
        return types.uint64(v, types.int64), codegen
    sign_word.__name__ = sign_word.__qualname__ = "sign_word_le" if le else "sign_word_lt"
    return intrinsic(sign_word)


_sign_word_lt, _sign_word_le = _make_sign_word(False), _make_sign_word(True)


@njit(**_KW_SMALL)
def _pack_full(src, dst, mode):
    """Whole words of sign bits of each [W, C] row (mode as in :func:`_pack_rows`)."""
    for i in range(src.shape[0]):
        v = src[i]
        unit = v.strides[0] == 4
        for k in range(dst.shape[1]):
            if unit:
                dst[i, k] = _sign_word_lt(v, k * 64) if mode == 0 else _sign_word_le(v, k * 64)
            else:
                dst[i, k] = (_word_lt(v[k * 64:k * 64 + 64]) if mode == 0
                             else _word_le(v[k * 64:k * 64 + 64]))


@njit(**_KW_SMALL)
def _pack_rows(src, dst, mode, ng, cg, wpg):
    """Sign bits of a [W, C] row of pixels into dst [W, G * WPG] words (group-aligned).

    mode 0: bit = v < 0 (sign(0) = +1); mode 1: bit = not v > 0 (sign(0) = -1). Full
    words go through a fixed 64-lane helper on zero-based slices (one callee per
    loop, so LLVM inlines it) that becomes vector compares, 3-4x faster than bit by
    bit; groups that do not fill words are cut out of the contiguous mask.
    """
    if cg % 64 == 0:
        _pack_full(src, dst, mode)
        return
    c_all = src.shape[1]
    nfull = c_all // 64
    fullw = np.empty((src.shape[0], nfull), np.uint64)
    _pack_full(src, fullw, mode)
    if c_all % 64 == 0 and 64 % cg == 0:  # groups are aligned sub-words: split each word
        per = 64 // cg
        low = (_ONE << np.uint64(cg)) - _ONE
        for i in range(src.shape[0]):
            for k in range(nfull):
                wd = fullw[i, k]
                for sub in range(per):
                    dst[i, k * per + sub] = (wd >> np.uint64(sub * cg)) & low
        return
    m = np.zeros(nfull + 2, np.uint64)
    for i in range(src.shape[0]):
        v = src[i]
        for k in range(nfull):
            m[k] = fullw[i, k]
        bits = np.uint64(0)
        for b in range(c_all - nfull * 64):
            t = v[nfull * 64 + b]
            if (mode == 0 and t < 0) or (mode != 0 and not t > 0):
                bits |= _ONE << np.uint64(b)
        m[nfull] = bits
        for g in range(ng):
            for j in range(wpg):
                pos = g * cg + j * 64
                nb = min(64, cg - j * 64)
                k = pos >> 6
                off = np.uint64(pos & 63)
                w = m[k] >> off
                if (pos & 63) != 0 and (pos & 63) + nb > 64:
                    w |= m[k + 1] << (np.uint64(64) - off)
                if nb < 64:
                    w &= (_ONE << np.uint64(nb)) - _ONE
                dst[i, g * wpg + j] = w


@njit(**_KW_SMALL)
def _epilogue_row(v, tmp, n, oy, x0, ep, res1, res2, yout, pout, cfg):
    """The fused epilogue of pixels x0 .. x0 + len(v) of output row ``oy``: ``v``
    [pixels, C] raw sums -> outputs (a whole row, or the part of one a thread owns).

    ``tmp`` (same shape) receives the result when no float output is wanted: an
    in-place update defeats LLVM's alias check and runs scalar, 10x slower.
    """
    nres, out_float, out_pack = cfg[EP_NRES], cfg[EP_OUT_FLOAT], cfg[EP_OUT_PACK]
    gate = cfg[EP_GATE]  # res2 is then a gate [N, 1, 1, C] (nres <= 1)
    wo, c = v.shape
    x1 = x0 + wo
    r1 = res1[n, oy, x0:x1] if nres > 0 else res1[0, 0]
    r2 = res2[n, oy, x0:x1] if nres > 1 else res2[n, 0] if gate else res2[0, 0]
    dst = yout[n, oy, x0:x1] if out_float else tmp
    ppl = cfg[EP_PPL] + x0
    q = pout[n, oy + cfg[EP_PPT], ppl:ppl + wo] if out_pack else pout[0, 0]
    if (c % FMA_LANES == 0 and _rows_ok(v, c) and _rows_ok(dst, c) and _rows_ok(ep, c)
            and (nres < 1 or _rows_ok(r1, c)) and (nres < 2 or _rows_ok(r2, c))
            and (not out_pack or (cfg[EP_PCG] % FMA_LANES == 0 and q.strides[1] == 8))
            and (not gate or r2.strides[1] == 4)):
        flags = (out_float + 2 * out_pack + 4 * (cfg[EP_PMODE] != 0) + 8 * (gate != 0)
                 + 16 * cfg[EP_KIND])
        ps = q.strides[0] // 8
        if nres == 0:
            _act0(v, dst, ep, r1, r2, wo, c, q, ps, cfg[EP_PCG], cfg[EP_PWPG], flags)
        elif nres == 1:
            _act1(v, dst, ep, r1, r2, wo, c, q, ps, cfg[EP_PCG], cfg[EP_PWPG], flags)
        else:
            _act2(v, dst, ep, r1, r2, wo, c, q, ps, cfg[EP_PCG], cfg[EP_PWPG], flags)
        return
    _act_rows(v, dst, ep, r1, r2, nres)
    if gate:
        g = r2[0]
        for i in range(wo):
            for o in range(c):
                dst[i, o] *= g[o]
    if out_pack:
        _pack_rows(dst, q, cfg[EP_PMODE], cfg[EP_PG], cfg[EP_PCG], cfg[EP_PWPG])


# cfg layout of the epilogue part, shared by every conv kernel
EP_NRES, EP_OUT_FLOAT, EP_OUT_PACK, EP_PMODE, EP_PG, EP_PCG, EP_PWPG, EP_PPT, EP_PPL, \
    EP_OUT_ACC, EP_GATE, EP_KIND = range(20, 32)
CFG_SIZE = 32


# ---------------------------------------------------------------- packing
@_rows(**_KW_FMA)
def pack_nhwc(x, gate, ep, out, cfg, nt):
    """Signs of ``x`` (N, H, W, C) into ``out`` (N, Hp, Wp, G * WPG) at offset (pt, pl).

    cfg: mode (0: bit = x < 0, 1: bit = not x > 0), G, Cg, WPG, pt, pl, use_gate,
    use_affine, channels (0: all of x). With ``use_affine`` the sign is of
    ``x * ep[0] + ep[1]`` (a folded BatchNorm); with ``use_gate`` of ``x * gate[n, c]``
    (a squeeze-excite product).
    """
    mode, ng, cg, wpg, pt, pl, use_gate, use_aff = (cfg[0], cfg[1], cfg[2], cfg[3], cfg[4],
                                                    cfg[5], cfg[6], cfg[7])
    n_, h_, w_, c_ = x.shape
    if cfg[8] > 0:  # the first cfg[8] channels of a wider buffer (a concatenation chain)
        c_ = cfg[8]
    rows = n_ * h_
    nt = max(1, min(nt, rows))
    for ch in prange(nt):
        buf = np.empty((w_, c_), np.float32)
        for qq in range(ch * rows // nt, (ch + 1) * rows // nt):
            n, yy = qq // h_, qq % h_
            row = x[n, yy]
            dst = out[n, yy + pt, pl:pl + w_]
            if use_aff or use_gate or c_ < x.shape[3]:
                for xx in range(w_):
                    src = row[xx]
                    b = buf[xx]
                    for c in range(c_):
                        t = src[c]
                        if use_aff:
                            t = t * ep[0, c] + ep[1, c]
                        if use_gate:
                            t = t * gate[n, c]
                        b[c] = t
                _pack_rows(buf, dst, mode, ng, cg, wpg)
            else:
                _pack_rows(row, dst, mode, ng, cg, wpg)


# ---------------------------------------------------------------- binary conv
@njit(inline="always")
def _acc1(acc, x0, w0):
    for o in range(acc.shape[0]):
        acc[o] += popcount64(x0 ^ w0[o])


@njit(inline="always")
def _acc3(acc, x0, x1, x2, w0, w1, w2):
    for o in range(acc.shape[0]):
        acc[o] += popcount64(x0 ^ w0[o]) + popcount64(x1 ^ w1[o]) + popcount64(x2 ^ w2[o])


@njit(inline="always")
def _acc3x2(a0, a1, x0, x1, x2, y0, y1, y2, w0, w1, w2):
    """Two pixels at once: each weight word loaded serves both (load-bound otherwise)."""
    for o in range(a0.shape[0]):
        u0, u1, u2 = w0[o], w1[o], w2[o]
        a0[o] += popcount64(x0 ^ u0) + popcount64(x1 ^ u1) + popcount64(x2 ^ u2)
        a1[o] += popcount64(y0 ^ u0) + popcount64(y1 ^ u1) + popcount64(y2 ^ u2)


@njit(inline="always")
def _acc1x2(a0, a1, x0, y0, w0):
    for o in range(a0.shape[0]):
        u0 = w0[o]
        a0[o] += popcount64(x0 ^ u0)
        a1[o] += popcount64(y0 ^ u0)


@njit(inline="always")
def _block_row(pf, n, y0, hp, wp, wpg, sw, ox, wo, og, krow, nk, wblk, b, vf, kbits):
    """Dot products of pixels ox .. wo - 1 of output row (n, y0 / sh) for channel block
    ``b`` into vf [Wo * Og] (float32), in blocks of :func:`_block_npix` pixels
    (:func:`_xor_popcount_block`)."""
    rowgap = wp * wpg - krow
    woff = b * nk * BLOCK_CHANNELS
    while ox < wo:
        npix = _block_npix(ox, wo)
        _xor_popcount_block(npix, pf, ((n * hp + y0) * wp + ox * sw) * wpg, sw * wpg, krow, 1,
                            rowgap, wblk, woff, BLOCK_CHANNELS, nk, vf,
                            ox * og + b * BLOCK_CHANNELS, og, kbits)
        ox += npix


@_rows(**_KW)
def bconv(p, w, wblk, corr, ep, res1, res2, yout, acc_out, pout, cfg, nt):
    """Binary conv of packed ``p`` with packed weights ``w`` [G, taps * WPG, Og] + epilogue.

    ``wblk`` holds the same weights as [Og / BC, taps * WPG, BC], BC = BLOCK_CHANNELS
    (one group, dilation 1, Og a multiple of BC; else a dummy): the register blocks read
    their weights contiguously (strided by Og words, every word of a 512-channel layer
    fell on its own page).

    cfg: H, W (unpadded input), pt, pl (halo of ``p``), kh, kw, sh, sw, dh, dw, G, Cg,
    WPG, Og, Ho, Wo, use_corr (zero padding); then the epilogue fields (EP_*).
    ``acc_out`` receives the integer dot products when EP_OUT_ACC is set (trace mode).
    """
    h_in, w_in, pt, pl = cfg[0], cfg[1], cfg[2], cfg[3]
    kh, kw, sh, sw, dh, dw = cfg[4], cfg[5], cfg[6], cfg[7], cfg[8], cfg[9]
    ng, cg, wpg, og, ho, wo, use_corr = cfg[10], cfg[11], cfg[12], cfg[13], cfg[14], cfg[15], \
        cfg[16]
    out_acc = cfg[EP_OUT_ACC]
    kbits = kh * kw * cg
    contiguous = ng == 1 and dw == 1 and dh == 1
    hp, wp = p.shape[1], p.shape[2]
    pf = p.reshape(-1)
    w0 = w[0]
    pix = p.shape[0] * ho * wo
    nt = max(1, min(nt, pix))
    krow = kw * wpg
    nk = kh * krow
    blocked = (contiguous and og % BLOCK_CHANNELS == 0 and wblk.shape[0] * BLOCK_CHANNELS == og
               and wblk.shape[1] == kh * kw * wpg and wblk.shape[2] == BLOCK_CHANNELS)
    # short rows (7 or 3 pixels): the blocks run on across rows (8 pixels, not a row's
    # 4 + 3), over segments of ``seg`` pixels with channel blocks outer, so a block's
    # weights are read from L1 for the whole segment, not from L2 again for each row
    flat = blocked and wo < WIDE_PIXELS
    seg = max(WIDE_PIXELS, 16384 // max(og, 1))
    for ch in prange(nt):
        acc = np.zeros(og, np.int64)
        acc2 = np.zeros(og, np.int64)
        v = np.empty((wo, ng * og), np.float32)
        tmp = np.empty_like(v)
        vf = v.reshape(-1)
        # a thread's share is a run of output pixels, rows cut anywhere: a 3-row map
        # splits 1.5 / 1.5 on 2 threads, not 2 / 1
        lo, hi = ch * pix // nt, (ch + 1) * pix // nt
        if flat:
            _bconv_flat(pf, wblk, corr, ep, res1, res2, yout, acc_out, pout, cfg, lo, hi, seg,
                        hp, wp, krow, nk, kbits, tmp)
            continue
        for qq in range(lo // max(wo, 1), -(-hi // max(wo, 1))):
            n, oy = qq // ho, qq % ho
            xa, xb = max(0, lo - qq * wo), min(wo, hi - qq * wo)  # its pixels of the row
            y0 = oy * sh
            border_y = use_corr != 0 and (y0 - pt < 0 or y0 - pt + (kh - 1) * dh >= h_in)
            if blocked:
                # blocks of pixels x BLOCK_CHANNELS, sums in registers; channel blocks
                # outer, so a block's weights stay in L1 along the row
                for b in range(og // BLOCK_CHANNELS):
                    _block_row(pf, n, y0, hp, wp, wpg, sw, xa, xb, og, krow, nk, wblk, b, vf,
                               kbits)
            elif contiguous:
                # one group, dilation 1: a kernel row's words are kw * WPG consecutive words
                # of the input row. Two output pixels at a time, three words at a time:
                # each weight row loaded serves both, fewer acc loads / stores per word
                for ox in range(xa, xb - 1, 2):
                    for o in range(og):
                        acc[o] = 0
                        acc2[o] = 0
                    for ky in range(kh):
                        xo = ((n * hp + y0 + ky) * wp + ox * sw) * wpg
                        xq = xo + sw * wpg
                        wo0 = ky * krow
                        k = 0
                        while k + 3 <= krow:
                            _acc3x2(acc, acc2, pf[xo + k], pf[xo + k + 1], pf[xo + k + 2],
                                    pf[xq + k], pf[xq + k + 1], pf[xq + k + 2],
                                    w0[wo0 + k], w0[wo0 + k + 1], w0[wo0 + k + 2])
                            k += 3
                        while k < krow:
                            _acc1x2(acc, acc2, pf[xo + k], pf[xq + k], w0[wo0 + k])
                            k += 1
                    for o in range(og):
                        v[ox, o] = kbits - 2 * acc[o]
                        v[ox + 1, o] = kbits - 2 * acc2[o]
            paired = xb - (xb - xa) % 2
            for ox in range(xa, xb if use_corr != 0 or not blocked else xa):  # blocked: corr.
                x0 = ox * sw
                border = border_y or (use_corr != 0 and (x0 - pl < 0
                                                         or x0 - pl + (kw - 1) * dw >= w_in))
                vr = v[ox]
                for g in range(ng):
                    if blocked or (contiguous and ox < paired):
                        pass  # done in blocks or pairs above
                    elif contiguous:  # the last pixel of an odd row
                        for o in range(og):
                            acc[o] = 0
                        for ky in range(kh):
                            xo = ((n * hp + y0 + ky) * wp + x0) * wpg
                            wo0 = ky * krow
                            k = 0
                            while k + 3 <= krow:
                                _acc3(acc, pf[xo + k], pf[xo + k + 1], pf[xo + k + 2],
                                      w0[wo0 + k], w0[wo0 + k + 1], w0[wo0 + k + 2])
                                k += 3
                            while k < krow:
                                _acc1(acc, pf[xo + k], w0[wo0 + k])
                                k += 1
                        for o in range(og):
                            vr[o] = kbits - 2 * acc[o]
                    else:
                        for o in range(og):
                            acc[o] = 0
                        for ky in range(kh):
                            iy = y0 + ky * dh
                            for kx in range(kw):
                                ix = x0 + kx * dw
                                base = (ky * kw + kx) * wpg
                                for j in range(wpg):
                                    _acc1(acc, p[n, iy, ix, g * wpg + j], w[g, base + j])
                        for o in range(og):
                            vr[g * og + o] = kbits - 2 * acc[o]
                    if border:
                        for ky in range(kh):
                            iy = y0 + ky * dh - pt
                            for kx in range(kw):
                                ix = x0 + kx * dw - pl
                                if iy < 0 or iy >= h_in or ix < 0 or ix >= w_in:
                                    t = ky * kw + kx
                                    for o in range(og):
                                        vr[g * og + o] -= corr[g, t, o]
            if out_acc:
                for ox in range(xa, xb):
                    for o in range(ng * og):
                        acc_out[n, oy, ox, o] = np.int32(v[ox, o])
            _epilogue_row(v[xa:xb], tmp[xa:xb], n, oy, xa, ep, res1, res2, yout, pout, cfg)


@njit(**_KW)
def _bconv_flat(pf, wblk, corr, ep, res1, res2, yout, acc_out, pout, cfg, lo, hi, seg, hp, wp,
                krow, nk, kbits, tmp):
    """Output pixels lo .. hi - 1 of :func:`bconv`'s blocked case in blocks that run on
    across rows (never across images), a segment of ``seg`` pixels at a time; then the
    rows' zero-padding corrections and epilogues, part rows included."""
    h_in, w_in, pt, pl = cfg[0], cfg[1], cfg[2], cfg[3]
    kh, kw, sh, sw = cfg[4], cfg[5], cfg[6], cfg[7]
    wpg, og, ho, wo, use_corr = cfg[12], cfg[13], cfg[14], cfg[15], cfg[16]
    rowgap = wp * wpg - krow
    vc = np.empty((seg, og), np.float32)
    vcf = vc.reshape(-1)
    s0 = lo
    while s0 < hi:
        s1 = min(hi, s0 + seg)
        for b in range(og // BLOCK_CHANNELS):
            pp = s0
            while pp < s1:
                qq = pp // wo
                n, oy, ox = qq // ho, qq % ho, pp - qq * wo
                npix = _block_npix(0, min(s1, (n + 1) * ho * wo) - pp)
                _xor_popcount_block_wrapped(
                    npix, pf, ((n * hp + oy * sh) * wp + ox * sw) * wpg, sw * wpg, krow, 1,
                    rowgap, wblk, b * nk * BLOCK_CHANNELS, BLOCK_CHANNELS, nk, vcf,
                    (pp - s0) * og + b * BLOCK_CHANNELS, og, kbits, ox, wo, sh * wp * wpg)
                pp += npix
        for qq in range(s0 // wo, -(-s1 // wo)):
            n, oy = qq // ho, qq % ho
            xa, xb = max(0, s0 - qq * wo), min(wo, s1 - qq * wo)
            at = qq * wo + xa - s0
            v = vc[at:at + xb - xa]
            y0 = oy * sh
            border_y = y0 - pt < 0 or y0 - pt + kh - 1 >= h_in
            for ox in range(xa, xb if use_corr != 0 else xa):
                x0 = ox * sw
                if border_y or x0 - pl < 0 or x0 - pl + kw - 1 >= w_in:
                    _win_border(v[ox - xa], corr, y0, x0, pt, pl, kh, kw, h_in, w_in, 1, og)
            if cfg[EP_OUT_ACC]:
                for ox in range(xa, xb):
                    for o in range(og):
                        acc_out[n, oy, ox, o] = np.int32(v[ox - xa, o])
            _epilogue_row(v, tmp[:xb - xa], n, oy, xa, ep, res1, res2, yout, pout, cfg)
        s0 = s1


@njit(**_KW_SMALL)
def _set_pm1(vr, xw):
    """vr[b] = +1 or -1 for bit b of ``xw`` clear or set (int32 arithmetic: twice the speed
    of the uint64 -> float conversion of :func:`_add_pm1`)."""
    for b in range(vr.shape[0]):
        vr[b] = np.float32(1 - 2 * np.int32((xw >> np.uint64(b)) & _ONE))


@njit(**_KW_SMALL)
def _add_pm1(vr, xw):
    """vr[b] += +1 or -1 for bit b of ``xw`` clear or set (a zero-based slice, vectorised)."""
    for b in range(vr.shape[0]):
        vr[b] += 1 - 2 * np.float32((xw >> np.uint64(b)) & _ONE)


def _make_pm1_word(add: bool):
    """v[off:off + 64] = (or += with ``add``) +1 / -1 for the clear / set bits of a word,
    as one <64 x i1> select: a binary depthwise conv's +-1 products, 64 channels at a
    time (the bit loops above run per lane)."""
    def pm1_word(typingctx, v, off, word):
        def codegen(context, builder, signature, args):
            arr = context.make_array(signature.args[0])(context, builder, args[0])
            vt = ir.VectorType(ir.FloatType(), 64)
            ptr = builder.bitcast(builder.gep(arr.data, [args[1]]), vt.as_pointer())
            bits = builder.bitcast(args[2], ir.VectorType(ir.IntType(1), 64))
            pm = builder.select(bits, ir.Constant(vt, [-1.0] * 64), ir.Constant(vt, [1.0] * 64))
            if add:
                pm = builder.fadd(builder.load(ptr, align=4), pm)
            builder.store(pm, ptr, align=4)
            return context.get_dummy_value()
        return types.void(v, types.int64, types.uint64), codegen
    pm1_word.__name__ = pm1_word.__qualname__ = "add_pm1_word" if add else "set_pm1_word"
    return intrinsic(pm1_word)


_set_pm1_word, _add_pm1_word = _make_pm1_word(False), _make_pm1_word(True)


@njit(**_KW_SMALL)
def _or_shifted(dst, src, shift):
    """dst[k] |= src[k] << shift over zero-based 1-D slices (vectorised)."""
    for k in range(dst.shape[0]):
        dst[k] |= src[k] << shift


@_rows(**_KW)
def pack_windows(p, out, t, cg, nt):
    """out[n, y, x, g] = the words of pixels x .. x + t - 1 side by side (``cg`` bits each).

    ``p`` has one word per group (Cg <= 32); pixels past the right edge read as zero
    bits (+1, like the halo). Row by row, as t shifted ORs of the flattened row.
    """
    n_, h_, w_, ng = p.shape
    rows = n_ * h_
    nt = max(1, min(nt, rows))
    for ch in prange(nt):
        for qq in range(ch * rows // nt, (ch + 1) * rows // nt):
            n, yy = qq // h_, qq % h_
            src = p[n, yy].reshape(-1)
            dst = out[n, yy].reshape(-1)
            for k in range(dst.shape[0]):
                dst[k] = src[k]
            for i in range(1, t):
                m = (w_ - i) * ng
                if m > 0:
                    _or_shifted(dst[:m], src[i * ng:i * ng + m], np.uint64(i * cg))


@njit(**_KW_SMALL)
def _win_border(vr, corr, y0, x0, pt, pl, kh, kw, h_in, w_in, ng, og):
    """Zero padding: take out the taps of output pixel (y0, x0) that fall in the halo."""
    for ky in range(kh):
        iy = y0 + ky - pt
        for kx in range(kw):
            ix = x0 + kx - pl
            if iy < 0 or iy >= h_in or ix < 0 or ix >= w_in:
                tt = ky * kw + kx
                for g in range(ng):
                    for o in range(og):
                        vr[g * og + o] -= corr[g, tt, o]


@_rows(**_KW)
def bconv_win(p, w, wblk, masks, corr, ep, res1, res2, yout, acc_out, pout, cfg, nt):
    """Binary conv on window words (``pack_windows``): T taps of a kernel row per word.

    w [kh * chunks, G * Og] (every group's outputs side by side, so the inner loop
    runs over all output channels at once; each lane xors its own group's word);
    masks [chunks] keep the valid bits of each chunk. cfg as :func:`bconv` plus
    cfg[17] = T (dilation must be 1).

    With ``wblk`` (the weights as [G, Og / 16, kh * chunks, 16] with their masked-off
    bits 0; else a dummy) each group runs the register-blocked block of :func:`bconv`,
    the input words masked in registers as they are loaded.
    """
    h_in, w_in, pt, pl = cfg[0], cfg[1], cfg[2], cfg[3]
    kh, kw, sh, sw = cfg[4], cfg[5], cfg[6], cfg[7]
    ng, cg, og, ho, wo, use_corr, t = cfg[10], cfg[11], cfg[13], cfg[14], cfg[15], cfg[16], \
        cfg[17]
    out_acc = cfg[EP_OUT_ACC]
    nch = masks.shape[0]
    nout = ng * og
    kbits = kh * kw * cg
    rows = p.shape[0] * ho
    nt = max(1, min(nt, rows))
    nbc = og // BLOCK_CHANNELS
    blocked = (og % BLOCK_CHANNELS == 0 and wblk.shape[0] == ng and wblk.shape[1] == nbc
               and wblk.shape[2] == kh * nch and wblk.shape[3] == BLOCK_CHANNELS)
    hp, wp = p.shape[1], p.shape[2]
    pf = p.reshape(-1)
    nk = kh * nch
    kstep = t * ng
    rowgap = wp * ng - nch * kstep
    for ch in prange(nt):
        acc = np.zeros(nout, np.int64)
        xsel = np.zeros(nout, np.uint64)
        v = np.empty((wo, nout), np.float32)
        tmp = np.empty_like(v)
        vf = v.reshape(-1)
        for qq in range(ch * rows // nt, (ch + 1) * rows // nt):
            n, oy = qq // ho, qq % ho
            y0 = oy * sh
            border_y = use_corr != 0 and (y0 - pt < 0 or y0 - pt + kh - 1 >= h_in)
            if blocked:
                ox = 0
                while ox < wo:
                    npix = _block_npix(ox, wo)
                    for g in range(ng):
                        for b in range(nbc):
                            _xor_popcount_block_masked(
                                npix, pf, masks, ((n * hp + y0) * wp + ox * sw) * ng + g,
                                sw * ng, nch, kstep,
                                rowgap, wblk[g, b], 0, BLOCK_CHANNELS, nk, vf,
                                ox * nout + g * og + b * BLOCK_CHANNELS, nout, kbits)
                    ox += npix
            for ox in range(wo):
                x0 = ox * sw
                border = border_y or (use_corr != 0 and (x0 - pl < 0 or x0 - pl + kw - 1 >= w_in))
                if blocked:
                    if border:
                        _win_border(v[ox], corr, y0, x0, pt, pl, kh, kw, h_in, w_in, ng, og)
                    continue
                for o in range(nout):
                    acc[o] = 0
                for ky in range(kh):
                    for j in range(nch):
                        px = p[n, y0 + ky, x0 + j * t]
                        mk = masks[j]
                        for g in range(ng):
                            xw = px[g] & mk
                            for o in range(og):
                                xsel[g * og + o] = xw
                        _xor_pop_acc(acc, xsel, w[ky * nch + j])
                vr = v[ox]
                for o in range(nout):
                    vr[o] = kbits - 2 * acc[o]
                if border:
                    _win_border(vr, corr, y0, x0, pt, pl, kh, kw, h_in, w_in, ng, og)
            if out_acc:
                for ox in range(wo):
                    for o in range(nout):
                        acc_out[n, oy, ox, o] = np.int32(v[ox, o])
            _epilogue_row(v, tmp, n, oy, 0, ep, res1, res2, yout, pout, cfg)


@njit(inline="always")
def _xor_pop_acc(acc, xs, wr):
    for o in range(acc.shape[0]):
        acc[o] += popcount64(xs[o] ^ wr[o])


@_rows(**_KW)
def bdwconv(p, wb, wpk, ep, res1, res2, yout, acc_out, pout, cfg, nt):
    """Binary depthwise conv (channel multiplier M) on packed ``p`` (one group) + epilogue.

    ``wb`` [taps, O] holds weight sign bits (1 = -1), ``wpk`` [taps, words] the same
    packed (M = 1). Output channel ``o`` reads input channel ``o // M``. With M = 1
    each tap is one xor per 64 channels, then the +-1 products are summed per
    channel; otherwise bit by bit. cfg: H, W, pt, pl, kh, kw, sh, sw, dh, dw, M, O,
    Ho, Wo, pad0.
    """
    h_in, w_in, pt, pl = cfg[0], cfg[1], cfg[2], cfg[3]
    kh, kw, sh, sw, dh, dw = cfg[4], cfg[5], cfg[6], cfg[7], cfg[8], cfg[9]
    mult, nout, ho, wo, pad0 = cfg[10], cfg[11], cfg[12], cfg[13], cfg[14]
    out_acc = cfg[EP_OUT_ACC]
    nw = (nout + 63) // 64
    rows = p.shape[0] * ho
    nt = max(1, min(nt, rows))
    for ch in prange(nt):
        v = np.empty((wo, nout), np.float32)
        vf = v.reshape(-1)
        tmp = np.empty_like(v)
        for qq in range(ch * rows // nt, (ch + 1) * rows // nt):
            n, oy = qq // ho, qq % ho
            for ox in range(wo):
                vr = v[ox]
                if kh == 1 and kw == 1 and mult == 1:  # one tap: set, no zeroing first
                    px = p[n, oy * sh, ox * sw]
                    for j in range(nw):
                        c0 = j * 64
                        if c0 + 64 <= nout:
                            _set_pm1_word(vf, ox * nout + c0, px[j] ^ wpk[0, j])
                        else:
                            _set_pm1(vr[c0:nout], px[j] ^ wpk[0, j])
                    continue
                for o in range(nout):
                    vr[o] = 0
                for ky in range(kh):
                    iy = oy * sh + ky * dh
                    for kx in range(kw):
                        ix = ox * sw + kx * dw
                        if pad0 and (iy - pt < 0 or iy - pt >= h_in or ix - pl < 0
                                     or ix - pl >= w_in):
                            continue
                        t = ky * kw + kx
                        px = p[n, iy, ix]
                        if mult == 1:
                            for j in range(nw):
                                c0 = j * 64
                                if c0 + 64 <= nout:
                                    _add_pm1_word(vf, ox * nout + c0, px[j] ^ wpk[t, j])
                                else:
                                    _add_pm1(vr[c0:nout], px[j] ^ wpk[t, j])
                        else:
                            for o in range(nout):
                                c = o // mult
                                bit = (px[c >> 6] >> np.uint64(c & 63)) & _ONE
                                vr[o] += 1 - 2 * np.int64(bit ^ np.uint64(wb[t, o]))
            if out_acc:
                for ox in range(wo):
                    for o in range(nout):
                        acc_out[n, oy, ox, o] = np.int32(v[ox, o])
            _epilogue_row(v, tmp, n, oy, 0, ep, res1, res2, yout, pout, cfg)


@_rows(**_KW)
def bmaxpool(p, q, cfg, nt):
    """Max-pool of +-1 values on packed words: the max is -1 only if all are -1 (AND).

    Window positions outside the input are skipped (max-pool padding is -inf).
    cfg: H, W, ppt, ppl (halo of p), kh, kw, sh, sw, pt, pl (pool padding), Ho, Wo,
    qpt, qpl (halo of q).
    """
    h_in, w_in, ppt, ppl = cfg[0], cfg[1], cfg[2], cfg[3]
    kh, kw, sh, sw, pt, pl, ho, wo, qpt, qpl = (cfg[4], cfg[5], cfg[6], cfg[7], cfg[8], cfg[9],
                                                cfg[10], cfg[11], cfg[12], cfg[13])
    nw = p.shape[3]
    full = ~np.uint64(0)
    rows = p.shape[0] * ho
    nt = max(1, min(nt, rows))
    for ch in prange(nt):
        for qq in range(ch * rows // nt, (ch + 1) * rows // nt):
            n, oy = qq // ho, qq % ho
            for ox in range(wo):
                for j in range(nw):
                    acc = full
                    for ky in range(kh):
                        iy = oy * sh + ky - pt
                        if iy < 0 or iy >= h_in:
                            continue
                        for kx in range(kw):
                            ix = ox * sw + kx - pl
                            if ix < 0 or ix >= w_in:
                                continue
                            acc &= p[n, iy + ppt, ix + ppl, j]
                    q[n, oy + qpt, ox + qpl, j] = acc


# ---------------------------------------------------------------- float convs
@_rows(**_KW)
def epilogue_nhwc(raw, ep, res1, res2, yout, pout, cfg, nt):
    """The conv epilogue over a raw (N, Ho, Wo, O) float conv output (BLAS path)."""
    ho = raw.shape[1]
    rows = raw.shape[0] * ho
    nt = max(1, min(nt, rows))
    for ch in prange(nt):
        tmp = np.empty(raw.shape[2:], np.float32)
        for qq in range(ch * rows // nt, (ch + 1) * rows // nt):
            n, oy = qq // ho, qq % ho
            _epilogue_row(raw[n, oy], tmp, n, oy, 0, ep, res1, res2, yout, pout, cfg)


@njit(inline="always")
def _fma_pixels(xf, base, pstep, krow, rowgap, nk, wf, o0, nvb, nout, npx, v):
    """Output channels o0 .. o0 + nvb * FMA_LANES of ``npx`` pixels into v[p * nout + o],
    in register blocks (:func:`_fma_block`): pixel p's window starts at xf[base + p *
    pstep] and walks ``nk`` taps in kernel rows of ``krow`` floats, ``rowgap`` apart."""
    if nvb == 4:
        bp = FMA4_PIXELS if nk >= 64 else 4  # few taps: the 24 sums' stores cost more
        p = 0
        while p < npx:
            q = min(bp, npx - p)
            _fma4_block(q, xf, base + p * pstep, pstep, krow, 1, rowgap, wf, o0, nout, nk, v,
                        p * nout + o0, nout)
            p += q
        return
    bp = FMA_BLOCK_PIXELS[nvb]
    p = 0
    while p + bp <= npx:
        _fma_block(nvb, True, False, xf, base + p * pstep, pstep, krow, 1, rowgap, wf, o0, nout,
                   nk, v, p * nout + o0, nout)
        p += bp
    while p < npx:
        _fma_block(nvb, False, False, xf, base + p * pstep, pstep, krow, 1, rowgap, wf, o0,
                   nout, nk, v, p * nout + o0, nout)
        p += 1


@njit(inline="always")
def _planar_block(nv, full, x, xbase, pstep, krow, rowgap, prows, pgap, w, woff, nout, nk,
                  out, ooff, ostride):
    """:func:`_fma_block` (one float per pixel) on an NCHW input: a pixel's window is
    ``prows`` kernel rows of ``krow`` taps in each channel plane, rows ``rowgap`` apart,
    planes ``pgap`` (see :func:`_emit_block`); weights w[woff + k * nout + o]."""
    a = (x, xbase, pstep, krow, 1, rowgap, w, woff, nout, nk, out, ooff, ostride, prows, pgap)
    if nv == 1:
        if full:
            _p8x1(*a)
        else:
            _p1x1(*a)
    elif nv == 2:
        if full:
            _p4x2(*a)
        else:
            _p1x2(*a)
    elif nv == 3:
        if full:
            _p4x3(*a)
        else:
            _p1x3(*a)
    elif full:
        _p4x4(*a)
    else:
        _p1x4(*a)


@njit(inline="always")
def _planar_run(nv, x, xbase, pstep, npx, krow, rowgap, prows, pgap, w, woff, nout, nk, out,
                ooff, ostride):
    """:func:`_planar_block` over ``npx`` pixels ``pstep`` apart (outputs ``ostride``
    apart) in full blocks, the last one overlapping the one before where they do not
    divide: a one-pixel block is a single chain of dependent fmas, 4-5 times a full
    block's time a pixel (QuickNet's 55 inner pixels a row left 7 of them)."""
    bp = FMA_BLOCK_PIXELS[nv]
    if npx < bp:
        for p in range(npx):
            _planar_block(nv, False, x, xbase + p * pstep, pstep, krow, rowgap, prows, pgap, w,
                          woff, nout, nk, out, ooff + p * ostride, ostride)
        return
    p = 0
    while p < npx:
        p = min(p, npx - bp)  # the same sums again where blocks overlap
        _planar_block(nv, True, x, xbase + p * pstep, pstep, krow, rowgap, prows, pgap, w, woff,
                      nout, nk, out, ooff + p * ostride, ostride)
        p += bp


@intrinsic
def _copy_floats(typingctx, dst, doff, src, soff, n):
    """dst[doff:doff + n] = src[soff:soff + n] for 1-D float arrays, as one memcpy (numba's
    loop of this ran at 2.5 cycles a float: its indices may be negative)."""
    sig = types.void(dst, _I64, src, _I64, _I64)

    def codegen(context, builder, signature, args):
        data = _array_data(context, builder, signature)
        d = builder.gep(data(0, args[0]), [args[1]])
        s = builder.gep(data(2, args[2]), [args[3]])
        cgutils.raw_memcpy(builder, d, s, args[4], 4)
        return context.get_dummy_value()

    return sig, codegen


@_rows(**_KW_FMA)
def dense(x, w, b, y, nt):
    """y = x @ w + b for C-contiguous x [M, K], w [K, O], y [M, O]: the register block,
    threads splitting the output channels in stripes of 64, so a one-row product (a
    face's embedding head) splits too and each thread reads only its share of the
    weights; outputs past the last whole vector summed one by one, in the same order.
    ``b`` empty: no bias."""
    m, k = x.shape
    nout = w.shape[1]
    xf, wf, yf = x.reshape(-1), w.reshape(-1), y.reshape(-1)
    nstripe = -(-nout // (4 * FMA_LANES))
    nt = max(1, min(nt, nstripe))
    for ch in prange(nt):
        for st in range(ch * nstripe // nt, (ch + 1) * nstripe // nt):
            o0 = st * 4 * FMA_LANES
            nvb = min(4, (nout - o0) // FMA_LANES)
            if nvb:
                _fma_pixels(xf, 0, k, k, 0, k, wf, o0, nvb, nout, m, yf)
            for o in range(o0 + nvb * FMA_LANES, min(o0 + 4 * FMA_LANES, nout)):
                for r in range(m):
                    acc = np.float32(0)
                    for j in range(k):
                        acc += x[r, j] * w[j, o]
                    y[r, o] = acc
            if b.shape[0]:
                for r in range(m):
                    for o in range(o0, min(o0 + 4 * FMA_LANES, nout)):
                        y[r, o] += b[o]


@_rows(**_KW_FMA)
def conv1x1(x, w, ep, res1, res2, yout, pout, cfg, nt):
    """Pointwise float conv of C-contiguous NHWC ``x``, w [Cin, O] (O a multiple of
    FMA_LANES), + epilogue: the register block (:func:`_fma_block`) in place of
    BLAS, so the conv splits across threads like the others and its sums go to the
    epilogue from cache.

    Image rows go in groups of at least 16 pixels (a 3x3 map's rows are 3 long);
    in a group, stripes of up to 64 output channels go outer and blocks of pixels
    inner, so a stripe of weights is read once from memory for the whole group.
    """
    n_, ho, wo, cin = x.shape
    nout = w.shape[1]
    wo1 = max(wo, 1)
    pix = n_ * ho * wo
    gp = wo * max(1, min(-(-16 // wo1), 16384 // max(1, wo * nout)))  # pixels per group
    nt = max(1, min(nt, pix))
    xf, wf = x.reshape(-1), w.reshape(-1)
    for ch in prange(nt):
        v = np.empty(gp * nout, np.float32)
        tmp = np.empty((wo, nout), np.float32)
        lo, hi = ch * pix // nt, (ch + 1) * pix // nt  # a run of pixels, as in bconv
        for g0 in range(lo, hi, gp):
            g1 = min(g0 + gp, hi)
            o0 = 0
            while o0 < nout:
                nvb = min(4, (nout - o0) // FMA_LANES)
                _fma_pixels(xf, g0 * cin, cin, cin, 0, cin, wf, o0, nvb, nout, g1 - g0, v)
                o0 += nvb * FMA_LANES
            for q in range(g0 // wo1, -(-g1 // wo1)):  # rows are n * Ho + oy
                xa, xb = max(0, g0 - q * wo), min(wo, g1 - q * wo)
                at = (q * wo + xa - g0) * nout
                rv = v[at:at + (xb - xa) * nout].reshape(xb - xa, nout)
                _epilogue_row(rv, tmp[:xb - xa], q // ho, q % ho, xa, ep, res1, res2, yout,
                              pout, cfg)


@_rows(**_KW)
def dwconv(x, w, padval, ep, res1, res2, yout, pout, cfg, nt):
    """Float depthwise conv (channel multiplier M) of NHWC ``x``, w [kh, kw, O], + epilogue.

    cfg: pt, pl, kh, kw, sh, sw, dh, dw, M, Ho, Wo; positions outside the input read
    ``padval``.
    """
    pt, pl, kh, kw, sh, sw, dh, dw = cfg[0], cfg[1], cfg[2], cfg[3], cfg[4], cfg[5], cfg[6], \
        cfg[7]
    mult, ho, wo = cfg[8], cfg[9], cfg[10]
    n_, h_in, w_in, c_in = x.shape
    nout = w.shape[2]
    rows = n_ * ho
    nt = max(1, min(nt, rows))
    for ch in prange(nt):
        v = np.empty((wo, nout), np.float32)
        tmp = np.empty_like(v)
        for qq in range(ch * rows // nt, (ch + 1) * rows // nt):
            n, oy = qq // ho, qq % ho
            for ox in range(wo):
                vr = v[ox]
                for o in range(nout):
                    vr[o] = 0
                for ky in range(kh):
                    iy = oy * sh + ky * dh - pt
                    for kx in range(kw):
                        ix = ox * sw + kx * dw - pl
                        wr = w[ky, kx]
                        if 0 <= iy < h_in and 0 <= ix < w_in:
                            xr = x[n, iy, ix]
                            if mult == 1:
                                for o in range(nout):
                                    vr[o] += xr[o] * wr[o]
                            else:
                                for o in range(nout):
                                    vr[o] += xr[o // mult] * wr[o]
                        elif padval != 0:
                            for o in range(nout):
                                vr[o] += padval * wr[o]
            _epilogue_row(v, tmp, n, oy, 0, ep, res1, res2, yout, pout, cfg)


@_rows(**_KW_FMA)
def dwconv_padded(xp, w, ep, res1, res2, yout, pout, cfg, nt):
    """Float depthwise conv (multiplier 1, C a multiple of FMA_LANES) of a padded NHWC
    copy ``xp``, w [kh, kw, C], + epilogue: the register block with a vector of
    channels per lane group (:func:`_fma_block` per lane), stripes of up to 64 channels outer
    and blocks of pixels inner. The loop of :func:`dwconv` ran a 16-channel conv in
    LLVM's scalar remainder, at half ONNX Runtime's speed. cfg as :func:`dwconv`."""
    kh, kw, sh, sw = cfg[2], cfg[3], cfg[4], cfg[5]
    ho, wo = cfg[9], cfg[10]
    n_, hp, wp, c = xp.shape
    rows = n_ * ho
    nt = max(1, min(nt, rows))
    xf, wf = xp.reshape(-1), w.reshape(-1)
    for ch in prange(nt):
        v = np.empty((wo, c), np.float32)
        vf = v.reshape(-1)
        tmp = np.empty_like(v)
        for qq in range(ch * rows // nt, (ch + 1) * rows // nt):
            n, oy = qq // ho, qq % ho
            row0 = (n * hp + oy * sh) * wp * c
            c0 = 0
            while c0 < c:
                nv = min(4, (c - c0) // FMA_LANES)
                bp = FMA_BLOCK_PIXELS[nv]
                ox = 0
                while ox < wo:
                    full = ox + bp <= wo
                    _fma_block(nv, full, True, xf, row0 + ox * sw * c + c0, sw * c, kw, c,
                              wp * c - kw * c, wf, c0, c, kh * kw, vf, ox * c + c0, c)
                    ox += bp if full else 1
                c0 += nv * FMA_LANES
            _epilogue_row(v, tmp, n, oy, 0, ep, res1, res2, yout, pout, cfg)


@_rows(**_KW_FMA)
def conv1x1_small(x, w, ep, res1, res2, yout, pout, cfg, nt):
    """Pointwise float conv with few input channels (the RGB input), w [Cin, O], + epilogue.

    BLAS does badly with K = 3; here each output row is a few rank-1 updates in cache,
    summed in input-channel order with fma, as oneDNN and BLAS do.
    """
    n_, ho, wo, cin = x.shape
    nout = w.shape[1]
    rows = n_ * ho
    nt = max(1, min(nt, rows))
    for ch in prange(nt):
        v = np.empty((wo, nout), np.float32)
        tmp = np.empty_like(v)
        for qq in range(ch * rows // nt, (ch + 1) * rows // nt):
            n, oy = qq // ho, qq % ho
            xrow = x[n, oy]
            for ox in range(wo):
                vr = v[ox]
                xr = xrow[ox]
                if cin == 3:  # one pass, one store per output
                    a0, a1, a2 = xr[0], xr[1], xr[2]
                    w0, w1, w2 = w[0], w[1], w[2]
                    for o in range(nout):
                        vr[o] = a0 * w0[o] + a1 * w1[o] + a2 * w2[o]
                    continue
                w0 = w[0]
                x0 = xr[0]
                for o in range(nout):
                    vr[o] = x0 * w0[o]
                for c in range(1, cin):
                    xc = xr[c]
                    wc = w[c]
                    for o in range(nout):
                        vr[o] += xc * wc[o]
            _epilogue_row(v, tmp, n, oy, 0, ep, res1, res2, yout, pout, cfg)


@njit(inline="always")
def _fma3x4(v0, v1, v2, v3, a, b, c, d, k, w0, w1, w2, lanes):
    """Four pixels, three taps: each weight row is loaded once for the four pixels and
    each output row updated once per three taps (``lanes``: the outputs, 0 = all of
    ``v0``; a constant where the caller's is)."""
    a0, a1, a2 = a[k], a[k + 1], a[k + 2]
    b0, b1, b2 = b[k], b[k + 1], b[k + 2]
    c0, c1, c2 = c[k], c[k + 1], c[k + 2]
    d0, d1, d2 = d[k], d[k + 1], d[k + 2]
    for o in range(lanes if lanes else v0.shape[0]):
        u0, u1, u2 = w0[o], w1[o], w2[o]
        v0[o] += a0 * u0 + a1 * u1 + a2 * u2
        v1[o] += b0 * u0 + b1 * u1 + b2 * u2
        v2[o] += c0 * u0 + c1 * u1 + c2 * u2
        v3[o] += d0 * u0 + d1 * u1 + d2 * u2


@njit(inline="always")
def _fma1x4(v0, v1, v2, v3, a, b, c, d, k, w0, lanes):
    a0, b0, c0, d0 = a[k], b[k], c[k], d[k]
    for o in range(lanes if lanes else v0.shape[0]):
        u0 = w0[o]
        v0[o] += a0 * u0
        v1[o] += b0 * u0
        v2[o] += c0 * u0
        v3[o] += d0 * u0


def _make_conv_small(lanes: int, krow_c: int):
    """:func:`conv_small` with its output-channel loop ``lanes`` long and its kernel rows
    ``krow_c`` floats long (0: any).

    A loop of unknown length that turns out short (an RGB stem's 16 or 32 outputs) runs
    LLVM's scalar remainder, not its vector body: the vector loop is built for 4 x 8
    lanes. A closure constant makes the length known when compiling, so the loop is
    all vector and the runtime alias checks go away; a known kernel row (9 floats for
    3x3 on RGB) unrolls the taps. numba caches one kernel per pair of constants: its
    cache key pickles the closure's cells, so they hold only these integers (a jitted
    helper in a cell pickles with a new id in every process, and the kernel was
    compiled again in each, 2-3 s a time)."""

    # outputs a multiple of FMA_LANES (<= 4 vectors): the register block
    nv = lanes // FMA_LANES if lanes and lanes % FMA_LANES == 0 and lanes <= 4 * FMA_LANES \
        else 0

    def conv_small(xp, w, ep, res1, res2, yout, pout, cfg, nt):
        """Direct float conv for few input channels (an RGB stem), + epilogue.

        ``xp`` is the input already padded (NHWC), ``w`` [kh * kw * Cin, O]. A kernel
        row of an output pixel is ``kw * Cin`` consecutive floats of ``xp``; four
        output pixels go together, output channels innermost and vectorised. im2col +
        GEMM ran at 4-5 G MAC/s here: K = 27 patches are too short for BLAS.
        cfg[12:19]: kh, kw, sh, sw, Ho, Wo, Cin (a float conv's own fields sit below);
        then the epilogue fields (EP_*).
        """
        kh, kw, sh, sw, ho, wo, cin = cfg[12], cfg[13], cfg[14], cfg[15], cfg[16], cfg[17], \
            cfg[18]
        n_ = xp.shape[0]
        nout = w.shape[1]
        krow = krow_c if krow_c else kw * cin
        rows = n_ * ho
        nt = max(1, min(nt, rows))
        for ch in prange(nt):
            v = np.empty((wo + 3, nout), np.float32)  # 3 spare rows: the last block of 4
            tmp = np.empty((wo, nout), np.float32)
            if nv:  # the register block (_fma_block)
                xf, wf, vf = xp.reshape(-1), w.reshape(-1), v.reshape(-1)
                hp, wp = xp.shape[1], xp.shape[2]
                for qq in range(ch * rows // nt, (ch + 1) * rows // nt):
                    n, oy = qq // ho, qq % ho
                    _fma_pixels(xf, (n * hp + oy * sh) * wp * cin, sw * cin, krow,
                                wp * cin - krow, kh * krow, wf, 0, nv, nout, wo, vf)
                    _epilogue_row(v[:wo], tmp, n, oy, 0, ep, res1, res2, yout, pout, cfg)
                continue
            for qq in range(ch * rows // nt, (ch + 1) * rows // nt):
                n, oy = qq // ho, qq % ho
                v[:] = 0
                for ox in range(0, wo, 4):
                    # past the row's end: the last pixel again, into v's spare rows
                    o1, o2, o3 = min(ox + 1, wo - 1), min(ox + 2, wo - 1), min(ox + 3, wo - 1)
                    for ky in range(kh):
                        r = xp[n, oy * sh + ky].reshape(-1)
                        a = r[ox * sw * cin:ox * sw * cin + krow]
                        b = r[o1 * sw * cin:o1 * sw * cin + krow]
                        c = r[o2 * sw * cin:o2 * sw * cin + krow]
                        d = r[o3 * sw * cin:o3 * sw * cin + krow]
                        wb = ky * krow
                        k = 0
                        while k + 3 <= krow:
                            _fma3x4(v[ox], v[ox + 1], v[ox + 2], v[ox + 3], a, b, c, d, k,
                                    w[wb + k], w[wb + k + 1], w[wb + k + 2], lanes)
                            k += 3
                        while k < krow:
                            _fma1x4(v[ox], v[ox + 1], v[ox + 2], v[ox + 3], a, b, c, d, k,
                                    w[wb + k], lanes)
                            k += 1
                _epilogue_row(v[:wo], tmp, n, oy, 0, ep, res1, res2, yout, pout, cfg)

    conv_small.__qualname__ = f"conv_small_{lanes}_{krow_c}"
    serial, parallel = _twins(conv_small, **_KW_FMA)
    return SimpleNamespace(serial=serial, parallel=parallel)


@njit(inline="always")
def _border_column(j, ox0, ox1, pl, sw, kw, w_):
    """Border column ``j`` of :func:`conv_small_planar` (the ``ox0`` left of the inside
    outputs ox0 .. ox1 - 1, then those right of it): its output column, and the first
    and count of its window's taps along x that lie inside the image."""
    ox = j if j < ox0 else ox1 + j - ox0
    lo = max(0, pl - ox * sw)
    return ox, lo, max(0, min(kw, w_ + pl - ox * sw) - lo)


def _make_conv_small_planar(nout: int, cin: int, kh: int, kw: int, sw: int):
    """:func:`conv_small`'s twin for an NCHW input, for one stem's shape: ``nout`` a
    multiple of FMA_LANES up to 4 vectors, and Cin, kernel and stride along x known when
    compiling. With these as constants LLVM unrolls the 27 taps of a 3x3 RGB window
    into fmas at fixed offsets; with them read from cfg, QuickNet's stem took 39 us
    against the padded copy's 37 (34 now). Cached like :func:`conv_small` (the closure
    holds integers only)."""
    nv = nout // FMA_LANES

    def conv_small_planar(x, w, ep, res1, res2, yout, pout, cfg, nt):
        """:func:`conv_small` reading an NCHW input (C-contiguous) as it is, zero padding
        (that padded channels-last copy took a sixth of QuickNet's stem). ``w``
        [Cin * kh * kw, O], taps in that order: a window is Cin planes of kh rows of kw
        taps, and the register block walks it in the image itself, pixels ``sw`` apart.
        Output rows go in bands of a block's pixels. A row whose windows cross the top
        or bottom reads a zero-padded patch of its input rows instead. An output column
        whose windows cross the left or right border is summed down the band (pixels
        ``sh`` rows apart) over the taps inside the image only: those outside add zero.
        cfg[0:2]: top, left padding; cfg[14], cfg[16:18]: sh, Ho, Wo."""
        sh, ho, wo = cfg[14], cfg[16], cfg[17]
        pt, pl = cfg[0], cfg[1]
        n_, _, h_, w_ = x.shape
        nk, hw = cin * kh * kw, h_ * w_
        wp = max((wo - 1) * sw + kw, pl + w_)
        ox0 = min(wo, (pl + sw - 1) // sw)  # outputs ox0 .. ox1 - 1: windows inside
        ox1 = max(ox0, min(wo, (w_ - kw + pl) // sw + 1))
        nbc = wo - (ox1 - ox0)  # border columns
        bp = FMA_BLOCK_PIXELS[nv]
        rows = n_ * ho
        nt = max(1, min(nt, rows))
        for ch in prange(nt):
            v = np.empty((bp, wo, nout), np.float32)  # a band of output rows
            tmp = np.empty((wo, nout), np.float32)
            rowp = np.zeros(cin * kh * wp, np.float32)  # its border is never written
            # a border column's kernel: its taps inside the image, in order
            wb = np.zeros((max(1, nbc), nk * nout), np.float32)
            for j in range(nbc):
                _, lo, kr = _border_column(j, ox0, ox1, pl, sw, kw, w_)
                k = 0
                for t in range(cin * kh):
                    for kx in range(lo, lo + kr):
                        wb[j, k * nout:(k + 1) * nout] = w[t * kw + kx]
                        k += 1
            xf, wf, vf = x.reshape(-1), w.reshape(-1), v.reshape(-1)
            q, qend = ch * rows // nt, (ch + 1) * rows // nt
            while q < qend:
                n, oy0 = q // ho, q % ho
                nb = min(bp, qend - q, ho - oy0)
                ra, rb = nb, 0  # the band's rows whose windows lie inside vertically
                for r in range(nb):
                    iy0 = (oy0 + r) * sh - pt
                    ro = r * wo * nout
                    if iy0 >= 0 and iy0 + kh <= h_:
                        ra, rb = min(ra, r), r + 1
                        _planar_run(nv, xf, n * cin * hw + iy0 * w_ + ox0 * sw - pl, sw,
                                    ox1 - ox0, kw, w_ - kw, kh, hw - (kh - 1) * w_ - kw, wf, 0,
                                    nout, nk, vf, ro + ox0 * nout, nout)
                        continue
                    for t in range(cin * kh):  # the row's input rows, zero-padded
                        iy = iy0 + t % kh
                        r0 = t * wp + pl
                        if 0 <= iy < h_:
                            _copy_floats(rowp, r0, xf, ((n * cin + t // kh) * h_ + iy) * w_, w_)
                        else:
                            rowp[r0:r0 + w_] = 0
                    _planar_run(nv, rowp, 0, sw, wo, kw, wp - kw, kh, wp - kw, wf, 0, nout, nk,
                                vf, ro, nout)
                for j in range(nbc):  # border columns, down the rows inside vertically
                    ox, lo, kr = _border_column(j, ox0, ox1, pl, sw, kw, w_)
                    _planar_run(nv, xf, n * cin * hw + ((oy0 + ra) * sh - pt) * w_
                                + ox * sw - pl + lo, sh * w_, rb - ra, kr, w_ - kr, kh,
                                hw - (kh - 1) * w_ - kr, wb.reshape(-1), j * nk * nout, nout,
                                cin * kh * kr, vf, (ra * wo + ox) * nout, wo * nout)
                for r in range(nb):
                    _epilogue_row(v[r], tmp, n, oy0 + r, 0, ep, res1, res2, yout, pout, cfg)
                q += nb

    conv_small_planar.__qualname__ = f"conv_small_planar_{nout}_{cin}_{kh}x{kw}_{sw}"
    serial, parallel = _twins(conv_small_planar, **_KW_FMA)
    return SimpleNamespace(serial=serial, parallel=parallel)


_CONV_SMALL: dict = {}
CONV_SMALL_LANES = (8, 16, 24, 32, 48, 64)  # output counts with a kernel of their own
CONV_SMALL_KROWS = (3, 6, 9, 12)  # kernel rows (kw x Cin) with one too: 3x3 on RGB is 9


def conv_small(nout: int, krow: int, parallel: bool):
    """The :func:`_make_conv_small` kernel for ``nout`` outputs and kernel rows of
    ``krow`` floats (built on first use)."""
    key = (nout if nout in CONV_SMALL_LANES else 0, krow if krow in CONV_SMALL_KROWS else 0)
    if key not in _CONV_SMALL:
        _CONV_SMALL[key] = _make_conv_small(*key)
    pair = _CONV_SMALL[key]
    return pair.parallel if parallel else pair.serial


def conv_small_planar(nout: int, cin: int, kh: int, kw: int, sw: int, parallel: bool):
    """The :func:`_make_conv_small_planar` kernel for this shape (built on first use)."""
    key = ("planar", nout, cin, kh, kw, sw)
    if key not in _CONV_SMALL:
        _CONV_SMALL[key] = _make_conv_small_planar(*key[1:])
    pair = _CONV_SMALL[key]
    return pair.parallel if parallel else pair.serial


def conv_small_planar_fits(nout: int) -> bool:
    """Whether :func:`conv_small_planar` has a register block for ``nout`` outputs."""
    return nout % FMA_LANES == 0 and 0 < nout <= 4 * FMA_LANES


@_rows(**_KW)
def pad_nhwc(x, xp, top, left, nt):
    """xp[:, top:top + H, left:left + W] = x for any strides of ``x`` (an NCHW input
    seen as NHWC is a transposed view: numpy copied it at a quarter of this speed)."""
    n_, h_, w_, c_ = x.shape
    rows = n_ * h_
    nt = max(1, min(nt, rows))
    planar = x.strides[2] < x.strides[3]  # NCHW memory: read along x, channel by channel
    for ch in prange(nt):
        for qq in range(ch * rows // nt, (ch + 1) * rows // nt):
            n, yy = qq // h_, qq % h_
            if planar and c_ == 3 and xp.strides[3] == 4 and xp.strides[2] == 12 \
                    and x.strides[2] == 4:
                # RGB: three planes interleaved by vector shuffles (_interleave16), 2.4x
                # the loop LLVM vectorised itself, 7x the channel-by-channel copy
                d = xp[n, top + yy].reshape(-1)[3 * left:3 * (left + w_)]
                r0, r1, r2 = x[n, yy, :, 0], x[n, yy, :, 1], x[n, yy, :, 2]
                _interleave3(r0, r1, r2, d)
            elif planar:
                for c in range(c_):
                    for xx in range(w_):
                        xp[n, top + yy, left + xx, c] = x[n, yy, xx, c]
            else:
                for xx in range(w_):
                    for c in range(c_):
                        xp[n, top + yy, left + xx, c] = x[n, yy, xx, c]


@intrinsic
def _interleave16(typingctx, a, b, c, d, i):
    """d[3 (i + k) + j] = (a, b, c)[j][i + k] for k < FMA_LANES: three vector loads, two
    shuffles and one store (LLVM left the loop below scalar). The rows of ``a``, ``b``,
    ``c`` must be unit-stride (their pointers are read as float vectors)."""
    def codegen(context, builder, signature, args):
        data = _array_data(context, builder, signature)
        n = FMA_LANES
        vt = ir.VectorType(ir.FloatType(), n)
        idx = args[4]

        def load(k):
            ptr = builder.gep(data(k, args[k]), [idx])
            return builder.load(builder.bitcast(ptr, vt.as_pointer()), align=4)

        va, vb, vc = load(0), load(1), load(2)
        i32 = ir.IntType(32)
        ab = builder.shuffle_vector(va, vb, ir.Constant(ir.VectorType(i32, 2 * n),
                                                        list(range(2 * n))))
        cc = builder.shuffle_vector(vc, vc, ir.Constant(ir.VectorType(i32, 2 * n),
                                                        list(range(n)) * 2))
        order = [v for k in range(n) for v in (k, n + k, 2 * n + k)]
        out = builder.shuffle_vector(ab, cc, ir.Constant(ir.VectorType(i32, 3 * n), order))
        dst = builder.gep(data(3, args[3]), [builder.mul(idx, ir.Constant(ir.IntType(64), 3))])
        builder.store(out, builder.bitcast(dst, out.type.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(a, b, c, d, _I64), codegen


@njit(**_KW_SMALL)
def _interleave3(a, b, c, d):
    """d[3 i + j] = (a, b, c)[j][i] on zero-based unit-stride slices."""
    m = a.shape[0]
    i = 0
    while i + FMA_LANES <= m:
        _interleave16(a, b, c, d, i)
        i += FMA_LANES
    for k in range(i, m):
        d[3 * k] = a[k]
        d[3 * k + 1] = b[k]
        d[3 * k + 2] = c[k]


@njit(**_KW_SMALL)
def _copy(src, dst):
    """dst[:] = src[:] on zero-based slices (vectorised)."""
    for i in range(src.shape[0]):
        dst[i] = src[i]


@_rows(**_KW)
def im2col(x, cols, padval, cfg, nt):
    """Patches of NHWC ``x`` (channels c0 .. c0 + Cg) into ``cols`` [rows * Wo, kh * kw * Cg].

    cfg: pt, pl, kh, kw, sh, sw, dh, dw, Ho, Wo, c0, Cg, q0, q1: output image rows
    ``n * Ho + oy`` from q0 to q1 (0, 0: all), so a conv can go block by block with
    its patches in cache.
    """
    pt, pl, kh, kw, sh, sw, dh, dw = cfg[0], cfg[1], cfg[2], cfg[3], cfg[4], cfg[5], cfg[6], \
        cfg[7]
    ho, wo, c0, cg = cfg[8], cfg[9], cfg[10], cfg[11]
    n_, h_in, w_in, c_all = x.shape
    q0, q1 = cfg[12], cfg[13]  # output image rows (n * Ho + oy) to do; 0, 0: all
    if q1 == 0:
        q1 = n_ * ho
    whole = c0 == 0 and cg == c_all and dw == 1  # a kernel row is one contiguous run
    xf = x.reshape(-1)
    rows = q1 - q0
    nt = max(1, min(nt, rows))
    for ch in prange(nt):
        for q in range(q0 + ch * rows // nt, q0 + (ch + 1) * rows // nt):
            n, oy = q // ho, q % ho
            for ox in range(wo):
                dst = cols[(q - q0) * wo + ox]
                k = 0
                ix0 = ox * sw - pl
                for ky in range(kh):
                    iy = oy * sh + ky * dh - pt
                    if whole and 0 <= iy < h_in and ix0 >= 0 and ix0 + kw <= w_in:
                        run = kw * c_all
                        if run < 64:  # e.g. a 3x3 stem on RGB: 9 floats, no slice views
                            base = ((n * h_in + iy) * w_in + ix0) * c_all
                            for j in range(run):
                                dst[k + j] = xf[base + j]
                        else:
                            _copy(x[n, iy].reshape(-1)[ix0 * c_all:ix0 * c_all + run],
                                  dst[k:k + run])
                        k += run
                        continue
                    for kx in range(kw):
                        ix = ox * sw + kx * dw - pl
                        if 0 <= iy < h_in and 0 <= ix < w_in:
                            src = x[n, iy, ix]
                            for c in range(cg):
                                dst[k + c] = src[c0 + c]
                        else:
                            for c in range(cg):
                                dst[k + c] = padval
                        k += cg


# ---------------------------------------------------------------- pooling
@njit(inline="always")
def _ep1(t, ep, c):
    """The epilogue's per-channel chain on one value (no residual)."""
    t = t * ep[0, c] + ep[1, c]
    t = t if t >= 0 else t * ep[2, c]
    t = t * ep[3, c] + ep[4, c]
    return t if t >= 0 else t * ep[5, c]


@_rows(**_KW_FMA)
def pool_nhwc(x, y, pre, post, cfg, nt):
    """Max (cfg[0] = 0) or average (1) pooling of NHWC ``x`` into ``y``.

    cfg: kind, kh, kw, sh, sw, pt, pl, dh, dw, count_include_pad, divisor (0 = none),
    pb, pr, use_pre, use_post; then the output's place in ``y`` (top, left: a view
    inside a padded buffer, see engine.pad_in_place) and its size Ho, Wo. Max pooling
    skips positions outside the input (-inf padding); average pooling counts them
    (zeros) when count_include_pad, as PyTorch does, but never past the padded extent.
    ``pre`` / ``post`` are epilogue chains (folded BatchNorm, PReLU / ReLU) applied to
    each input / output value, so a transition's BN -> max-pool -> ReLU is one pass.
    """
    kind, kh, kw, sh, sw, pt, pl, dh, dw, cip, divisor = (cfg[0], cfg[1], cfg[2], cfg[3], cfg[4],
                                                          cfg[5], cfg[6], cfg[7], cfg[8], cfg[9],
                                                          cfg[10])
    pb, pr, use_pre, use_post = cfg[11], cfg[12], cfg[13], cfg[14]
    ot, ol, ho, wo = cfg[15], cfg[16], cfg[17], cfg[18]
    n_, h_in, w_in, nch = x.shape
    rows = n_ * ho
    nt = max(1, min(nt, rows))
    # a plain max-pool of stride 1 along x without padding (QuickNet's 2 x 2 / 1): each
    # tap is one long run of the input row, so an output row is kh * kw flat maxima
    flat = (kind == 0 and not use_pre and not use_post and sw == 1 and dw == 1
            and pt == 0 and pl == 0 and pb == 0 and pr == 0 and x.strides[3] == 4
            and x.strides[2] == 4 * nch and y.strides[3] == 4 and y.strides[2] == 4 * nch)
    for ch in prange(nt):
        acc = np.empty(nch, np.float32)
        for qq in range(ch * rows // nt, (ch + 1) * rows // nt):
            n, oy = qq // ho, qq % ho
            if flat:
                yr = y[n, ot + oy].reshape(-1)[ol * nch:(ol + wo) * nch]
                yr[:] = -np.inf
                for ky in range(kh):
                    xr = x[n, oy * sh + ky * dh].reshape(-1)
                    for kx in range(kw):
                        _max_into(yr, xr[kx * nch:kx * nch + wo * nch])
                continue
            for ox in range(wo):
                if kind == 0:
                    for c in range(nch):
                        acc[c] = -np.inf
                else:
                    for c in range(nch):
                        acc[c] = 0
                cnt = 0
                cnt_pad = 0
                for ky in range(kh):
                    iy = oy * sh + ky * dh - pt
                    if iy >= h_in + pb:
                        continue
                    for kx in range(kw):
                        ix = ox * sw + kx * dw - pl
                        if ix >= w_in + pr:
                            continue
                        cnt_pad += 1
                        if iy < 0 or iy >= h_in or ix < 0 or ix >= w_in:
                            continue
                        cnt += 1
                        xr = x[n, iy, ix]
                        if kind == 0 and use_pre:
                            for c in range(nch):
                                acc[c] = max(acc[c], _ep1(xr[c], pre, c))
                        elif kind == 0:
                            for c in range(nch):
                                acc[c] = max(acc[c], xr[c])
                        elif use_pre:
                            for c in range(nch):
                                acc[c] += _ep1(xr[c], pre, c)
                        else:
                            for c in range(nch):
                                acc[c] += xr[c]
                yr = y[n, ot + oy, ol + ox]
                if kind != 0:
                    d = np.float32(divisor if divisor > 0 else (cnt_pad if cip else cnt))
                    for c in range(nch):
                        acc[c] = acc[c] / d
                if use_post:
                    for c in range(nch):
                        yr[c] = _ep1(acc[c], post, c)
                else:
                    for c in range(nch):
                        yr[c] = acc[c]


@njit(**_KW_SMALL)
def _max_into(acc, src):
    """acc = max(acc, src) as Python's max (acc kept unless src is greater) on zero-based
    slices (vectorised)."""
    for i in range(acc.shape[0]):
        acc[i] = max(acc[i], src[i])


@njit(**_KW_SMALL)
def mean_hw(x, y):
    """y[n, c] = mean of x[n, :, :, c] (channels-last): a global average pool."""
    n_, h_, w_, c_ = x.shape
    for n in range(n_):
        acc = y[n]
        acc[:] = 0
        for i in range(h_):
            for j in range(w_):
                px = x[n, i, j]
                for c in range(c_):
                    acc[c] += px[c]
        for c in range(c_):
            acc[c] /= h_ * w_


@njit(**_KW)
def affine_rows(y, scale, shift, z):
    """z = y * scale + shift per feature of [M, O] rows, rounded twice as numpy does
    (no fma: compiled without fastmath)."""
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            z[i, j] = y[i, j] * scale[j] + shift[j]


# ---------------------------------------------------------------- element-wise rows
# The float ops between binary layers (attention's adds, products, softmax, sums;
# concatenation copies) on 3-D strided views of their operands (``ops/layout.py``'s
# ``rows3``: broadcast dims as stride 0, the output's memory order outermost first),
# so they run as row kernels: chunked over threads, kept in the flat replay and its
# regions. Each output value is computed alone, so chunking never changes a bit.
EW_ADD, EW_SUB, EW_MUL, EW_DIV, EW_COPY, EW_MAX, EW_MIN, EW_SIGMOID = range(8)


@njit(inline="always")
def _add(u, v):
    return u + v


@njit(inline="always")
def _sub(u, v):
    return u - v


@njit(inline="always")
def _mul(u, v):
    return u * v


@njit(inline="always")
def _div(u, v):
    return u / v


@njit(inline="always")
def _max(u, v):  # numpy's maximum: a NaN on either side wins
    return u if u >= v or u != u else v


@njit(inline="always")
def _min(u, v):
    return u if u <= v or u != u else v


@njit(inline="always")
def _sigmoid(u, v):  # of u alone, as the numpy path writes it
    return np.float32(1) / (np.float32(1) + np.exp(-u))


@njit(inline="always")
def _first(u, v):
    return u


@njit(inline="always")
def _span(a, b, y, lo, hi, f):
    """y = f(a, b) over rows lo .. hi of 3-D views (row r = (r // d1, r % d1)): loops
    with the strides of the common cases made constant, so LLVM vectorises them; the
    row index stepped, not divided (a division a row made copies 4x slower than
    numpy's)."""
    d1, m = y.shape[1], y.shape[2]
    sa, sb, sy = a.strides[2], b.strides[2], y.strides[2]
    i, j = lo // d1, lo % d1
    for _ in range(hi - lo):
        if sy == 4 and sa == 4 and sb == 4:
            for k in range(m):
                y[i, j, k] = f(a[i, j, k], b[i, j, k])
        elif sy == 4 and sa == 4 and sb == 0:
            v = b[i, j, 0]
            for k in range(m):
                y[i, j, k] = f(a[i, j, k], v)
        elif sy == 4 and sa == 0 and sb == 4:
            u = a[i, j, 0]
            for k in range(m):
                y[i, j, k] = f(u, b[i, j, k])
        else:
            for k in range(m):
                y[i, j, k] = f(a[i, j, k], b[i, j, k])
        j += 1
        if j == d1:
            j = 0
            i += 1


def _make_ew(code: int):
    """The :func:`ew` kernel of one function: ``code`` is a closure constant, so numba
    compiles only that function's loops (all eight in one kernel took 6 s to compile
    serially and 14 s in parallel, per array signature) and caches the kernel (its
    closure holds only the integer)."""

    def ew3(a, b, y, nt):
        """y = a (code) b on 3-D views of one shape, rounded as numpy rounds (no
        fastmath); rows (dims 0 and 1) cut across ``nt`` chunks."""
        rows = y.shape[0] * y.shape[1]
        nt = max(1, min(nt, rows))
        for ch in prange(nt):
            lo, hi = ch * rows // nt, (ch + 1) * rows // nt
            if code == EW_ADD:
                _span(a, b, y, lo, hi, _add)
            elif code == EW_SUB:
                _span(a, b, y, lo, hi, _sub)
            elif code == EW_MUL:
                _span(a, b, y, lo, hi, _mul)
            elif code == EW_DIV:
                _span(a, b, y, lo, hi, _div)
            elif code == EW_MAX:
                _span(a, b, y, lo, hi, _max)
            elif code == EW_MIN:
                _span(a, b, y, lo, hi, _min)
            elif code == EW_SIGMOID:
                _span(a, a, y, lo, hi, _sigmoid)
            else:
                _span(a, a, y, lo, hi, _first)

    ew3.__name__ = ew3.__qualname__ = f"ew3_{code}"
    serial, parallel = _twins(ew3, **_KW)
    return SimpleNamespace(serial=serial, parallel=parallel)


_EW: dict = {}


def ew(code: int, parallel: bool):
    """The element-wise row kernel ``(a, b, y, nt)`` of function ``code`` (EW_ADD ...
    EW_MIN; EW_COPY: y = a; EW_SIGMOID: y = sigmoid(a)), built on first use."""
    if code not in _EW:
        _EW[code] = _make_ew(code)
    return _EW[code].parallel if parallel else _EW[code].serial


RED_SUM, RED_MEAN, RED_MAX, RED_MIN, RED_L2 = range(5)


@_rows(**_KW)
def reduce3(x, y, fn, nt):
    """y[a, b] = reduction over k of x[a, k, b] (RED_SUM ... RED_MIN; RED_L2: the
    square root of the sum of squares), k in order; (a, block of 64 b) units cut across
    ``nt`` chunks. max / min propagate NaN as numpy does."""
    na, nk, nb = x.shape
    blocks = (nb + 63) // 64
    units = na * blocks
    nt = max(1, min(nt, units))
    for ch in prange(nt):
        for u in range(ch * units // nt, (ch + 1) * units // nt):
            ia, b0 = u // blocks, (u % blocks) * 64
            b1 = min(b0 + 64, nb)
            yr = y[ia]
            if fn == RED_L2:
                for j in range(b0, b1):
                    yr[j] = x[ia, 0, j] * x[ia, 0, j]
            else:
                for j in range(b0, b1):
                    yr[j] = x[ia, 0, j]
            for k in range(1, nk):
                if fn in (RED_SUM, RED_MEAN):
                    for j in range(b0, b1):
                        yr[j] += x[ia, k, j]
                elif fn == RED_L2:
                    for j in range(b0, b1):
                        v = x[ia, k, j]
                        yr[j] += v * v
                elif fn == RED_MAX:
                    for j in range(b0, b1):
                        v = x[ia, k, j]
                        if v > yr[j] or v != v:
                            yr[j] = v
                else:
                    for j in range(b0, b1):
                        v = x[ia, k, j]
                        if v < yr[j] or v != v:
                            yr[j] = v
            if fn == RED_MEAN:
                for j in range(b0, b1):
                    yr[j] /= np.float32(nk)
            elif fn == RED_L2:
                for j in range(b0, b1):
                    yr[j] = np.sqrt(yr[j])


@_rows(**_KW)
def softmax_rows(x, y, nt):
    """y[r] = softmax(x[r]) over the last axis of 2-D views: exp(x - max) / sum, as
    PyTorch and the numpy path compute it; rows cut across ``nt`` chunks."""
    rows, m = x.shape
    nt = max(1, min(nt, rows))
    for ch in prange(nt):
        for r in range(ch * rows // nt, (ch + 1) * rows // nt):
            xr, yr = x[r], y[r]
            top = xr[0]
            for k in range(1, m):
                top = max(top, xr[k])
            total = np.float32(0)
            for k in range(m):
                e = np.exp(xr[k] - top)
                yr[k] = e
                total += e
            for k in range(m):
                yr[k] /= total


@vectorize(["float32(float32)", "float64(float64)"], cache=True)
def erf(x):  # pragma: no cover - compiled
    """Element-wise erf (numpy has none; exact GELU needs it)."""
    return math.erf(x)


# ---------------------------------------------------------------- machine peak
@njit(cache=True)
def xor_popcount_peak(xs, w, reps):
    """``reps`` calls of the binary convs' inner block (:func:`_xor_popcount_block`: 4
    pixels x BLOCK_CHANNELS outputs, sums in registers) on operands that stay in L1,
    i.e. the best this core retires on the engine's own loop; ``w`` is [K,
    BLOCK_CHANNELS] words, ``xs`` 4 x K. A bit of ``xs`` flips after each call, so the
    calls cannot be hoisted."""
    nk = w.shape[0]
    out = np.zeros(BLOCK_PIXELS * BLOCK_CHANNELS, np.float32)
    total = 0.0
    for r in range(reps):
        _xor_popcount_block(BLOCK_PIXELS, xs, 0, nk, nk, 1, 0, w, 0, BLOCK_CHANNELS, nk, out, 0,
                            BLOCK_CHANNELS, 64 * nk)
        total += out[r % out.shape[0]]
        xs[r % xs.shape[0]] ^= _ONE
    return total


# the kernel sets an op picks from (``RunContext.k``): the serial kernels are this module
PARALLEL = SimpleNamespace(**_PARALLEL)
