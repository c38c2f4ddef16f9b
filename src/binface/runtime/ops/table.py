"""The runtime's op table: every op of the IR and of the ``.bfp`` graph, declared once.

An entry says where the op comes from (``capture``: traced from PyTorch, listing
the ATen ops the capture converts to it; ``lowering``: made by ``lower.py`` only),
the packed engine's implementation (or, for an op the lowering always rewrites,
the engine ops it becomes), and its LCE translation: the ``TFBuilder`` method that
writes it in TensorFlow, or the reason LCE export refuses it. The engine's
dispatch (``engine.OPS``), the capture's ATen dispatch (``ops/aten.py``) and the LCE
builder's dispatch all read this table; ``tests/test_op_table.py`` checks that the
converters, the lowering, the builder and docs/packed-format.md agree with it.

Functions of ``unary`` / ``binary`` / ``reduce`` nodes are in ``ops/functions.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from binface.runtime.ops import binary as B
from binface.runtime.ops import floats as F
from binface.runtime.ops import fused as U
from binface.runtime.ops.base import Op
from binface.runtime.ops.functions import BINARY, REDUCE, UNARY


@dataclass(frozen=True)
class OpDef:
    """One op: its origin, the engine's implementation and the LCE translation."""

    name: str
    engine: type[Op] | None  # None: the lowering always rewrites it into ``lowered_to``
    source: str = "capture"  # "capture" or "lowering"
    aten: tuple[str, ...] = ()  # ATen ops the capture converts to it
    lowered_to: tuple[str, ...] = ()
    lce: str | None = None  # the TFBuilder method that translates it ...
    lce_refusal: str = ""  # ... or why LCE export refuses it (capture ops only)


def _fn_aten(table: dict) -> tuple[str, ...]:
    return tuple(a for entry in table.values() for a in entry.aten)


_DEFS = (
    # -- binary ops on packed signs, made by the lowering from quantized layers
    OpDef("pack", B.PackOp, "lowering"),
    OpDef("bconv", B.BConvOp, "lowering"),
    OpDef("bdwconv", B.BDwConvOp, "lowering"),
    OpDef("bmaxpool", B.BMaxPoolOp, "lowering"),
    OpDef("ewise", U.EwiseOp, "lowering"),
    # -- quantized layers and free quantizers (capture's opaque ``binface_rt::qlayer`` op)
    OpDef("qlayer", None, lowered_to=("pack", "bconv", "bdwconv", "conv", "linear", "quant",
                                      "affine"), lce="op_qlayer"),
    OpDef("quant", F.QuantOp, lce="op_quant"),
    # -- float layers
    OpDef("conv", U.ConvOp, aten=("conv2d", "convolution"), lce="op_conv"),
    OpDef("linear", F.LinearOp, aten=("linear",), lce="op_linear"),
    OpDef("affine", F.AffineOp, aten=("batch_norm", "_native_batch_norm_legit_no_training",
                                      "native_batch_norm"), lce="op_affine"),
    OpDef("group_norm", F.GroupNormOp, aten=("group_norm",), lce="op_group_norm"),
    OpDef("layer_norm", F.LayerNormOp, aten=("layer_norm",), lce="op_layer_norm"),
    OpDef("softmax", F.SoftmaxOp, aten=("softmax", "_softmax"), lce="op_softmax"),
    OpDef("matmul", F.MatmulOp, aten=("matmul", "bmm", "mm"), lce="op_matmul"),
    # -- element-wise
    OpDef("unary", F.UnaryOp, aten=_fn_aten(UNARY), lce="op_unary"),
    OpDef("binary", F.BinaryOp, aten=_fn_aten(BINARY), lce="op_binary"),
    OpDef("clamp", F.ClampOp, aten=("hardtanh", "clamp", "clamp_min", "clamp_max"),
          lce="op_clamp"),
    OpDef("prelu", F.PReLUOp, aten=("leaky_relu", "prelu", "_prelu_kernel"), lce="op_prelu"),
    OpDef("full_like", F.FullLikeOp, aten=("ones_like", "zeros_like", "full_like"),
          lce="op_full_like"),
    # -- shapes and layouts
    OpDef("reshape", F.ReshapeOp, aten=("view", "reshape", "flatten", "unsqueeze", "squeeze",
                                        "_unsafe_view", "unflatten", "view_as", "reshape_as"),
          lce="op_reshape"),
    OpDef("expand", F.ExpandOp, aten=("expand", "expand_as", "broadcast_to"), lce="op_expand"),
    OpDef("permute", F.PermuteOp, aten=("permute", "transpose", "t"), lce="op_permute"),
    OpDef("cat", F.CatOp, aten=("cat", "concat"), lce="op_cat"),
    OpDef("stack", F.StackOp, aten=("stack",), lce="op_stack"),
    OpDef("slice", F.SliceOp, aten=("slice",), lce="op_slice"),
    OpDef("select", F.SelectOp, aten=("select",), lce="op_select"),
    OpDef("split", F.SplitOp, aten=("split_with_sizes", "split", "chunk", "unbind",
                                    "tensor_split"), lce="op_split"),
    OpDef("pad", F.PadOp, aten=("pad", "constant_pad_nd"), lce="op_pad"),
    # -- reductions, pooling, resizing
    OpDef("reduce", F.ReduceOp, aten=_fn_aten(REDUCE), lce="op_reduce"),
    OpDef("vector_norm", F.VectorNormOp, aten=("linalg_vector_norm",), lce="op_vector_norm"),
    OpDef("maxpool", U.PoolOp, aten=("max_pool2d", "max_pool2d_with_indices"),
          lce="op_maxpool"),
    OpDef("avgpool", U.PoolOp, aten=("avg_pool2d",), lce="op_avgpool"),
    OpDef("adaptive_avgpool", F.AdaptiveAvgPoolOp,
          aten=("adaptive_avg_pool2d", "_adaptive_avg_pool2d"), lce="op_adaptive_avgpool"),
    OpDef("interpolate", F.InterpolateOp, aten=("upsample_bilinear2d", "upsample_nearest2d"),
          lce="op_interpolate"),
)

OPDEFS: dict[str, OpDef] = {d.name: d for d in _DEFS}

# what the packed engine runs, by node op name
ENGINE_OPS: dict[str, type[Op]] = {d.name: d.engine for d in _DEFS if d.engine is not None}
