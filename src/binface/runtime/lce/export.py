"""IR -> TensorFlow -> LCE flatbuffer, and ``export_lce`` (PyTorch model -> ``.tflite``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from binface.errors import BinfaceError
from binface.runtime.errors import UnsupportedOpError
from binface.runtime.lce.build import TFBuilder
from binface.runtime.lce.report import layer_report
from binface.runtime.lce.tflib import import_lce, quiet_fd2


def _saved_model(ir, input_shape_nhwc: tuple[int, ...], tf, folder: str) -> list:
    """Write the TensorFlow translation of ``ir`` as a SavedModel in ``folder``; returns the
    list that collects untranslatable ops (raised instead of TF's pages of trace)."""
    builder = TFBuilder(ir, tf, n=input_shape_nhwc[0])
    untranslatable: list[BinfaceError] = []

    class _Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec(list(input_shape_nhwc), tf.float32)])
        def __call__(self, x):
            try:
                return builder.build(x)
            except BinfaceError as exc:  # tf.function re-raises it as "StagingError: in user code"
                untranslatable.append(exc)
                raise

    try:
        tf.saved_model.save(_Model(), folder)
    except BinfaceError:
        raise
    except Exception as exc:  # noqa: BLE001 - TensorFlow's messages run for pages
        if untranslatable:
            raise untranslatable[0] from None
        raise _conversion_error(exc) from None
    return untranslatable


def _conversion_error(exc: BaseException, what: str = "LCE") -> UnsupportedOpError:
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return UnsupportedOpError(f"{what} conversion failed: {type(exc).__name__}: {first[:200]}")


def convert_ir(ir, input_shape_nhwc: tuple[int, ...]) -> bytes:
    """The LCE flatbuffer (target "arm") of an IR graph on an NHWC float input."""
    tf, lce = import_lce()
    with tempfile.TemporaryDirectory(prefix="binface-lce-") as tmp, quiet_fd2():
        _saved_model(ir, input_shape_nhwc, tf, tmp)
        try:
            return lce.convert_saved_model(tmp, target="arm")
        except Exception as exc:  # noqa: BLE001 - TensorFlow's messages run for pages
            raise _conversion_error(exc) from None


def convert_ir_int8(ir, input_shape_nhwc: tuple[int, ...], faces) -> bytes:
    """A plain TFLite flatbuffer of a float IR graph through TensorFlow's converter (no LCE
    ops). With ``faces`` (uint8 NHWC, normalised as the model expects) it is full-integer:
    ``Optimize.DEFAULT``, int8 builtin ops only, float32 input and output (quantised at the
    edges); with None, float32."""
    import numpy as np

    tf, _ = import_lce()

    def representative():
        for face in faces:
            yield [((face[None].astype(np.float32) - 127.5) / 127.5)]

    with tempfile.TemporaryDirectory(prefix="binface-tflite8-") as tmp, quiet_fd2():
        _saved_model(ir, input_shape_nhwc, tf, tmp)
        try:
            conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
            if faces is not None:
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.representative_dataset = representative
                conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            return conv.convert()
        except Exception as exc:  # noqa: BLE001 - TensorFlow's messages run for pages
            raise _conversion_error(exc, "TFLite") from None


def export_lce(model, path: str | os.PathLike, input_size: tuple[int, int] | None = None,
               name: str | None = None, channels: int = 3) -> dict:
    """Trace ``model``, translate it to TensorFlow, convert with LCE (target "arm")
    and write the ``.tflite`` atomically; returns a summary with the per-layer report.

    The file takes one NHWC float32 image of batch 1, normalised as the PyTorch model
    expects (binface models take (x - 127.5) / 127.5).
    """
    import torch

    from binface.fileio import write_bytes
    from binface.models.loading import load_model
    from binface.runtime.capture import capture

    import_lce()
    lm = load_model(model, input_size)
    if name:
        lm.name = name
    with torch.no_grad():
        ir = capture(lm.model, lm.input_size, channels=channels)
    h, w = lm.input_size
    fb = convert_ir(ir, (1, h, w, channels))
    report = layer_report(ir, fb)
    path = Path(path)
    write_bytes(path, fb)
    return {"model": lm.name, "path": str(path), "bytes": len(fb), "format": "lce",
            "input_shape": [1, h, w, channels], "report": report}


def export_tflite_int8(model, path: str | os.PathLike, calibrate,
                       images: int | None = None,
                       input_size: tuple[int, int] | None = None, int8: bool = True) -> dict:
    """A float model (name, checkpoint or module) as a plain ``.tflite`` for ARM: with
    ``int8``, full-integer int8 calibrated on ``calibrate`` (a .rec, image folder or .bin
    pack, or uint8 faces (N, H, W, 3)); else float32. It runs in LCE's interpreter
    (``LceRunner``) like any ``.tflite``. Binary models (``export_lce`` is theirs) and QAT
    checkpoints are refused, one line each."""
    import numpy as np
    import torch

    from binface.fileio import write_bytes
    from binface.models.loading import load_model
    from binface.nn.qat import is_qat
    from binface.runtime.capture import capture
    from binface.runtime.int8 import (
        DEFAULT_CALIBRATION_IMAGES,
        _check_faces,
        _has_binary,
        calibration_images,
    )
    from binface.runtime.lce.report import tflite_ops

    import_lce()
    lm = load_model(model, input_size)
    if lm.family == "binary" or _has_binary(lm.model):
        raise BinfaceError(f"{lm.name} is a binary model: --format tflite is for float models "
                           "(--format lce runs its binary layers as LCE binary convs)")
    if is_qat(lm.model):
        raise BinfaceError(f"{lm.name} was trained with train.qat=int8: TensorFlow's converter "
                           "cannot take PyTorch's learned scales; export it with --format onnx "
                           "--int8, or calibrate the float model")
    if not int8:
        faces = None
    elif calibrate is None:
        raise BinfaceError(f"{lm.name}: int8 TFLite needs calibration data (--calibrate a "
                           ".rec, an image folder or a .bin pack)")
    elif isinstance(calibrate, np.ndarray):
        faces = _check_faces(calibrate, lm.input_size)
    else:
        faces = calibration_images(calibrate, lm.input_size,
                                   images or DEFAULT_CALIBRATION_IMAGES)
    with torch.no_grad():
        ir = capture(lm.model, lm.input_size, channels=3)
    h, w = lm.input_size
    fb = convert_ir_int8(ir, (1, h, w, 3), faces)
    ops = tflite_ops(fb, str(path))
    int8_ops = sum(1 for op in ops if op["inputs"] and op["inputs"][0]
                   and op["inputs"][0]["type"] == 9)  # 9: INT8
    path = Path(path)
    write_bytes(path, fb)
    return {"model": lm.name, "path": str(path), "bytes": len(fb),
            "format": "tflite-int8" if int8 else "tflite", "input_shape": [1, h, w, 3],
            "calibration_images": 0 if faces is None else len(faces),
            "ops": len(ops), "int8_ops": int8_ops}
