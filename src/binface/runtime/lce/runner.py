"""Running a ``.tflite`` in LCE's Python interpreter, like the other runtimes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from binface.errors import InputShapeError
from binface.runtime.errors import RuntimeUnavailableError
from binface.runtime.lce.report import tflite_ops
from binface.runtime.lce.tflib import import_lce, quiet_fd2


class LceRunner:
    """A ``.tflite`` in LCE's Python interpreter; ``run`` takes NCHW like the other runtimes.

    The file is batch 1; a batch is run image by image. Grouped binary convs need
    LCE's indirect BGEMM kernel, chosen here when the file has one.
    """

    def __init__(self, path_or_bytes: str | os.PathLike | bytes, threads: int = 1,
                 use_xnnpack: bool = False) -> None:
        import_lce()
        if isinstance(path_or_bytes, bytes):
            fb = path_or_bytes
        else:
            from binface.data.files import read_bytes

            fb = read_bytes(Path(path_or_bytes), "no such TFLite model")
        ops = tflite_ops(fb, "the model" if isinstance(path_or_bytes, bytes)
                         else str(path_or_bytes))
        indirect = any(_grouped_bconv(op) for op in ops)
        from larq_compute_engine.tflite.python.interpreter import Interpreter

        try:
            with quiet_fd2():
                self.interpreter = Interpreter(fb, num_threads=int(threads),
                                               use_indirect_bgemm=indirect,
                                               use_xnnpack=use_xnnpack)
        except RuntimeError as exc:
            raise RuntimeUnavailableError(f"LCE cannot load the model: {str(exc)[:200]}") \
                from None
        self.input_shape = tuple(int(d) for d in self.interpreter.input_shapes[0])
        self.ops = ops

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        want = self.input_shape
        if x.ndim != 4 or (x.shape[1], x.shape[2], x.shape[3]) != (want[3], want[1], want[2]):
            raise InputShapeError(f"input of shape {tuple(x.shape)} does not fit this model: "
                                  f"it takes (N, {want[3]}, {want[1]}, {want[2]})")
        pred = self.interpreter.interpreter.predict
        outs = [pred([np.ascontiguousarray(x[i:i + 1].transpose(0, 2, 3, 1))])[0]
                for i in range(x.shape[0])]
        return np.concatenate(outs, axis=0)


def _grouped_bconv(op: dict) -> bool:
    if op["code"] != "LceBconv2d":
        return False
    x, f = op["inputs"][0], op["inputs"][1]
    words_in = x["shape"][-1] if x["type"] == 2 else -(-x["shape"][-1] // 32)  # 2: INT32
    return f["shape"][-1] != words_in


def load_lce(path: str | os.PathLike, threads: int = 1) -> LceRunner:
    """A ``.tflite`` file written by :func:`export_lce`, ready to ``run(x)``."""
    return LceRunner(path, threads)
