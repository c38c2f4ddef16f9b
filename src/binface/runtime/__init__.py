"""Runtimes: a bit-packed binary engine, ONNX and LCE export, and ``binface bench``.

- ``export_packed(model, path)`` writes a ``.bfp`` (torch needed);
  ``load_packed(path)`` returns a :class:`~binface.runtime.engine.PackedEngine`
  whose ``run(x)`` needs numpy and numba only.
- ``export_onnx(model, path)`` and ``load_onnx(path)`` (ONNX Runtime);
  ``export_onnx_int8(model, path, calibrate=DATA, images=N)`` writes an int8 QDQ model
  with ONNX Runtime's quantisation tools (a QAT checkpoint needs no data; docs/int8.md).
- ``export_lce(model, path)`` writes an LCE ``.tflite`` for ARM; ``load_lce(path)``
  returns an :class:`~binface.runtime.lce.LceRunner`; ``lce_available()`` says whether
  the ``lce`` extra (TensorFlow, LCE) is installed.
- ``measure(model_or_path, runtime, threads=1, batch=1, repeats=50)`` and
  ``run_bench(...)``: latency side by side.

Names resolve lazily, so importing this package (for the engine) loads neither torch
nor TensorFlow. The runtime's ops are declared in ``binface.runtime.ops.table``.
"""

from __future__ import annotations

from binface.lazy import lazy_exports

_API = {
    "export_packed": "binface.runtime.export",
    "load_model": "binface.models.loading",
    "load_packed": "binface.runtime.engine",
    "PackedEngine": "binface.runtime.engine",
    "export_onnx": "binface.runtime.onnx_rt",
    "load_onnx": "binface.runtime.onnx_rt",
    "OnnxRunner": "binface.runtime.onnx_rt",
    "export_onnx_int8": "binface.runtime.int8",
    "export_lce": "binface.runtime.lce",
    "load_lce": "binface.runtime.lce",
    "LceRunner": "binface.runtime.lce",
    "lce_available": "binface.runtime.lce",
    "measure": "binface.runtime.bench",
    "run_bench": "binface.runtime.bench",
    "RUNTIMES": "binface.runtime.bench",
    "inference_copy": "binface.runtime.capture",
    "PackedFormatError": "binface.runtime.errors",
    "UnsupportedOpError": "binface.runtime.errors",
    "RuntimeUnavailableError": "binface.runtime.errors",
}

__all__ = sorted(_API)


__getattr__, __dir__ = lazy_exports(__name__, _API, globals())
