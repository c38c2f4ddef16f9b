"""8-bit ONNX models with ONNX Runtime's own quantisation tooling (docs/int8.md).

Two ways in, one kind of file out (QDQ ONNX: int8 weight initialisers feeding
DequantizeLinear, QuantizeLinear / DequantizeLinear around activations), which
``OnnxRunner``, ``binface bench`` and ``binface eval`` run like any ``.onnx``:

- a float model: post-training static quantisation. The model is exported to float
  ONNX (``export_onnx``, PReLU kept as one op), prepared with
  ``onnxruntime.quantization.quant_pre_process`` (shape inference, ORT's graph
  optimisation: BatchNorm folded into the convs before their weights are quantised),
  then ``quantize_static`` in QDQ format, int8 weights per output channel (symmetric)
  and uint8 activations per tensor (U8S8, ORT's format on x86-64), with ranges from
  min/max calibration on aligned faces from a ``.rec``, an image folder or a ``.bin``
  pack.
- a QAT checkpoint (``train.qat=int8``): its fake-quant graph is exported as it is,
  so torch.onnx writes QuantizeLinear / DequantizeLinear with the learned scales;
  each weight's QuantizeLinear is then evaluated here once (ONNX Runtime's tools keep
  it as a float weight) into an int8 initialiser, and each BatchNorm after an int8
  conv is folded into it (:func:`_fold_bn`). No calibration data is read.

Both then decompose PReLU (``onnx_rt.decompose_prelu``): it stays float between a
DequantizeLinear and a QuantizeLinear, and ORT's own PRelu is ten times slower.

Binary models are refused: their binary layers are +-1 already (the packed engine
runs them as xor + popcount), and int8 around a sign would move sums that are
exactly 0 across it.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from binface.errors import BinfaceError
from binface.fileio import write_bytes

__all__ = ["DEFAULT_CALIBRATION_IMAGES", "calibration_images", "export_onnx_int8",
           "int8_summary"]

DEFAULT_CALIBRATION_IMAGES = 256
CALIBRATION_BATCH = 16


# ---------------------------------------------------------------- calibration data
def calibration_images(path: str | os.PathLike, size: tuple[int, int],
                       count: int = DEFAULT_CALIBRATION_IMAGES) -> np.ndarray:
    """Up to ``count`` aligned faces, (N, H, W, 3) uint8 RGB, spread evenly over ``path``.

    ``path`` is a ``.rec`` (or its prefix), an image folder (one subfolder per
    identity) or a verification pack ``.bin``. Images must already be ``size``:
    calibration ranges of resized faces would not be those of the faces the model
    will see.
    """
    _check_count(count)
    p = Path(path)
    total, read = _source(p)
    if total == 0:
        raise BinfaceError(f"{p}: holds no images to calibrate with")
    picks = np.unique(np.linspace(0, total - 1, min(int(count), total)).round().astype(int))
    out = np.empty((len(picks), size[0], size[1], 3), dtype=np.uint8)
    for j, i in enumerate(picks):
        image, where = read(int(i))
        if image.shape[:2] != tuple(size):
            raise BinfaceError(f"{where}: a {image.shape[0]}x{image.shape[1]} image; the model "
                               f"takes {size[0]}x{size[1]} (calibrate with aligned crops of "
                               "the model's input size)")
        out[j] = image
    return out


def _check_count(count: object) -> None:
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count <= 0:
        raise BinfaceError(f"the number of calibration images must be a positive integer, "
                           f"got {count!r}")


def _source(p: Path):
    """(image count, read(i) -> (RGB image, where)) of a calibration path."""
    from binface.data.files import read_bytes
    from binface.data.images import decode_image

    if p.is_dir():
        from binface.data.folder import scan_folder

        files = [f for _, fs in scan_folder(p) for f in fs]

        def read_file(i: int):
            return decode_image(read_bytes(files[i], "image file not found"), str(files[i])), \
                str(files[i])

        return len(files), read_file
    if p.suffix == ".bin" and p.is_file():
        from binface.data.verification import entry_image, read_pack_raw

        bins, _ = read_pack_raw(p)

        def read_entry(i: int):
            where = f"{p}: entry {i}"
            return entry_image(bins[i], where), where

        return len(bins), read_entry
    from binface.data.recordio import FaceRecordReader, rec_paths

    rec, _ = rec_paths(p) if p.suffix != ".rec" else (p, None)
    if rec.is_file():
        reader = FaceRecordReader(rec)
        keys = reader.image_keys

        def read_record(i: int):
            where = f"{rec}: record {int(keys[i])}"
            return decode_image(reader.image(int(keys[i]))[1], where), where

        return len(keys), read_record
    if not p.exists():
        raise BinfaceError(f"calibration data not found: {p}")
    raise BinfaceError(f"{p}: calibration data must be a .rec, an image folder or a .bin "
                       "verification pack")


def _reader(images: np.ndarray, input_name: str):
    """An ORT ``CalibrationDataReader`` over normalised batches of ``images``."""
    from onnxruntime.quantization import CalibrationDataReader

    class FaceReader(CalibrationDataReader):
        """Feeds (x - 127.5) / 127.5, NCHW float32, as training and evaluation do."""

        def __init__(self) -> None:
            self.batches = self._batches()

        def _batches(self) -> Iterator[dict]:
            for start in range(0, len(images), CALIBRATION_BATCH):
                chunk = images[start:start + CALIBRATION_BATCH]
                x = chunk.transpose(0, 3, 1, 2).astype(np.float32)
                yield {input_name: (x - 127.5) / 127.5}

        def get_next(self) -> dict | None:
            return next(self.batches, None)

        def __len__(self) -> int:
            return (len(images) + CALIBRATION_BATCH - 1) // CALIBRATION_BATCH

    return FaceReader()


# ---------------------------------------------------------------- export
def export_onnx_int8(model, path: str | os.PathLike, calibrate: str | os.PathLike | None = None,
                     images: int = DEFAULT_CALIBRATION_IMAGES,
                     input_size: tuple[int, int] | None = None, opset: int = 17,
                     reduce_range: bool = False) -> dict:
    """Write ``model`` (name, checkpoint or module) to ``path`` as an int8 QDQ ONNX model.

    A float model needs ``calibrate`` (calibration data, see :func:`calibration_images`;
    ``images`` of them are used; or the faces themselves, uint8 (N, H, W, 3)); a QAT model
    uses its learned scales and reads no data. ``reduce_range`` quantises the weights of
    a float model to 7 bits (ORT's option for x86 CPUs without VNNI, whose uint8 x int8
    products add pairs into int16 and can saturate with full 8-bit weights).
    Returns what was written.
    """
    from binface.models.loading import load_model
    from binface.nn.qat import is_qat

    _check_count(images)
    lm = load_model(model, input_size)
    if lm.family == "binary" or _has_binary(lm.model):
        raise BinfaceError(f"{lm.name} is a binary model: --int8 is for float models (binary "
                           "layers are +-1 already; --format packed runs them as xor + popcount)")
    qat = is_qat(lm.model)
    if qat and reduce_range:
        raise BinfaceError(f"{lm.name} was trained with train.qat=int8: its file keeps the "
                           "8-bit scales it learned (--reduce-range is for post-training "
                           "int8 of a float model)")
    if not qat and calibrate is None:
        raise BinfaceError(f"{lm.name} is a float model: int8 needs calibration data "
                           "(--calibrate a .rec, an image folder or a .bin pack)")
    if qat:
        faces = None
    elif isinstance(calibrate, np.ndarray):
        faces, source = _check_faces(calibrate, lm.input_size), f"{len(calibrate)} given images"
    else:
        faces = calibration_images(calibrate, lm.input_size, images)
        source = f"{len(faces)} images from {Path(calibrate).name}"
    opset = max(int(opset), 13)  # per-channel QuantizeLinear / DequantizeLinear
    with tempfile.TemporaryDirectory(prefix="binface-int8-") as tmpdir:
        tmp = Path(tmpdir)
        from binface.runtime.onnx_rt import decompose_prelu, export_onnx

        export_onnx(lm.model, tmp / "float.onnx", lm.input_size, opset=opset, prelu="keep")
        proto = (_fold_qat(tmp / "float.onnx") if qat
                 else _quantize_static(tmp, faces, reduce_range))
        # after quantisation: PReLU stays float between DequantizeLinear and QuantizeLinear
        decompose_prelu(proto.graph)
    props = {"binface.model": lm.name, "binface.binary": "0", "binface.precision": "int8",
             "binface.int8": "qat" if qat else "ptq"}
    if faces is not None:
        props["binface.calibration"] = f"{source}, min/max"
        props["binface.weight_bits"] = "7" if reduce_range else "8"
    _set_metadata(proto, props)
    summary = int8_summary(proto)
    if not summary["int8_weights"] or not summary["quantize_linear"]:
        raise BinfaceError(f"{lm.name}: the quantised graph holds no int8 weights or no "
                           "QuantizeLinear node; nothing was written")
    write_bytes(path, proto.SerializeToString())
    path = Path(path)
    return {"model": lm.name, "path": str(path), "mode": "qat" if qat else "ptq",
            "opset": opset, "calibration_images": 0 if faces is None else len(faces),
            "weight_bits": 7 if reduce_range else 8,
            **summary, "bytes": path.stat().st_size}


def _check_faces(faces: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[1:] != (*size, 3) \
            or len(faces) == 0:
        raise BinfaceError(f"calibration faces must be uint8 (N, {size[0]}, {size[1]}, 3), got "
                           f"{faces.dtype} {faces.shape}")
    return faces


def _has_binary(model) -> bool:
    from binface.nn.layers import QuantizedLayer
    from binface.nn.quantizers import Quantizer

    return any(isinstance(m, (Quantizer, QuantizedLayer)) for m in model.modules())


def _quantize_static(tmp: Path, faces: np.ndarray, reduce_range: bool = False):
    """ORT's pre-processing, then static QDQ quantisation (U8S8, per-channel weights).

    Min/max calibration: ORT adds ReduceMin / ReduceMax outputs for every tensor and
    keeps only those per batch, so memory does not grow with the image count (the
    histogram methods keep whole tensors; ORT's ``CalibMaxIntermediateOutputs``,
    meant to bound that, drops the collected ranges with MinMax in ORT 1.32).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from binface.runtime.onnx_rt import _quiet

    pre, out = tmp / "pre.onnx", tmp / "int8.onnx"
    with _quiet():
        quant_pre_process(str(tmp / "float.onnx"), str(pre))
    input_name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
    try:
        with _quiet():
            quantize_static(
                str(pre), str(out), _reader(faces, input_name), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, reduce_range=reduce_range)
    except BinfaceError:
        raise
    except Exception as exc:  # noqa: BLE001 - ORT's tools raise many types
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise BinfaceError(f"ONNX Runtime could not quantise the model "
                           f"({type(exc).__name__}: {first})") from None
    return onnx.load(str(out), load_external_data=True)


