"""ARM deployment through the Larq Compute Engine (LCE), and LCE as a measured peer.

LCE converts TensorFlow graphs, so a binface model goes PyTorch -> binface IR
(``capture.py``, the same trace the packed engine lowers) -> TensorFlow ops in
NHWC (``build.py``) -> LCE converter (target "arm", ``export.py``) -> ``.tflite``.
The TensorFlow graph is written in the patterns LCE's converter matches, and
layers LCE cannot run in binary are written so that they convert to plain float
TFLite ops instead of failing (``plan.py``; the facts are in docs/lce.md).
:func:`layer_report` (``report.py``) reads the converted flatbuffer and says for
every conv, dense and max-pool layer which kernel LCE really runs; ``runner.py``
runs a ``.tflite`` in LCE's interpreter.

TensorFlow is imported only in ``tflib.py``, only when asked for (the ``lce`` extra):
importing this package loads neither TensorFlow nor torch.
"""

from binface.runtime.lce.build import TFBuilder
from binface.runtime.lce.export import (
    convert_ir,
    convert_ir_int8,
    export_lce,
    export_tflite_int8,
)
from binface.runtime.lce.plan import Plan, plan_qlayer, resolve_plans
from binface.runtime.lce.report import BINARY_OPS, LayerRow, LceReport, layer_report, tflite_ops
from binface.runtime.lce.runner import LceRunner, load_lce
from binface.runtime.lce.tflib import LCE_HINT, import_lce, lce_available

__all__ = ["BINARY_OPS", "LCE_HINT", "LayerRow", "LceReport", "LceRunner", "Plan", "TFBuilder",
           "convert_ir", "convert_ir_int8", "export_lce", "export_tflite_int8", "import_lce",
           "layer_report", "lce_available", "load_lce", "plan_qlayer", "resolve_plans",
           "tflite_ops"]
