"""Which quantized layers LCE 0.16 runs in binary, and the padding LCE's converter expects.

The rules (docs/lce.md): LCE binarises a conv whose input quantizer is sign-type
and whose kernel is +-1 (or +-scale per output channel), with no padding or
TensorFlow's "same"; grouped binary convs need a multiple of 32 input channels
per group; depthwise, separable and dense binary layers run in float.
"""

from __future__ import annotations

from dataclasses import dataclass

from binface.runtime.ops.layout import resolve


@dataclass
class Plan:
    """What LCE should do with one quantized layer: binary or float, and why."""

    binary: bool
    reason: str = ""
    note: str = ""


def same_pads(h: int, w: int, kernel, stride, dilation) -> list[int]:
    from binface.nn.layers import same_padding

    pt, pb = same_padding(h, kernel[0], stride[0], dilation[0])
    pl, pr = same_padding(w, kernel[1], stride[1], dilation[1])
    return [pt, pb, pl, pr]


def plan_qlayer(node, shapes: dict, consts: dict) -> Plan:
    """Whether LCE 0.16 can run a ``qlayer`` node as ``LceBconv2d`` (docs/lce.md)."""
    from binface.runtime.lower import sign_scale

    a = node.attrs
    kind = a["in_q"]["kind"]
    if a["layer"] == "linear":
        return Plan(False, "dense layer: LCE has no binary dense kernel")
    if a["layer"] == "sep":
        return Plan(False, "separable conv: LCE runs binary depthwise/separable convs in float")
    if kind == "none":
        return Plan(False, "float input (no input quantizer)")
    if kind == "neg":
        return Plan(False, "DoReFa input quantizer: LCE binarises sign-type quantizers only")
    if kind == "dorefa":
        return Plan(False, f"{a['in_q']['k_bit']}-bit DoReFa activations")
    w = consts[a["weight"]]
    if sign_scale(w) is None:
        return Plan(False, "float (not +-1) kernel")
    groups = int(a["groups"])
    cg = w.shape[1]
    note = ""
    if groups > 1:
        if cg == 1:
            return Plan(False, "binary depthwise conv: LCE runs it in float")
        if cg % 32:
            return Plan(False, f"grouped binary conv with {cg} input channels per group "
                               "(LCE needs a multiple of 32)")
        note = "grouped: needs LCE's indirect BGEMM kernel"
    pads = a["pads"]
    if any(pads):
        h, w_ = shapes[node.inputs[0]][2], shapes[node.inputs[0]][3]
        if pads != same_pads(h, w_, a["kernel"], a["stride"], a["dilation"]):
            return Plan(False, "padding that is not TensorFlow's 'same'")
    return Plan(True, "", note)


def resolve_plans(ir, n: int = 1) -> tuple[dict, dict[str, Plan]]:
    """Concrete shapes for batch ``n`` and the plan of every ``qlayer`` node."""
    shapes = {k: resolve(v, n) for k, v in ir.shapes.items()}
    plans = {node.outputs[0]: plan_qlayer(node, shapes, ir.consts) for node in ir.nodes
             if node.op == "qlayer"}
    return shapes, plans


def lce_sees_same(before: int, after: int, size: int, out: int, stride: int) -> bool:
    """LCE 0.16's test for "this explicit pad is 'same'" (``IsSamePadding1D``).

    It ignores the kernel size, so e.g. torch's (1, 1) pads of a stride-2 3x3 conv
    on an even size pass, although TF's "same" pads (0, 1) there; LCE then fuses
    the pad into a "same" conv and shifts the output by one pixel.
    """
    total = before + after
    return out == -(-size // stride) and before == total // 2 and after == (total + 1) // 2


def conv_padding(in_hw, kernel, stride, dilation, pads: list[int], pad_value: float
                  ) -> tuple[str, list[int], tuple[int, int] | None]:
    """("SAME" | "VALID", explicit pads, crop) for a conv with torch-style ``pads``.

    Pads no window reaches are dropped. When LCE would wrongly fuse the explicit
    pad into a "same" conv (see :func:`lce_sees_same`), the pad grows by one
    stride at the bottom/right, so the output is one larger and cannot pass LCE's
    test, and ``crop`` cuts the extra row and column off again.
    """
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilation, strict=True)]
    outs = [(n + pads[2 * i] + pads[2 * i + 1] - eff[i]) // stride[i] + 1
            for i, n in enumerate(in_hw)]
    trimmed = list(pads)
    for i, n in enumerate(in_hw):
        need = max(0, (outs[i] - 1) * stride[i] + eff[i] - (n + pads[2 * i]))
        trimmed[2 * i + 1] = min(pads[2 * i + 1], need)
    same = same_pads(*in_hw, kernel, stride, dilation)
    if pad_value == 0.0 and trimmed == same:
        return "SAME", trimmed, None
    fooled = all(lce_sees_same(trimmed[2 * i], trimmed[2 * i + 1], n, outs[i], stride[i])
                 for i, n in enumerate(in_hw))
    if pad_value == 0.0 and fooled:
        trimmed[1] += stride[0]
        trimmed[3] += stride[1]
        return "VALID", trimmed, (outs[0], outs[1])
    return "VALID", trimmed, None