def _constants(g):
    """A reader of the graph's constants: ``const(name)`` is the initialiser's array
    (also through an ``Identity`` of it, as torch.onnx writes shared constants), or None."""
    from onnx import numpy_helper

    inits = {i.name: i for i in g.initializer}
    alias = {n.output[0]: n.input[0] for n in g.node
             if n.op_type == "Identity" and n.input[0] in inits}

    def const(name: str) -> np.ndarray | None:
        name = alias.get(name, name)
        return numpy_helper.to_array(inits[name]) if name in inits else None

    return const


def _fold_qat(path: Path):
    """The QAT export with every QuantizeLinear of a constant weight turned into int8 data.

    Rounding is ONNX's (to nearest, ties to even: ``np.rint``), so the stored integers
    are the ones the QuantizeLinear node would compute.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path), load_external_data=True)
    g = proto.graph
    const = _constants(g)
    nodes, new = [], []
    for n in g.node:
        if n.op_type == "QuantizeLinear" and len(n.input) == 3:
            w, scale, zp = (const(x) for x in n.input)
            if w is not None and scale is not None and zp is not None:
                axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
                if scale.ndim == 1 and scale.size > 1:
                    shape = [1] * w.ndim
                    shape[axis % w.ndim] = scale.size
                    scale, zp = scale.reshape(shape), zp.reshape(shape)
                info = np.iinfo(zp.dtype)
                q = np.clip(np.rint(w / scale) + zp.astype(np.int32), info.min, info.max)
                new.append(numpy_helper.from_array(q.astype(zp.dtype), n.output[0]))
                continue
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new)
    _fold_bn(g)
    _prune(g)
    return proto


def _fold_bn(g) -> int:
    """Fold each BatchNorm that follows an int8 conv into it, in place; returns how many.

    With per-channel BN factor a = gamma / sqrt(var + eps), the folded weight is a * w.
    Symmetric per-channel quantisation commutes with that: the stored integers stay,
    times sign(a), and the channel's scale becomes |a| times the learned one (the one
    integer that cannot, -128 negated, saturates to 127). The folded bias
    (b - mean) a + beta is stored as int32 at scale s_x s_w, ONNX Runtime's bias format,
    so DequantizeLinear(x) -> Conv -> QuantizeLinear (the BN's learned output range)
    becomes one ``QLinearConv``. Convs whose scales or statistics are not constants,
    or whose output feeds anything besides the BN, are left as they are.
    """
    from onnx import helper, numpy_helper

    from binface.runtime.onnx_rt import namer

    const, fresh = _constants(g), namer(g)
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, int] = defaultdict(int)
    for n in g.node:
        for x in n.input:
            consumers[x] += 1
    drop, before = set(), {}  # before: id(conv) -> its new DequantizeLinear nodes
    for bn in g.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or consumers[conv.output[0]] != 1:
            continue
        dq_x, dq_w = producer.get(conv.input[0]), producer.get(conv.input[1])
        if dq_x is None or dq_w is None or dq_x.op_type != "DequantizeLinear" \
                or dq_w.op_type != "DequantizeLinear" or consumers[dq_w.output[0]] != 1:
            continue
        if len(dq_w.input) < 3 or len(dq_x.input) < 2:
            continue
        q, s_w, zp_w = (const(x) for x in dq_w.input[:3])
        s_x = const(dq_x.input[1])
        gamma, beta, mean, var = (const(x) for x in bn.input[1:5])
        bias = const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else 0.0
        if any(v is None for v in (q, s_w, zp_w, s_x, gamma, beta, mean, var, bias)) \
                or q.dtype != np.int8 or np.any(zp_w != 0) or s_x.size != 1 \
                or s_w.size != q.shape[0]:
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        a = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
        if not np.all(np.isfinite(a)) or np.any(a == 0):
            continue
        sign = np.sign(a).reshape(-1, *[1] * (q.ndim - 1))
        q2 = np.clip(q.astype(np.int32) * sign, -128, 127).astype(np.int8)
        s_w2 = (s_w.astype(np.float64).reshape(-1) * np.abs(a)).astype(np.float32)
        b2 = (np.asarray(bias, np.float64) - mean) * a + beta
        s_b = s_x.astype(np.float64).reshape(()) * s_w2.astype(np.float64)
        bq = np.rint(b2 / s_b)
        if np.any(np.abs(bq) > 2**31 - 1):
            continue
        base = conv.output[0]
        names = [fresh(f"{base}_{k}") for k in ("wq", "ws", "wzp", "bq", "bs", "bzp", "w", "b")]
        g.initializer.extend([
            numpy_helper.from_array(q2, names[0]), numpy_helper.from_array(s_w2, names[1]),
            numpy_helper.from_array(np.zeros(len(s_w2), np.int8), names[2]),
            numpy_helper.from_array(bq.astype(np.int32), names[3]),
            numpy_helper.from_array(s_b.astype(np.float32), names[4]),
            numpy_helper.from_array(np.zeros(len(s_w2), np.int32), names[5])])
        before[id(conv)] = [
            helper.make_node("DequantizeLinear", names[0:3], [names[6]], name=names[6], axis=0),
            helper.make_node("DequantizeLinear", names[3:6], [names[7]], name=names[7], axis=0)]
        del conv.input[:]
        conv.input.extend([dq_x.output[0], names[6], names[7]])
        conv.output[0] = bn.output[0]  # the BN's consumers now read the conv (after it)
        drop.update((id(bn), id(dq_w)))
    if before:
        # the new DequantizeLinear nodes read only initialisers: right before their conv
        # the order stays topological
        nodes = [m for n in g.node if id(n) not in drop for m in (*before.get(id(n), ()), n)]
        del g.node[:]
        g.node.extend(nodes)
    return len(before)


def _prune(g) -> None:
    """Drop Identity nodes and initialisers that nothing reads any more."""
    while True:
        used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type == "Identity" and n.output[0] not in used]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    names = {i.name for i in g.initializer}
    keep_vi = [v for v in g.value_info if v.name not in names]
    del g.value_info[:]
    g.value_info.extend(keep_vi)


def _set_metadata(proto, props: dict[str, str]) -> None:
    for k, v in props.items():
        entry = next((p for p in proto.metadata_props if p.key == k), None)
        if entry is None:
            entry = proto.metadata_props.add()
            entry.key = k
        entry.value = v


def int8_summary(model) -> dict:
    """Counts that say a graph is int8: int8 weight initialisers, Q and DQ nodes, and
    conv / dense nodes left with a float weight (``model``: a path or a ModelProto)."""
    import onnx

    proto = onnx.load(str(model)) if isinstance(model, (str, os.PathLike)) else model
    g = proto.graph
    ops = [n.op_type for n in g.node]
    dq_inputs = {n.input[0] for n in g.node if n.op_type == "DequantizeLinear"}
    int8 = [i for i in g.initializer if i.data_type == onnx.TensorProto.INT8
            and i.name in dq_inputs and np.prod(i.dims or [1]) > 1]
    float_inits = {i.name for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT}
    # conv / dense nodes that still multiply by a float weight held in the file
    float_ops = [n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul")
                 and len(n.input) > 1 and n.input[1] in float_inits]
    return {"int8_weights": len(int8),
            "int8_weight_values": int(sum(np.prod(i.dims) for i in int8)),
            "quantize_linear": ops.count("QuantizeLinear"),
            "dequantize_linear": ops.count("DequantizeLinear"),
            "float_weight_ops": len(float_ops)}
