"""The packed engine's float layers against ONNX Runtime's, layer by layer.

A binary model's packed graph still holds float layers: the stem, the transitions,
depthwise convs, dense heads. For each of them this script builds the same layer as a
one-node ONNX graph (the conv with the op's own weights, its epilogue as ONNX Runtime
would run it: the first affine folded into the conv's weights and bias, PReLU as
``Relu(x) + slope * Min(x, 0)`` the way binface's ONNX export writes it, the second
affine, residual adds) and times the two side by side in this process, one thread,
batch 1, on the input the layer really sees in the model, in interleaved rounds.

    python benchmarks/float_layers.py                      # QuickNet, BinaryFaceNet
    python benchmarks/float_layers.py quicknet --rounds 20 --json

The issue's target: no float layer slower in the packed engine than in ONNX Runtime.
A packed conv that also writes the packed signs for the next binary layer does that
extra work inside its time (ONNX Runtime's layer has no such output).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FLOAT_OPS = ("conv", "linear", "head")


def _act(nodes, inits, x: str, slope: np.ndarray, tag: str) -> str:
    """PReLU with per-channel ``slope`` (NCHW), as binface's ONNX export writes it."""
    from onnx import helper, numpy_helper

    if np.all(slope == 1):
        return x
    if np.all(slope == 0):
        nodes.append(helper.make_node("Relu", [x], [f"{tag}_relu"]))
        return f"{tag}_relu"
    inits += [numpy_helper.from_array(slope.reshape(1, -1, 1, 1).astype(np.float32),
                                      f"{tag}_slope"),
              numpy_helper.from_array(np.zeros((), np.float32), f"{tag}_zero")]
    nodes += [helper.make_node("Relu", [x], [f"{tag}_pos"]),
              helper.make_node("Min", [x, f"{tag}_zero"], [f"{tag}_neg"]),
              helper.make_node("Mul", [f"{tag}_neg", f"{tag}_slope"], [f"{tag}_scaled"]),
              helper.make_node("Add", [f"{tag}_pos", f"{tag}_scaled"], [f"{tag}_out"])]
    return f"{tag}_out"


def conv_as_onnx(op, x_shape: tuple, res_shapes: list[tuple]) -> bytes:
    """A packed ``conv`` op (NHWC input of ``x_shape``) as an NCHW ONNX graph."""
    from onnx import TensorProto, helper, numpy_helper

    kh, kw = op.kernel
    pt, pb, pl, pr = op.pads
    ep = op.ep.astype(np.float32)
    if op.depthwise:  # w [kh, kw, O], O = cin * mult, group = cin
        w = op.w.transpose(2, 0, 1)[:, None]
        group = op.cin
    else:  # w [G, kh * kw * Cg, Og] -> [G * Og, Cg, kh, kw]
        g, _, og = op.w.shape
        cg = op.cin // g
        w = op.w.reshape(g, kh, kw, cg, og).transpose(0, 4, 3, 1, 2).reshape(g * og, cg, kh, kw)
        group = g
    w = w * ep[0].reshape(-1, 1, 1, 1)  # the first affine folded into the conv
    inits = [numpy_helper.from_array(np.ascontiguousarray(w, np.float32), "w"),
             numpy_helper.from_array(ep[1].astype(np.float32), "b")]
    nodes = []
    src = "x"
    if op.pad_value != 0 and any(op.pads):
        inits += [numpy_helper.from_array(np.array([0, 0, pt, pl, 0, 0, pb, pr], np.int64),
                                          "pads"),
                  numpy_helper.from_array(np.array(op.pad_value, np.float32), "padval")]
        nodes.append(helper.make_node("Pad", ["x", "pads", "padval"], ["xp"]))
        src, conv_pads = "xp", [0, 0, 0, 0]
    else:
        conv_pads = [pt, pl, pb, pr]
    nodes.append(helper.make_node("Conv", [src, "w", "b"], ["c"], kernel_shape=[kh, kw],
                                  strides=list(op.stride), dilations=list(op.dilation),
                                  pads=conv_pads, group=group))
    y = _act(nodes, inits, "c", ep[2], "a1")
    if not (np.all(ep[3] == 1) and np.all(ep[4] == 0)):
        inits += [numpy_helper.from_array(ep[3].reshape(1, -1, 1, 1), "a2"),
                  numpy_helper.from_array(ep[4].reshape(1, -1, 1, 1), "b2")]
        nodes += [helper.make_node("Mul", [y, "a2"], ["m2"]),
                  helper.make_node("Add", ["m2", "b2"], ["s2"])]
        y = "s2"
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                            [x_shape[0], x_shape[3], x_shape[1], x_shape[2]])]
    for i, rs in enumerate(res_shapes):
        inputs.append(helper.make_tensor_value_info(f"r{i}", TensorProto.FLOAT,
                                                    [rs[0], rs[3], rs[1], rs[2]]))
        nodes.append(helper.make_node("Add", [y, f"r{i}"], [f"res{i}"]))
        y = f"res{i}"
    y = _act(nodes, inits, y, ep[5], "a2act")
    graph = helper.make_graph(nodes, "layer", inputs,
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def linear_as_onnx(op, x_shape: tuple) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ascontiguousarray(op.w, np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y0"])]
    y = "y0"
    if op.b is not None:
        inits.append(numpy_helper.from_array(op.b.astype(np.float32), "b"))
        nodes.append(helper.make_node("Add", ["y0", "b"], ["y"]))
        y = "y"
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, list(x_shape))], [helper.make_tensor_value_info(
            y, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 17)]).SerializeToString()


