"""ONNX export (torch side) and an ONNX Runtime runner (onnxruntime + numpy only).

Float models export as they are. Binary models export too, from the copy with
ahead-of-time quantized weights (``capture.inference_copy``): their binary layers
then run as float convolutions of +-1 values, which is what LCE does with every
layer it cannot run in binary; the packed engine is the binary runtime. For them
the exporter's constant folding and ONNX Runtime's Conv+BatchNorm fusions are
off: folding a BatchNorm into a binary conv's weights turns a sum that is exactly
0 into +-1e-7, and the next sign flips (BinaryFaceNet then differs by 70 %).
The export marks such models (``binface.binary`` metadata) so the runner knows.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from binface.errors import InputShapeError
from binface.fileio import write_bytes
from binface.runtime.errors import RuntimeUnavailableError, UnsupportedOpError

OPSET = 17


def export_onnx(model, path: str | os.PathLike, input_size: tuple[int, int] | None = None,
                opset: int = OPSET, prelu: str = "decompose") -> dict:
    """Write ``model`` (name, checkpoint or module) to ``path`` as ONNX with a dynamic batch.

    Uses the TorchScript-based exporter (several times faster to export) and falls
    back to the dynamo exporter for ops it lacks. ``prelu="decompose"`` rewrites PReLU
    into four fast ops (:func:`decompose_prelu`); ``"keep"`` leaves ``PRelu`` nodes, for
    tools that treat PReLU as one op (the int8 quantiser: decomposition comes after).
    """
    if prelu not in ("decompose", "keep"):
        raise ValueError(f"prelu must be 'decompose' or 'keep', not {prelu!r}")
    import torch

    from binface.models.loading import load_model
    from binface.runtime.capture import inference_copy

    lm = load_model(model, input_size)
    m = inference_copy(lm.model)
    binary = _has_quantizers(lm.model)
    x = torch.randn(2, 3, *lm.input_size)
    path = Path(path)
    errors = []
    with tempfile.TemporaryDirectory(prefix="binface-onnx-") as tmpdir:
        tmp = Path(tmpdir) / "model.onnx"
        for dynamo in (False, True):
            try:
                with warnings.catch_warnings(), torch.no_grad(), _quiet():
                    warnings.simplefilter("ignore")
                    kw = {"dynamic_axes": {"input": {0: "batch"}, "embedding": {0: "batch"}}} \
                        if not dynamo else {
                            "dynamic_shapes": ({0: torch.export.Dim("batch", min=1, max=4096)},),
                            "verbose": False}
                    if binary and not dynamo:
                        kw["do_constant_folding"] = False
                    if binary and dynamo:
                        kw["optimize"] = False
                    # the dynamo exporter writes opset 18 natively; asking it for less runs a
                    # down-converter that fails on some ops
                    torch.onnx.export(m, (x,), str(tmp), input_names=["input"],
                                      output_names=["embedding"],
                                      opset_version=max(opset, 18) if dynamo else opset,
                                      dynamo=dynamo, **kw)
                break
            except Exception as exc:  # noqa: BLE001 - reported below if both exporters fail
                errors.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}")
        else:
            raise UnsupportedOpError(f"{lm.name} cannot be exported to ONNX "
                                     f"({'; '.join(errors)})")
        # one self-contained file (weights inline), written atomically with its metadata
        blob = _with_metadata(tmp, {"binface.model": lm.name,
                                    "binface.binary": "1" if binary else "0"},
                              decompose=prelu == "decompose")
    write_bytes(path, blob)
    opset = max(opset, 18) if dynamo else opset
    return {"model": lm.name, "path": str(path), "opset": opset, "binary": binary,
            "bytes": path.stat().st_size}


@contextlib.contextmanager
def _quiet():
    """Silence stdout and stderr at the file-descriptor level.

    The exporters print progress lines, and the TorchScript one the whole graph when
    an op is missing (before we fall back to the other); errors still come back as
    exceptions.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _has_quantizers(model) -> bool:
    from binface.nn.quantizers import Quantizer

    return any(isinstance(m, Quantizer) for m in model.modules())


