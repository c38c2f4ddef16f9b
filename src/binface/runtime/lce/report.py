"""What LCE really runs: the ops of a converted ``.tflite`` matched to the IR's layers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from binface.errors import BinfaceError
from binface.runtime.lce.plan import resolve_plans
from binface.runtime.lce.tflib import import_lce

BINARY_OPS = ("LceBconv2d", "LceBMaxPool2d")


def tflite_ops(flatbuffer: bytes, name: str = "the model") -> list[dict]:
    """The ops of a ``.tflite`` in execution order: code, tensor shapes/types, names."""
    import_lce()
    from tensorflow.lite.python import schema_py_generated as schema

    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    except Exception:  # noqa: BLE001 - a corrupt flatbuffer raises anything
        raise BinfaceError(f"{name}: not a TFLite flatbuffer") from None
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for oc in model.operatorCodes:
        if oc.customCode:
            codes.append(oc.customCode.decode())
        else:
            code = max(int(oc.builtinCode), int(getattr(oc, "deprecatedBuiltinCode", 0) or 0))
            codes.append(builtin.get(code, str(code)))
    sg = model.subgraphs[0]

    def tensor(i: int) -> dict:
        t = sg.tensors[i]
        shape = [] if t.shape is None else [int(s) for s in t.shape]
        return {"shape": shape, "type": int(t.type), "name": (t.name or b"").decode()}

    ops = []
    for op in sg.operators:
        ins = [tensor(i) if i >= 0 else None for i in op.inputs]
        outs = [tensor(i) for i in op.outputs]
        ops.append({"code": codes[op.opcodeIndex], "inputs": ins, "outputs": outs})
    return ops


# ---------------------------------------------------------------- per-layer report
@dataclass
class LayerRow:
    index: int
    source: str
    kind: str
    lce_op: str
    binary: bool
    macs: int
    reason: str = ""
    note: str = ""


@dataclass
class LceReport:
    rows: list[LayerRow] = field(default_factory=list)

    @property
    def totals(self) -> dict:
        b = [r for r in self.rows if r.binary]
        return {"layers": len(self.rows), "binary_layers": len(b),
                "float_layers": len(self.rows) - len(b),
                "binary_macs": int(sum(r.macs for r in b)),
                "float_macs": int(sum(r.macs for r in self.rows if not r.binary))}

    def to_dict(self) -> dict:
        return {"layers": [asdict(r) for r in self.rows], "totals": self.totals}

    def render(self) -> str:
        lines = [f"{'#':>3}  {'layer':<34} {'kind':<22} {'LCE op':<18} {'runs':<6} "
                 f"{'MACs':>12}  note"]
        for r in self.rows:
            note = r.reason or r.note
            lines.append(f"{r.index:>3}  {r.source[-34:]:<34} {r.kind:<22} {r.lce_op:<18} "
                         f"{'binary' if r.binary else 'float':<6} {r.macs:>12,}  {note}")
        t = self.totals
        all_macs = max(1, t["binary_macs"] + t["float_macs"])
        lines.append(f"LCE runs {t['binary_layers']} of {t['layers']} conv/dense/pool layers in "
                     f"binary: {t['binary_macs']:,} binary MACs "
                     f"({100 * t['binary_macs'] / all_macs:.1f}% of all layer MACs), "
                     f"{t['float_macs']:,} float MACs")
        return "\n".join(lines) + "\n"


def _conv_key(o: int, kh: int, kw: int, ho: int, wo: int) -> tuple:
    return ("conv", o, kh, kw, ho, wo)


def _tflite_key(op: dict) -> tuple | None:
    code = op["code"]
    out = op["outputs"][0]["shape"]
    if code in ("LceBconv2d", "CONV_2D"):
        f = op["inputs"][1]["shape"]  # O, kh, kw, (words | Cg)
        return _conv_key(f[0], f[1], f[2], out[1], out[2])
    if code == "DEPTHWISE_CONV_2D":
        f = op["inputs"][1]["shape"]  # 1, kh, kw, O
        return _conv_key(f[3], f[1], f[2], out[1], out[2])
    if code == "FULLY_CONNECTED":
        f = op["inputs"][1]["shape"]
        return ("fc", f[0], f[1])
    if code in ("MAX_POOL_2D", "LceBMaxPool2d"):
        return ("pool", out[1], out[2])
    return None


def _ir_layers(ir, shapes: dict) -> list[dict]:
    """Every conv, dense and max-pool node of the IR, with its expected TFLite keys."""
    sources = ir.meta.get("sources", {})
    layers = []
    for node in ir.nodes:
        out = node.outputs[0]
        a = node.attrs
        so = shapes[out]
        src = a.get("source") or sources.get(out, "") or out
        layer = a.get("layer", node.op)
        if layer == "linear":  # a float dense node or a quantized dense layer
            w = ir.consts[a["weight"]]
            layers.append({"node": node, "source": src,
                           "kind": "binary dense" if a.get("w_binary") else "dense",
                           "keys": [("fc", w.shape[0], w.shape[1])],
                           "macs": int(np.prod(so[:-1])) * w.size})
        elif node.op in ("qlayer", "conv"):
            ho, wo = so[2], so[3]
            if layer == "sep":
                dw, pw = ir.consts[a["dw_weight"]], ir.consts[a["pw_weight"]]
                kh, kw = dw.shape[2:]
                layers.append({"node": node, "source": src,
                               "kind": f"binary separable {kh}x{kw}",
                               "keys": [_conv_key(dw.shape[0], kh, kw, ho, wo),
                                        _conv_key(pw.shape[0], 1, 1, ho, wo)],
                               "macs": ho * wo * (dw.size + pw.size)})
                continue
            w = ir.consts[a["weight"]]
            o, cg, kh, kw = w.shape
            groups = int(a["groups"])
            prefix = "binary " if node.op == "qlayer" and a.get("w_binary") else ""
            shape = "depthwise" if groups > 1 and cg == 1 else (
                f"grouped({groups})" if groups > 1 else "conv")
            layers.append({"node": node, "source": src, "kind": f"{prefix}{shape} {kh}x{kw}",
                           "keys": [_conv_key(o, kh, kw, ho, wo)], "macs": ho * wo * w.size,
                           "cin": cg if groups == 1 else None})
        elif node.op == "maxpool":
            k = a["kernel"]
            layers.append({"node": node, "source": src, "kind": f"max-pool {k[0]}x{k[1]}",
                           "keys": [("pool", so[2], so[3])], "macs": 0})
    return layers


def layer_report(ir, flatbuffer: bytes, batch: int = 1) -> LceReport:
    """Which kernel LCE runs for every conv, dense and max-pool layer of ``ir``."""
    shapes, plans = resolve_plans(ir, batch)
    ops = [(i, op, _tflite_key(op)) for i, op in enumerate(tflite_ops(flatbuffer))]
    used: set[int] = set()
    report = LceReport()
    for idx, layer in enumerate(_ir_layers(ir, shapes)):
        found = []
        for key in layer["keys"]:
            alts = [key]
            if key[0] == "conv" and key[2:4] == (1, 1):  # TFLite may run a 1x1 conv as dense
                alts.append(("fc", key[1], layer.get("cin")))
            hit = next((i for i, op, k in ops if k in alts and i not in used), None)
            if hit is not None:
                used.add(hit)
                found.append(ops[hit][1]["code"])
        node = layer["node"]
        plan = plans.get(node.outputs[0])
        binary = bool(found) and all(c in BINARY_OPS for c in found)
        reason = ""
        if not found:
            reason = "not in the converted model (folded or merged by the converter)"
        elif not binary:
            if plan is not None and not plan.binary:
                reason = plan.reason
            elif plan is not None:
                reason = "LCE did not match the binary pattern"
            elif node.op == "maxpool":
                reason = "its output does not feed a binary layer"
        report.rows.append(LayerRow(
            index=idx, source=layer["source"], kind=layer["kind"],
            lce_op="+".join(found) or "-", binary=binary, macs=int(layer["macs"]),
            reason=reason, note=plan.note if plan is not None and binary else ""))
    return report