def head_as_onnx(op, x_shape: tuple) -> bytes:
    """A packed ``head`` (global pool, flatten, dense, optional affine) on NCHW input."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.ascontiguousarray(op.w, np.float32), "w")]
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["y0"])]
    y = "y0"
    if op.b.size:
        inits.append(numpy_helper.from_array(op.b.astype(np.float32), "b"))
        nodes.append(helper.make_node("Add", [y, "b"], ["y1"]))
        y = "y1"
    if op.affine is not None:
        inits += [numpy_helper.from_array(op.affine.scale.reshape(-1), "s"),
                  numpy_helper.from_array(op.affine.shift.reshape(-1), "t")]
        nodes += [helper.make_node("Mul", [y, "s"], ["y2"]),
                  helper.make_node("Add", ["y2", "t"], ["y3"])]
        y = "y3"
    n, h, w, c = x_shape
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [n, c, h, w])], [helper.make_tensor_value_info(
            y, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 17)]).SerializeToString()


def compare_model(name: str, rounds: int, per_round: int) -> list[dict]:
    """Every float conv / dense op of ``name``'s packed graph, packed vs ORT, in ms."""
    import onnxruntime as ort

    from binface.runtime import export_packed, load_packed
    from binface.runtime.ops.layout import nhwc

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.bfp"
        export_packed(name, path)
        eng = load_packed(path, threads=1)
    x = np.random.default_rng(0).standard_normal((1, 3, 112, 112), dtype=np.float32)
    eng.run(x)
    env = dict(eng.consts)
    env[eng.input_name] = eng.check_input(x)
    ctx = eng.context(1)
    layers = []
    for op in eng.ops:
        if op.node["op"] in FLOAT_OPS:
            before = dict(env)  # the op's inputs as the model gives them
            layers.append((op, before))
        op(env, ctx)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    rows = []
    for op, env_in in layers:
        kind = op.node["op"]
        if kind == "conv":
            xin = nhwc(env_in[op.inputs[0]])
            res = [nhwc(env_in[r]) for r in op.inputs[1:]]
            proto = conv_as_onnx(op, xin.shape, [r.shape for r in res])
            feeds = {"x": np.ascontiguousarray(xin.transpose(0, 3, 1, 2))}
            feeds.update({f"r{i}": np.ascontiguousarray(r.transpose(0, 3, 1, 2))
                          for i, r in enumerate(res)})
            what = ("depthwise " if op.depthwise else "") + "x".join(map(str, op.kernel)) + \
                f"/{op.stride[0]} {op.cin}->{op.nout}"
        elif kind == "head":
            xin = nhwc(env_in[op.inputs[0]])
            proto = head_as_onnx(op, xin.shape)
            feeds = {"x": np.ascontiguousarray(xin.transpose(0, 3, 1, 2))}
            what = f"pool, dense {op.w.shape[0]}->{op.w.shape[1]}" + (
                ", BN" if op.affine is not None else "")
        else:
            xin = env_in[op.inputs[0]]
            proto = linear_as_onnx(op, xin.shape)
            feeds = {"x": np.ascontiguousarray(xin, np.float32)}
            what = f"dense {op.w.shape[0]}->{op.w.shape[1]}"
        sess = ort.InferenceSession(proto, so, providers=["CPUExecutionProvider"])
        got = sess.run(None, feeds)[0]
        env2 = dict(env_in)
        op(env2, ctx)
        ref = env2[op.outputs[0]] if kind in ("linear", "head") or op.out_float else None
        agree = None
        if ref is not None:
            ref = np.asarray(ref)
            ref = ref.reshape(got.shape) if ref.size == got.size else None
            if ref is not None:
                agree = float(np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-12))
        t_p, t_o = [], []
        for _ in range(rounds):  # interleaved: the two see the same machine
            e = dict(env_in)
            t0 = time.perf_counter()
            for _ in range(per_round):
                op(e, ctx)
            t_p.append((time.perf_counter() - t0) / per_round)
            t0 = time.perf_counter()
            for _ in range(per_round):
                sess.run(None, feeds)
            t_o.append((time.perf_counter() - t0) / per_round)
        p_ms, o_ms = 1e3 * float(np.median(t_p)), 1e3 * float(np.median(t_o))
        rows.append({"model": name, "op": op.name, "source": op.attrs.get("source"),
                     "layer": what, "packed_ms": round(p_ms, 4), "onnx_ms": round(o_ms, 4),
                     "packed_vs_onnx": round(o_ms / p_ms, 3),
                     "writes_packed_signs": bool(getattr(op, "pack", None)),
                     "max_rel_diff": agree})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", default=["quicknet", "binaryfacenet"])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--per-round", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = [r for m in args.models for r in compare_model(m, args.rounds, args.per_round)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    wm = max([14] + [len(r["model"]) for r in rows])
    wo = max([10] + [len(r["op"]) for r in rows])
    wl = max([24] + [len(r["layer"]) for r in rows])
    print(f"{'model':<{wm}} {'op':<{wo}} {'layer':<{wl}} {'packed ms':>9} {'ORT ms':>8} "
          f"{'ORT/packed':>10}  note")
    for r in rows:
        note = "also packs signs" if r["writes_packed_signs"] else ""
        if r["max_rel_diff"] is not None and r["max_rel_diff"] > 1e-3:
            note += f" (outputs differ: {r['max_rel_diff']:.1e})"
        print(f"{r['model']:<{wm}} {r['op']:<{wo}} {r['layer']:<{wl}} {r['packed_ms']:>9.3f} "
              f"{r['onnx_ms']:>8.3f} {r['packed_vs_onnx']:>9.2f}x  {note}")
    for m in args.models:
        rs = [r for r in rows if r["model"] == m]
        slower = [r for r in rs if r["packed_vs_onnx"] < 1]
        print(f"{m}: float layers {sum(r['packed_ms'] for r in rs):.3f} ms packed, "
              f"{sum(r['onnx_ms'] for r in rs):.3f} ms ONNX Runtime; {len(slower)} of "
              f"{len(rs)} slower in the packed engine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