def _with_metadata(path: Path, props: dict[str, str], decompose: bool = True) -> bytes:
    """The ONNX file at ``path`` with external data inlined, PReLU decomposed
    (:func:`decompose_prelu`, with ``decompose``) and ``props`` set, as bytes."""
    import onnx

    proto = onnx.load(str(path), load_external_data=True)
    if decompose:
        decompose_prelu(proto.graph)
    for k, v in props.items():
        entry = next((p for p in proto.metadata_props if p.key == k), None)
        if entry is None:
            entry = proto.metadata_props.add()
            entry.key = k
        entry.value = v
    return proto.SerializeToString()


def decompose_prelu(graph) -> int:
    """Rewrite every ``PRelu`` node as ``Relu(x) + slope * Min(x, 0)``, in place.

    ONNX Runtime's CPU PRelu broadcasts its per-channel slope element by element: on a
    128x56x56 map it took 3.17 ms against 0.29 ms for these four ops (1 thread,
    ``benchmarks/onnx_prelu.py``), and it was three quarters of MobileFaceNet's time.
    The value is the same bit for bit: x > 0 gives x + slope * 0 = x, x <= 0 gives
    0 + slope * x. ``Mul`` broadcasts both ways, and the slope already broadcasts to x
    (PRelu's own rule), so the result keeps x's shape. Returns how many were rewritten.
    """
    from onnx import TensorProto, helper

    nodes, count, zero, fresh = [], 0, None, namer(graph)
    for n in graph.node:
        if n.op_type != "PRelu":
            nodes.append(n)
            continue
        if zero is None:
            zero = fresh("prelu_zero")
            graph.initializer.append(helper.make_tensor(zero, TensorProto.FLOAT, [], [0.0]))
        x, slope = n.input
        base = n.name or f"prelu{count}"
        pos, neg, scaled = (fresh(f"{base}_{k}") for k in ("pos", "neg", "scaled"))
        nodes += [helper.make_node("Relu", [x], [pos], name=pos),
                  helper.make_node("Min", [x, zero], [neg], name=neg),
                  helper.make_node("Mul", [neg, slope], [scaled], name=scaled),
                  helper.make_node("Add", [pos, scaled], list(n.output), name=base + "_add")]
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def namer(graph):
    """A function giving tensor / node names not used in ``graph`` yet."""
    used = {i.name for i in graph.initializer} | {v.name for v in graph.input} \
        | {x for n in graph.node for x in (*n.input, *n.output, n.name)}

    def fresh(stem: str) -> str:
        name, k = stem, 0
        while name in used:
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        return name

    return fresh


# fusions that change a binary layer's exact zero sums (see the module docstring)
BINARY_UNSAFE_FUSIONS = ["ConvBNFusion", "ConvAddFusion", "ConvMulFusion"]


class OnnxRunner:
    """An ONNX Runtime session on the CPU: ``run(x)`` takes (N, 3, H, W) float32."""

    def __init__(self, path: str | os.PathLike, threads: int | None = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeUnavailableError("the onnx runtime needs onnxruntime: "
                                          "pip install onnxruntime") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeUnavailableError(f"{path}: ONNX Runtime cannot load it: {first}") \
                from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.binary = meta.get("binface.binary") == "1"
        if self.binary:
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=["CPUExecutionProvider"],
                                                disabled_optimizers=BINARY_UNSAFE_FUSIONS)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = inp.shape  # e.g. ['batch', 3, 112, 112]

    def run(self, x: np.ndarray) -> np.ndarray:
        want = tuple(self.input_shape[1:])
        if not isinstance(x, np.ndarray) or x.ndim != 4 or tuple(x.shape[1:]) != want:
            got = tuple(x.shape) if isinstance(x, np.ndarray) else type(x).__name__
            raise InputShapeError(f"the ONNX model expects input of shape (N, "
                                  f"{', '.join(str(d) for d in want)}), got {got}")
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]

    __call__ = run


def load_onnx(path: str | os.PathLike, threads: int | None = 1) -> OnnxRunner:
    return OnnxRunner(path, threads)
