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


def convert_ir(ir, input_shape_nhwc: tuple[int, ...]) -> bytes:
    """The LCE flatbuffer (target "arm") of an IR graph on an NHWC float input."""
    tf, lce = import_lce()
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

    module = _Model()
    with tempfile.TemporaryDirectory(prefix="binface-lce-") as tmp, quiet_fd2():
        try:
            tf.saved_model.save(module, tmp)
            return lce.convert_saved_model(tmp, target="arm")
        except BinfaceError:
            raise
        except Exception as exc:  # noqa: BLE001 - TensorFlow's messages run for pages
            if untranslatable:
                raise untranslatable[0] from None
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
            raise UnsupportedOpError(f"LCE conversion failed: {type(exc).__name__}: "
                                     f"{first[:200]}") from None


def export_lce(model, path: str | os.PathLike, input_size: tuple[int, int] | None = None,
               name: str | None = None, channels: int = 3) -> dict:
    """Trace ``model``, translate it to TensorFlow, convert with LCE (target "arm")
    and write the ``.tflite`` atomically; returns a summary with the per-layer report.

    The file takes one NHWC float32 image of batch 1, normalised as the PyTorch model
    expects (binface models take (x - 127.5) / 128).
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
