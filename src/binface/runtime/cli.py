"""``binface export`` and ``binface bench``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from binface.cli_args import parse_size, positive_int
from binface.errors import BinfaceError
from binface.fileio import OVERWRITE_FLAG, check_outputs


def _cmd_export(args: argparse.Namespace) -> int:
    from binface.models.loading import load_model

    fmt = args.format
    _check_int8_args(args)
    stem = Path(args.model).stem if Path(args.model).suffix else args.model
    suffix = {"packed": ".bfp", "lce": ".tflite", "tflite": ".tflite"}.get(fmt, ".onnx")
    if args.int8:
        stem += "_int8"
    out = Path(args.output) if args.output else Path(f"{stem}{suffix}")
    # before any work: never replace a file without --overwrite, never the input itself
    check_outputs([out], inputs=[args.model], overwrite=args.overwrite)
    lm = load_model(args.model, args.input_size)  # once: a name means random weights
    if fmt in ("packed", "lce"):
        from binface.nn.qat import is_qat

        if is_qat(lm.model):
            raise BinfaceError(f"{args.model} was trained with train.qat=int8: export it with "
                               f"--format onnx --int8 (the {fmt} format has no int8 layers)")
    if fmt == "packed":
        from binface.runtime.export import export_packed

        info = export_packed(lm.model, out, lm.input_size, name=lm.name)
        msg = (f"wrote {out}: {info['binary_layers']} binary layers (xor + popcount), "
               f"{info['nodes']} ops, {info['bytes'] / 1024:.1f} KiB")
    elif fmt == "lce":
        from binface.runtime.lce import export_lce

        info = export_lce(lm.model, out, lm.input_size, name=lm.name)
        report = info.pop("report")
        info["layers"] = report.to_dict()
        if not args.json:
            print(report.render(), end="")
        t = report.totals
        msg = (f"wrote {out}: LCE flatbuffer for ARM, NHWC input {info['input_shape']}, "
               f"{t['binary_layers']} of {t['layers']} layers binary, "
               f"{info['bytes'] / 1024:.1f} KiB")
    elif fmt == "tflite":
        from binface.runtime.lce import export_tflite_int8

        info = export_tflite_int8(lm.model, out, args.calibrate, args.calibration_images,
                                  lm.input_size, int8=args.int8)
        how = (f"full-integer int8, calibrated on {info['calibration_images']} images of "
               f"{args.calibrate}, {info['int8_ops']} of {info['ops']} ops on int8"
               if args.int8 else "float32")
        msg = f"wrote {out}: TFLite (TensorFlow's converter) for ARM, {how}, " \
              f"{info['bytes'] / 1024:.1f} KiB"
    elif args.int8:
        from binface.runtime.int8 import export_onnx_int8

        info = export_onnx_int8(lm.model, out, calibrate=args.calibrate,
                                images=args.calibration_images, input_size=lm.input_size,
                                opset=args.opset, reduce_range=args.reduce_range)
        how = ("learned QAT scales, no calibration data read" if info["mode"] == "qat" else
               f"calibrated on {info['calibration_images']} images of {args.calibrate} "
               f"(min/max){', 7-bit weights' if args.reduce_range else ''}")
        msg = (f"wrote {out}: int8 ONNX (QDQ, opset {info['opset']}, per-channel weights), "
               f"{info['int8_weights']} int8 weight tensors, {info['quantize_linear']} "
               f"QuantizeLinear, {how}, {info['bytes'] / 1024:.1f} KiB")
        if info["mode"] == "qat" and args.calibrate:
            msg += f"; {args.calibrate} was not needed"
    else:
        from binface.runtime.onnx_rt import export_onnx

        info = export_onnx(lm.model, out, lm.input_size, opset=args.opset)
        msg = f"wrote {out}: ONNX opset {info['opset']}, dynamic batch, " \
              f"{info['bytes'] / 1024:.1f} KiB"
    if args.check:
        err, cos = _check(lm, fmt, out)
        info["max_rel_error"] = err
        msg += f"; max relative error vs PyTorch {err:.2e}"
        if args.int8:
            info["min_cosine"] = cos
            msg += f", cosine >= {cos:.4f}"
        if fmt == "lce" and err > 1e-4 and any(
                r["kind"].startswith("binary") for r in info["layers"]["layers"]):
            msg += (" (binary layers amplify float rounding: a pre-activation within rounding "
                    "of 0 can take the other sign; see README, 'ARM deployment')")
    print(json.dumps(info) if args.json else msg)
    return 0


def _check_int8_args(args: argparse.Namespace) -> None:
    """The int8 options go together, and with ONNX or plain TFLite only."""
    if args.int8 and args.format not in ("onnx", "tflite"):
        raise BinfaceError("--int8 needs --format onnx (ONNX Runtime's QDQ int8) or --format "
                           "tflite (TensorFlow's full-integer int8)")
    if not args.int8 and (args.calibrate or args.calibration_images is not None):
        raise BinfaceError("--calibrate and --calibration-images go with --int8")
    if args.reduce_range and not (args.int8 and args.format == "onnx"):
        raise BinfaceError("--reduce-range goes with --format onnx --int8 (ONNX Runtime's "
                           "7-bit weights for x86 CPUs without VNNI)")
    if args.calibration_images is None:
        from binface.runtime.int8 import DEFAULT_CALIBRATION_IMAGES

        args.calibration_images = DEFAULT_CALIBRATION_IMAGES


def _check(lm, fmt: str, path: Path) -> tuple[float, float]:
    """Max |exported - PyTorch| / max |PyTorch| and the lowest cosine, on a random batch
    of 2."""
    import numpy as np
    import torch

    x = np.random.default_rng(0).standard_normal((2, 3, *lm.input_size), dtype=np.float32)
    with torch.no_grad():
        ref = lm.model(torch.from_numpy(x)).numpy()
    if fmt == "packed":
        from binface.runtime.engine import load_packed

        got = load_packed(path).run(x)
    elif fmt in ("lce", "tflite"):
        from binface.runtime.lce import LceRunner

        got = LceRunner(path).run(x)
    else:
        from binface.runtime.onnx_rt import OnnxRunner

        got = OnnxRunner(path).run(x)
    err = float(np.abs(got - ref).max() / max(float(np.abs(ref).max()), 1e-12))
    cos = (got * ref).sum(1) / np.maximum(
        np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-12)
    return err, float(cos.min())


def _cmd_bench(args: argparse.Namespace) -> int:
    from binface.runtime.bench import render, run_bench

    runtimes = [r for r in args.runtime.split(",")]
    if args.per_layer:
        from binface.runtime.bench import per_layer, render_layers

        if runtimes != ["packed"]:
            raise BinfaceError("--per-layer profiles the packed engine: give --runtime packed")
        res = per_layer(args.model, threads=args.threads, batch=args.batch,
                        repeats=args.repeats, input_size=args.input_size)
        print(json.dumps(res, indent=2) if args.json else render_layers(res), end="")
        return 0
    res = run_bench(args.model, runtimes, threads=args.threads, batch=args.batch,
                    repeats=args.repeats, warmup=args.warmup, rounds=args.rounds,
                    input_size=args.input_size, progress=not args.json,
                    calibrate=args.calibrate)
    print(json.dumps(res, indent=2) if args.json else render(res), end="\n" if args.json else "")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export``, ``bench`` and ``run`` commands to the top-level parser."""
    p = sub.add_parser(
        "export", help="export a model to the packed binary format, ONNX or LCE (.tflite)",
        description="Export a registered model (random init) or a checkpoint. --format packed "
        "writes a .bfp file (safetensors tensors + JSON graph) that the packed engine runs with "
        "numpy and numba only: every layer with +-1 operands as xor + popcount on 64-bit words, "
        "BatchNorm and activations folded into each layer's epilogue. --format onnx writes an "
        "ONNX model (opset >= 17, dynamic batch) for ONNX Runtime. --format lce (needs the `lce` "
        "extra) translates the model to TensorFlow ops in the patterns the Larq Compute Engine "
        "binarises, converts it for ARM and prints, per layer, whether LCE runs it in binary. "
        "--format onnx --int8 writes an int8 QDQ model with ONNX Runtime's quantisation tools: "
        "a float model is calibrated on --calibrate DATA, a train.qat=int8 checkpoint uses "
        "its learned scales (docs/int8.md). --format tflite (the `lce` extra) writes a plain "
        "TFLite model of a float network through TensorFlow's converter; with --int8 it is "
        "full-integer int8 calibrated on --calibrate DATA, and LCE's interpreter runs it.")
    p.add_argument("model", help="registered model name or checkpoint (.pt)")
    p.add_argument("--format", choices=["packed", "onnx", "lce", "tflite"], default="packed",
                   help="output format (default packed)")
    p.add_argument("-o", "--output", metavar="PATH", help="output file (default NAME.bfp, "
                   "NAME.onnx or NAME.tflite)")
    p.add_argument("--input-size", type=parse_size, default=None, metavar="H[xW]",
                   help="input image size (default: the model's, else 112)")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--check", action="store_true", help="compare the export with PyTorch on "
                   "random input")
    p.add_argument("--int8", action="store_true", help="with --format onnx or tflite: int8 "
                   "weights and "
                   "activations (QDQ, per-channel weights); float models need --calibrate")
    p.add_argument("--calibrate", metavar="DATA", help="aligned faces at the model's input "
                   "size for int8 ranges: a .rec, an image folder or a .bin pack")
    p.add_argument("--calibration-images", type=int, default=None, metavar="N",
                   help="calibration images, spread over DATA (default 256)")
    p.add_argument("--reduce-range", action="store_true", help="with --format onnx --int8: "
                   "7-bit weights, for x86 CPUs without VNNI (their int8 products can "
                   "saturate with 8-bit weights)")
    p.add_argument(OVERWRITE_FLAG, action="store_true",
                   help="replace the output file if it exists (never the input)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run_export)

    b = sub.add_parser(
        "bench", help="latency of a model in several runtimes, side by side",
        description="Median and p90 latency, images per second and peak memory of one model in "
        "each runtime asked, measured in turns so that background load hits all alike. Given a "
        "model name or checkpoint, exports what packed and onnx need into a temporary folder. "
        "onnx runs binary models as float; onnx-int8 is ONNX Runtime's static int8 (float "
        "models; calibrated on --calibrate DATA, else on noise, which is enough for timing); "
        "lce needs the `lce` extra.")
    b.add_argument("model", help="registered model name, checkpoint, .bfp, .onnx or .tflite file")
    b.add_argument("--runtime", default="torch,onnx,packed",
                   help="comma-separated runtimes: torch, onnx, onnx-int8, packed, lce "
                   "(default torch,onnx,packed)")
    b.add_argument("--calibrate", metavar="DATA", default=None, help="onnx-int8: calibration "
                   "faces (.rec, image folder or .bin pack; default: noise, for timing)")
    b.add_argument("--threads", type=positive_int, default=1,
                   help="threads per runtime (default 1)")
    b.add_argument("--batch", type=positive_int, default=1, help="batch size (default 1)")
    b.add_argument("--repeats", type=positive_int, default=50, help="timed runs per runtime "
                   "(default 50)")
    b.add_argument("--warmup", type=positive_int, default=5, help="untimed runs first (default 5)")
    b.add_argument("--rounds", type=positive_int, default=5, help="turns the timed runs are split "
                   "into (default 5)")
    b.add_argument("--input-size", type=parse_size, default=None, metavar="H[xW]",
                   help="input image size (default: the model's, else 112)")
    b.add_argument("--per-layer", action="store_true", help="with --runtime packed: time "
                   "every op alone (module path, kind, MACs by precision, G MAC/s, share of "
                   "this core's measured xor + popcount peak)")
    b.add_argument("--json", action="store_true", help="print JSON")
    b.set_defaults(func=_run_bench)

    from binface.runtime.run_cli import register as register_run

    register_run(sub)


def _run_export(args: argparse.Namespace) -> int:
    try:
        return _cmd_export(args)
    except OSError as exc:
        raise BinfaceError(f"cannot write {args.output or 'the output'}: {exc.strerror}") from None


def _run_bench(args: argparse.Namespace) -> int:
    return _cmd_bench(args)
