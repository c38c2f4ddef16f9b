"""Where ONNX Runtime spends MobileFaceNet's time: PReLU as one op or four, fp32 and int8.

    python benchmarks/onnx_prelu.py [--model mobilefacenet] [--repeats 200]

Part 1 times one PReLU on a 128x56x56 map (1 thread) as ONNX's ``PRelu`` and as the
``Relu(x) + slope * Min(x, 0)`` that ``binface export`` writes (docs/int8.md). Part 2
exports the model (default initialisation; speed does not depend on training) as
fp32 with PReLU kept, fp32 as binface writes it, PTQ int8 and a QAT int8 export (a few
observed batches), times them side by side in interleaved rounds and prints ONNX
Runtime's profile by op type. Prints the figures and their ratios; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _session(model_bytes: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def one_prelu(repeats: int) -> None:
    from onnx import TensorProto, helper, numpy_helper

    from binface.runtime.onnx_rt import decompose_prelu

    c, h, w = 128, 56, 56
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    slope = rng.random((c, 1, 1)).astype(np.float32) * 0.5
    graphs = {}
    for name in ("PRelu", "decomposed"):
        g = helper.make_graph([helper.make_node("PRelu", ["x", "a"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
                              [numpy_helper.from_array(slope, "a")])
        if name == "decomposed":
            decompose_prelu(g)
        graphs[name] = _session(helper.make_model(
            g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    times = {k: [] for k in graphs}
    for _ in range(5):  # interleaved rounds
        for k, s in graphs.items():
            s.run(None, {"x": x})
            t = time.perf_counter()
            for _ in range(repeats // 5):
                s.run(None, {"x": x})
            times[k].append((time.perf_counter() - t) / (repeats // 5) * 1e3)
    med = {k: float(np.median(v)) for k, v in times.items()}
    same = np.array_equal(graphs["PRelu"].run(None, {"x": x})[0],
                          graphs["decomposed"].run(None, {"x": x})[0])
    print(f"one PReLU, 1x{c}x{h}x{w}, 1 thread: PRelu {med['PRelu']:.3f} ms, decomposed "
          f"{med['decomposed']:.3f} ms ({med['PRelu'] / med['decomposed']:.1f}x); "
          f"identical output: {same}")


def whole_model(name: str, repeats: int) -> None:
    import torch

    from binface.models import create_model
    from binface.nn.qat import prepare_qat
    from binface.runtime import export_onnx, export_onnx_int8
    from binface.runtime.bench import Job, time_jobs
    from int8 import op_times

    torch.manual_seed(0)
    model = create_model(name).eval()
    faces = np.random.default_rng(0).integers(0, 256, (64, 112, 112, 3), dtype=np.uint8)
    qat = prepare_qat(create_model(name)).train()
    with torch.no_grad():
        for _ in range(4):
            qat(torch.randn(8, 3, 112, 112))
    qat.eval()
    with tempfile.TemporaryDirectory() as tmp:
        files = {"fp32, PRelu kept": Path(tmp) / "keep.onnx", "fp32": Path(tmp) / "fp32.onnx",
                 "int8 PTQ": Path(tmp) / "ptq.onnx", "int8 QAT": Path(tmp) / "qat.onnx"}
        export_onnx(model, files["fp32, PRelu kept"], prelu="keep")
        export_onnx(model, files["fp32"])
        export_onnx_int8(model, files["int8 PTQ"], calibrate=faces)
        export_onnx_int8(qat, files["int8 QAT"])
        res = time_jobs([Job("onnx", str(p)) for p in files.values()], threads=1, batch=1,
                        repeats=repeats, warmup=5, rounds=10, progress="timing")
        base = res[1]["median_ms"]
        print(f"\n{name}, ONNX Runtime, 1 thread, batch 1 (side by side, interleaved):")
        for (label, path), r in zip(files.items(), res, strict=True):
            ops = op_times(path, faces, 20)
            top = ", ".join(f"{op} {ms:.2f}" for op, ms in list(ops.items())[:5])
            print(f"  {label:18s} {r['median_ms']:6.2f} ms  ({base / r['median_ms']:.2f}x "
                  f"fp32's speed)  by op (ms): {top}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilefacenet")
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    one_prelu(args.repeats)
    whole_model(args.model, args.repeats)


if __name__ == "__main__":
    main()
