"""Lower the traced IR to the packed engine's graph (numpy only; runs at export time).

1. Every quantized layer whose operands are both +-1 becomes ``pack`` (signs of
   its float input, with the halo its padding needs) + ``bconv`` / ``bdwconv``
   with bit-packed weights; a separable conv whose depthwise kernel is 1x1 is a
   sign flip per channel, so its pointwise part folds into one binary 1x1 conv.
   Quantized layers with a float operand become float ops.
2. Explicit pads merge into the following conv / max-pool.
3. Per-channel ops after a conv (bias, BatchNorm, scaling, PReLU / ReLU, a
   residual add, another activation) merge into the conv's epilogue.
4. A ``pack`` merges into the epilogue of the conv that makes its input (the
   activations stay packed between binary layers; the float is kept only if
   something else reads it), or absorbs a preceding BatchNorm (a threshold) or
   squeeze-excite product. ``pack(maxpool(x))`` becomes ``bmaxpool(pack(x))``.
"""

from __future__ import annotations

import numpy as np

from binface.runtime.errors import UnsupportedOpError
from binface.runtime.ir import IRGraph, Node
from binface.runtime.ops.layout import pack_bits

CONV_LIKE = ("bconv", "bdwconv", "conv", "ewise")


class _G:
    """Mutable view of an IR graph with consumer lookups."""

    def __init__(self, ir: IRGraph) -> None:
        self.nodes: list[Node] = list(ir.nodes)
        self.consts = ir.consts
        self.shapes = ir.shapes
        self.outputs = list(ir.outputs)
        self.n_new = 0

    def new_value(self, base: str, shape: list | None = None) -> str:
        self.n_new += 1
        name = f"{base}__{self.n_new}"
        if shape is not None:
            self.shapes[name] = shape
        return name

    def new_const(self, base: str, arr: np.ndarray) -> str:
        name = self.new_value(base)
        self.consts[name] = arr
        self.shapes[name] = list(arr.shape)
        return name

    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                out.setdefault(i, []).append(n)
        return out

    def is_const(self, name: str) -> bool:
        return name in self.consts


# ---------------------------------------------------------------- weight packing
def sign_scale(w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(w < 0, per-output-channel scale) when ``w`` is +-scale[o]; else None."""
    o = w.shape[0]
    a = np.abs(w.reshape(o, -1)).astype(np.float32)
    s = a[:, 0].copy()
    if not np.all(s > 0) or not np.allclose(a, s[:, None], rtol=1e-6, atol=0):
        return None
    return w < 0, s


def pack_conv_weight(neg: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Sign bits (O, Cg, kh, kw) -> packed [G, taps * WPG, Og] and tap sums [G, taps, Og]."""
    o, cg, kh, kw = neg.shape
    og = o // groups
    b = neg.reshape(groups, og, cg, kh, kw).transpose(0, 3, 4, 1, 2)  # G, kh, kw, Og, Cg
    words = pack_bits(b)  # G, kh, kw, Og, WPG
    wpg = words.shape[-1]
    packed = words.transpose(0, 1, 2, 4, 3).reshape(groups, kh * kw * wpg, og)
    corr = (cg - 2 * b.sum(axis=-1)).reshape(groups, kh * kw, og).astype(np.int32)
    return np.ascontiguousarray(packed), np.ascontiguousarray(corr)


def pack_window_weight(neg: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Sign bits (O, Cg, kh, kw) with Cg <= 32 -> [kh * chunks, G * Og] words of T taps each.

    T = 64 // Cg horizontally adjacent taps share one word (tap i at bit i * Cg), so
    a 5x5 conv on 16 channels per group reads 10 words per output instead of 25;
    also the per-chunk masks of the valid bits, and T.
    """
    o, cg, kh, kw = neg.shape
    og = o // groups
    t = 64 // cg
    nch = -(-kw // t)
    b = neg.reshape(groups, og, cg, kh, kw).transpose(0, 3, 4, 1, 2)  # G, kh, kw, Og, Cg
    full = np.zeros((groups, kh, nch * t, og, cg), bool)
    full[:, :, :kw] = b
    w = full.reshape(groups, kh, nch, t, og, cg).transpose(0, 1, 2, 4, 3, 5)
    words = pack_bits(w.reshape(groups, kh, nch, og, t * cg))[..., 0]  # G, kh, nch, Og
    masks = np.zeros(nch, np.uint64)
    for j in range(nch):
        nbits = min(t, kw - j * t) * cg
        masks[j] = np.uint64((1 << nbits) - 1) if nbits < 64 else ~np.uint64(0)
    # [kh * nch, G * Og]: all groups' outputs side by side
    lanes = words.transpose(1, 2, 0, 3).reshape(kh * nch, groups * og)
    return np.ascontiguousarray(lanes), masks, t


# ---------------------------------------------------------------- epilogues
def new_epilogue(c: int, a1=None, b1=None) -> dict:
    one, zero = np.ones(c, np.float32), np.zeros(c, np.float32)
    return {"a1": one.copy() if a1 is None else np.asarray(a1, np.float32).copy(),
            "b1": zero.copy() if b1 is None else np.asarray(b1, np.float32).copy(),
            "s1": one.copy(), "a2": one.copy(), "b2": zero.copy(), "s2": one.copy(),
            "stage": 0, "nres": 0}


def _identity(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a == 1) and np.all(b == 0))


def _per_channel(arr: np.ndarray, c: int, ndim: int) -> np.ndarray | None:
    """A constant broadcastable along the channel axis (1) of an ndim tensor as (C,)."""
    a = np.asarray(arr, np.float32)
    if a.ndim > ndim:
        return None
    shape = (1,) * (ndim - a.ndim) + a.shape
    if a.size == 1:
        return np.full(c, a.reshape(-1)[0], np.float32)
    if shape[1] == c and all(s == 1 for i, s in enumerate(shape) if i != 1):
        return a.reshape(c).astype(np.float32)
    return None


# ---------------------------------------------------------------- lowering
class Lowering:
    def __init__(self, ir: IRGraph, sources: dict[int, str] | None = None) -> None:
        self.ir = ir
        self.g = _G(ir)

    def run(self) -> dict:
        self.lower_qlayers()
        self.lower_convs()
        self.merge_pads()
        self.fuse_epilogues()
        self.pack_maxpool()
        self.fold_into_packs()
        self.to_ewise()
        self.fuse_epilogues()
        self.fuse_pools()
        self.cat_chains()
        self.cse_packs()
        self.fuse_packs()
        self.dce()
        return self.serialize()

    # -- 1. quantized layers
    def lower_qlayers(self) -> None:
        g = self.g
        out: list[Node] = []
        for n in g.nodes:
            if n.op == "qlayer":
                out.extend(self.lower_qlayer(n))
            elif n.op == "quant" and n.attrs["q"]["kind"] in ("pos", "neg", "dorefa"):
                out.append(n)
            else:
                out.append(n)
        g.nodes = out

    def lower_qlayer(self, n: Node) -> list[Node]:
        g = self.g
        a = n.attrs
        x, y = n.inputs[0], n.outputs[0]
        q = a["in_q"]
        binary_in = q["kind"] in ("pos", "neg")
        shape_in, shape_out = g.shapes[x], g.shapes[y]
        nodes: list[Node] = []
        if "in_shift" in a:  # RSign: sign(x + shift)
            c = np.asarray(g.consts[a["in_shift"]], np.float32).reshape(-1)
            x2 = g.new_value(x, shape_in)
            nodes.append(Node("affine", [x], [x2], {
                "scale": g.new_const("one", np.ones_like(c)), "shift": a["in_shift"], "axis": 1}))
            x = x2
        bias = g.consts[a["bias"]].astype(np.float32) if "bias" in a else None
        src = a.get("source")
        if a["layer"] in ("conv", "linear"):
            w = g.consts[a["weight"]].astype(np.float32)
            linear = a["layer"] == "linear"
            if linear:
                w = w.reshape(w.shape[0], w.shape[1], 1, 1)
            ss = sign_scale(w) if binary_in else None
            if ss is not None and not linear and w.shape[1] == 1 and a["groups"] > 1:
                # depthwise: per-channel sums are not word-parallel
                neg, scale = ss
                nodes += self.binary_depthwise(x, y, neg, scale, w.shape[0] // shape_in[1], a,
                                               q["kind"], shape_in, shape_out, src)
                if bias is not None:
                    nodes[-1].attrs["epi"]["b1"] = bias.copy()
                return nodes
            if ss is not None:
                neg, scale = ss
                groups = 1 if linear else a["groups"]
                return nodes + self.binary_conv(x, y, neg, scale, bias, groups, a, q["kind"],
                                                shape_in, shape_out, linear, src)
            xq = self.quant(x, q, shape_in, nodes)
            if linear:
                attrs = {"weight": a["weight"]}
                if bias is not None:
                    attrs["bias"] = a["bias"]
                return nodes + [Node("linear", [xq], [y], attrs)]
            attrs = {k: a[k] for k in ("weight", "groups", "pads", "pad_value")}
            attrs.update(stride=a["stride"], dilation=a["dilation"])
            if bias is not None:
                attrs["bias"] = a["bias"]
            return nodes + [Node("conv", [xq], [y], attrs)]
        # separable
        dw = g.consts[a["dw_weight"]].astype(np.float32)  # (C*M, 1, kh, kw)
        pw = g.consts[a["pw_weight"]].astype(np.float32)  # (O, C*M, 1, 1)
        cin = shape_in[1]
        mult = dw.shape[0] // cin
        dss = sign_scale(dw) if binary_in else None
        pss = sign_scale(pw) if dss is not None else None
        kh, kw = a["kernel"]
        mid_shape = [shape_out[0], dw.shape[0], shape_out[2], shape_out[3]]
        if dss is not None and pss is not None and kh == kw == 1 and mult == 1 \
                and np.allclose(dss[1], dss[1][0], rtol=1e-6):
            # a 1x1 depthwise of +-1 inputs and weights is a sign flip per channel: the
            # pointwise product sees +-1 operands, one binary 1x1 conv
            neg = pss[0][:, :, 0, 0] ^ dss[0][:, 0, 0, 0][None, :]
            scale = pss[1] * dss[1][0]
            return nodes + self.binary_conv(x, y, neg[:, :, None, None], scale, bias, 1, a,
                                            q["kind"], shape_in, shape_out, False, src)
        mid = g.new_value(y + "_dw", mid_shape)
        if dss is not None:
            nodes += self.binary_depthwise(x, mid, dss[0], dss[1], mult, a, q["kind"], shape_in,
                                           mid_shape, src)
        else:
            xq = self.quant(x, q, shape_in, nodes)
            nodes.append(Node("conv", [xq], [mid], {
                "weight": a["dw_weight"], "groups": cin, "pads": a["pads"],
                "pad_value": a["pad_value"], "stride": a["stride"], "dilation": a["dilation"]}))
        attrs = {"weight": a["pw_weight"], "groups": 1, "pads": [0, 0, 0, 0], "pad_value": 0.0,
                 "stride": [1, 1], "dilation": [1, 1]}
        if bias is not None:
            attrs["bias"] = a["bias"]
        nodes.append(Node("conv", [mid], [y], attrs))
        return nodes

    def quant(self, x: str, q: dict, shape: list, nodes: list[Node]) -> str:
        if q["kind"] == "none":
            return x
        xq = self.g.new_value(x + "_q", shape)
        nodes.append(Node("quant", [x], [xq], {"q": q}))
        return xq

    def binary_conv(self, x, y, neg, scale, bias, groups, a, mode, shape_in, shape_out, linear,
                    src) -> list[Node]:
        g = self.g
        o, cg, kh, kw = neg.shape
        packed_w, corr = pack_conv_weight(neg, groups)
        if linear:
            pads, in_hw, out_hw = [0, 0, 0, 0], [1, 1], [1, 1]
            kernel, stride, dil, pad_value = [1, 1], [1, 1], [1, 1], 1.0
        else:
            pads, kernel, stride, dil = a["pads"], a["kernel"], a["stride"], a["dilation"]
            in_hw, out_hw, pad_value = shape_in[2:4], shape_out[2:4], a["pad_value"]
        p = g.new_value(x + "_bits")
        pack = Node("pack", [x], [p], {"mode": mode, "groups": groups, "cg": cg, "pads": pads,
                                       "linear": linear})
        attrs = {"weight": g.new_const("bw", packed_w), "groups": groups, "og": o // groups,
                 "cg": cg, "kernel": list(kernel), "stride": list(stride),
                 "dilation": list(dil), "in_hw": list(in_hw), "pads": list(pads),
                 "out_hw": list(out_hw), "out_shape": shape_out, "linear": linear,
                 "epi": new_epilogue(o, scale, bias), "source": src, "mode": mode}
        if pad_value == 0.0 and any(pads):
            attrs["corr"] = g.new_const("corr", corr)
        if not linear and cg <= 32 and kw >= 2 and list(dil) == [1, 1]:
            # few channels per group: pack T adjacent taps per word ("windows")
            wwin, masks, t = pack_window_weight(neg, groups)
            attrs.update(weight=g.new_const("bw", wwin), win=t,
                         masks=g.new_const("mask", masks))
        return [pack, Node("bconv", [p], [y], attrs)]

    def binary_depthwise(self, x, y, neg, scale, mult, a, mode, shape_in, shape_out,
                         src) -> list[Node]:
        g = self.g
        cout, _, kh, kw = neg.shape
        wb = np.ascontiguousarray(neg.reshape(cout, kh * kw).T.astype(np.uint8))
        p = g.new_value(x + "_bits")
        pack = Node("pack", [x], [p], {"mode": mode, "groups": 1, "cg": shape_in[1],
                                       "pads": a["pads"], "linear": False})
        attrs = {"weight": g.new_const("bdw", wb), "mult": mult, "kernel": a["kernel"],
                 "stride": a["stride"], "dilation": a["dilation"], "in_hw": shape_in[2:4],
                 "pads": a["pads"], "out_hw": shape_out[2:4], "out_shape": shape_out,
                 "pad_value": a["pad_value"], "epi": new_epilogue(cout, scale), "source": src,
                 "mode": mode}
        return [pack, Node("bdwconv", [p], [y], attrs)]

    # -- float convs: engine weight layouts
    def lower_convs(self) -> None:
        g = self.g
        for n in g.nodes:
            if n.op != "conv" or "epi" in n.attrs:
                continue
            a = n.attrs
            w = np.asarray(g.consts[a["weight"]], np.float32)
            o, cg, kh, kw = w.shape
            groups = int(a["groups"])
            cin = cg * groups
            shape_out = g.shapes[n.outputs[0]]
            if len(shape_out) != 4:
                raise UnsupportedOpError("conv on a non-4-D tensor is not supported")
            bias = g.consts[a["bias"]].astype(np.float32) if "bias" in a else None
            if cg == 1 and groups > 1:
                wl = np.ascontiguousarray(w[:, 0].transpose(1, 2, 0))  # kh, kw, O
                a["depthwise"] = True
                a["mult"] = o // cin
            else:
                og = o // groups
                wl = np.ascontiguousarray(w.reshape(groups, og, cg, kh, kw)
                                          .transpose(0, 3, 4, 2, 1).reshape(groups,
                                                                            kh * kw * cg, og))
            a["weight"] = g.new_const("cw", wl)
            a.update(kernel=[kh, kw], cin=cin, out_hw=shape_out[2:4], out_shape=shape_out,
                     epi=new_epilogue(o, None, bias))
            a.pop("bias", None)

    # -- 2. explicit pads into the next conv / max-pool
    def merge_pads(self) -> None:
        g = self.g
        cons = g.consumers()
        keep: list[Node] = []
        for n in g.nodes:
            if n.op == "pad" and len(n.attrs["pads"]) == 4 and n.outputs[0] not in g.outputs:
                users = cons.get(n.outputs[0], [])
                if len(users) == 1 and self._absorb_pad(n, users[0]):
                    continue
            keep.append(n)
        g.nodes = keep

    def _absorb_pad(self, pad: Node, user: Node) -> bool:
        left, right, top, bottom = pad.attrs["pads"]
        value = pad.attrs["value"]
        if min(left, right, top, bottom) < 0:
            return False
        if user.op == "conv" and not any(user.attrs["pads"]):
            user.attrs["pads"] = [top, bottom, left, right]
            user.attrs["pad_value"] = value
        elif user.op == "maxpool" and value == float("-inf") and not any(user.attrs["pads"]):
            user.attrs["pads"] = [top, bottom, left, right]
        else:
            return False
        user.inputs[0] = pad.inputs[0]
        return True

    # -- 3. epilogues
    def fuse_epilogues(self) -> None:
        g = self.g
        changed = True
        while changed:
            changed = False
            cons = g.consumers()
            prod = g.producers()
            order = {id(n): i for i, n in enumerate(g.nodes)}
            for n in g.nodes:
                if n.op not in CONV_LIKE:
                    continue
                y = n.outputs[0]
                users = cons.get(y, [])
                if len(users) != 1 or y in g.outputs:
                    continue
                if self._absorb(n, users[0], prod, order):
                    g.nodes.remove(users[0])
                    changed = True
                    break

    def _absorb(self, n: Node, u: Node, prod: dict, order: dict) -> bool:
        g = self.g
        e = n.attrs["epi"]
        y = n.outputs[0]
        shape = g.shapes[y]
        c = shape[1] if len(shape) in (2, 4) else None
        if c is None or (len(shape) == 2 and not n.attrs.get("linear")) or len(u.outputs) != 1:
            return False
        if len(shape) == 4 and n.attrs.get("linear"):
            return False
        nd = len(shape)
        scale = shift = slope = None
        residual = None
        if u.op == "affine" and u.attrs.get("axis", 1) == 1:
            scale = np.asarray(g.consts[u.attrs["scale"]], np.float32).reshape(-1)
            shift = np.asarray(g.consts[u.attrs["shift"]], np.float32).reshape(-1)
            if scale.size != c:
                return False
        elif u.op == "binary" and u.attrs["fn"] in ("add", "sub", "mul", "div"):
            other = u.inputs[1] if u.inputs[0] == y else u.inputs[0]
            first = u.inputs[0] == y
            fn = u.attrs["fn"]
            if g.is_const(other):
                k = _per_channel(g.consts[other], c, nd)
                if k is None:
                    return False
                ones, zeros = np.ones(c, np.float32), np.zeros(c, np.float32)
                if fn == "add":
                    scale, shift = ones, k
                elif fn == "sub":
                    scale, shift = (ones, -k) if first else (-ones, k)
                elif fn == "mul":
                    scale, shift = k, zeros
                elif fn == "div" and first:
                    scale, shift = (np.float32(1) / k).astype(np.float32), zeros
                else:
                    return False
            elif fn == "add" and g.shapes.get(other) == shape and u.inputs[0] != u.inputs[1]:
                p = prod.get(other)
                if p is not None and order[id(p)] > order[id(n)]:
                    return False
                residual = other
            else:
                return False
        elif u.op == "unary" and u.attrs["fn"] == "relu":
            slope = np.zeros(c, np.float32)
        elif u.op == "prelu" and u.attrs.get("axis", 1) == 1:
            s = np.asarray(g.consts[u.attrs["slope"]], np.float32).reshape(-1)
            if s.size not in (1, c):
                return False
            slope = np.full(c, s[0], np.float32) if s.size == 1 else s
        else:
            return False
        st = e["stage"]
        if scale is not None:
            # keep PyTorch's rounding where possible: each affine in its own fma slot
            if st == 0 and _identity(e["a1"], e["b1"]):
                e["a1"], e["b1"] = scale.copy(), shift.copy()
            elif st in (0, 1) and _identity(e["a2"], e["b2"]):
                e["a2"], e["b2"], e["stage"] = scale.copy(), shift.copy(), 1
            elif st == 1:
                e["a2"], e["b2"] = e["a2"] * scale, e["b2"] * scale + shift
            else:
                return False
        elif slope is not None:
            if st == 0:
                e["s1"], e["stage"] = slope, 1
            elif st in (1, 2):
                e["s2"], e["stage"] = slope, 3
            else:
                return False
        else:
            if st > 2 or e["nres"] >= 2:
                return False
            e["nres"] += 1
            e["stage"] = 2
            n.inputs.append(residual)
        n.outputs[0] = u.outputs[0]
        return True

    def to_ewise(self) -> None:
        """Per-channel ops left on 4-D tensors become one-pass ``ewise`` epilogues."""
        g = self.g
        for n in g.nodes:
            shape = g.shapes.get(n.outputs[0]) if n.outputs else None
            if shape is None or len(shape) != 4 or len(n.outputs) != 1:
                continue
            c = shape[1]
            epi = None
            if n.op == "affine" and n.attrs.get("axis", 1) == 1:
                scale = np.asarray(g.consts[n.attrs["scale"]], np.float32).reshape(-1)
                shift = np.asarray(g.consts[n.attrs["shift"]], np.float32).reshape(-1)
                if scale.size == c and shift.size == c:
                    epi = new_epilogue(c, scale, shift)
            elif n.op == "unary" and n.attrs["fn"] == "relu":
                epi = new_epilogue(c)
                epi["s1"], epi["stage"] = np.zeros(c, np.float32), 1
            elif n.op == "prelu" and n.attrs.get("axis", 1) == 1:
                sl = np.asarray(g.consts[n.attrs["slope"]], np.float32).reshape(-1)
                if sl.size in (1, c):
                    epi = new_epilogue(c)
                    epi["s1"] = np.full(c, sl[0], np.float32) if sl.size == 1 else sl.copy()
                    epi["stage"] = 1
            if epi is not None and not g.is_const(n.inputs[0]):
                n.op = "ewise"
                n.inputs = n.inputs[:1]
                n.attrs = {"epi": epi, "out_shape": shape}

    def fuse_pools(self) -> None:
        """A per-channel chain right before / after a pool runs inside the pool's loop."""
        g = self.g
        changed = True
        while changed:
            changed = False
            cons = g.consumers()
            prod = g.producers()
            for n in g.nodes:
                if n.op not in ("maxpool", "avgpool"):
                    continue
                src = prod.get(n.inputs[0])
                if "pre_epi" not in n.attrs and _plain_ewise(src) and \
                        len(cons.get(src.outputs[0], [])) == 1 and src.outputs[0] not in g.outputs:
                    n.attrs["pre_epi"] = src.attrs["epi"]
                    n.inputs[0] = src.inputs[0]
                    g.nodes.remove(src)
                    changed = True
                    break
                users = cons.get(n.outputs[0], [])
                if "post_epi" not in n.attrs and len(users) == 1 and _plain_ewise(users[0]) \
                        and n.outputs[0] not in g.outputs:
                    n.attrs["post_epi"] = users[0].attrs["epi"]
                    n.outputs[0] = users[0].outputs[0]
                    g.nodes.remove(users[0])
                    changed = True
                    break

    def cat_chains(self) -> None:
        """Mark DenseNet-style chains cat(cat(cat(x, a), b), c) on channels: one buffer."""
        g = self.g
        prod = g.producers()
        nxt: dict[int, Node] = {}
        cats = [n for n in g.nodes if n.op == "cat" and len(n.inputs) == 2
                and len(g.shapes[n.outputs[0]]) == 4 and n.attrs["dim"] % 4 == 1
                and all(isinstance(d, int) for d in g.shapes[n.outputs[0]][1:])]
        ids = {id(n) for n in cats}
        for n in cats:
            p = prod.get(n.inputs[0])
            if p is not None and id(p) in ids and p.outputs[0] not in n.inputs[1:]:
                nxt[id(p)] = n
        heads = [n for n in cats if not (prod.get(n.inputs[0]) is not None
                                         and id(prod.get(n.inputs[0])) in nxt
                                         and nxt[id(prod.get(n.inputs[0]))] is n)]
        for k, head in enumerate(heads):
            chain = [head]
            while id(chain[-1]) in nxt:
                chain.append(nxt[id(chain[-1])])
            if len(chain) < 2:
                continue
            total = g.shapes[chain[-1].outputs[0]][1]
            for i, n in enumerate(chain):
                n.attrs.update(chain=k, total=total, head=i == 0,
                               offset=g.shapes[n.inputs[0]][1])

    # -- 4. packs
    def pack_maxpool(self) -> None:
        """pack(maxpool(x)) -> bmaxpool(pack(x)): max commutes with a monotone sign."""
        g = self.g
        cons = g.consumers()
        prod = g.producers()
        for n in list(g.nodes):
            if n.op != "pack" or n.attrs.get("linear") or len(n.inputs) != 1:
                continue
            mp = prod.get(n.inputs[0])
            if mp is None or mp.op != "maxpool" or len(cons.get(mp.outputs[0], [])) != 1:
                continue
            if mp.attrs.get("dilation", [1, 1]) != [1, 1] or mp.outputs[0] in g.outputs:
                continue
            src = prod.get(mp.inputs[0])
            if src is None or src.op not in CONV_LIKE:
                continue
            shp_in = g.shapes[mp.inputs[0]]
            shp_out = g.shapes[mp.outputs[0]]
            p0 = g.new_value(mp.inputs[0] + "_bits")
            pre = Node("pack", [mp.inputs[0]], [p0], {**n.attrs, "pads": [0, 0, 0, 0]})
            bmp = Node("bmaxpool", [p0], [n.outputs[0]], {
                "kernel": mp.attrs["kernel"], "stride": mp.attrs["stride"],
                "pads": mp.attrs["pads"], "in_hw": shp_in[2:4], "out_hw": shp_out[2:4],
                "in_pads": [0, 0, 0, 0], "out_pads": n.attrs["pads"]})
            j = g.nodes.index(n)
            g.nodes[j:j + 1] = [pre, bmp]
            g.nodes.remove(mp)

    def fold_into_packs(self) -> None:
        """A BatchNorm (affine) or an SE gate product read only by a pack goes into it."""
        g = self.g
        changed = True
        while changed:
            changed = False
            cons = g.consumers()
            prod = g.producers()
            for n in g.nodes:
                if n.op != "pack" or len(n.inputs) != 1:
                    continue
                src = prod.get(n.inputs[0])
                if src is None or len(cons.get(src.outputs[0], [])) != 1 \
                        or src.outputs[0] in g.outputs:
                    continue
                c = n.attrs["groups"] * n.attrs["cg"]
                if src.op == "affine" and "scale" not in n.attrs and src.attrs.get("axis") == 1 \
                        and not n.attrs["linear"] and len(g.shapes[src.outputs[0]]) == 4:
                    n.attrs["scale"] = src.attrs["scale"]
                    n.attrs["shift"] = src.attrs["shift"]
                    if np.asarray(g.consts[n.attrs["scale"]]).size != c:
                        n.attrs.pop("scale")
                        n.attrs.pop("shift")
                        continue
                    n.inputs = [src.inputs[0]]
                elif src.op == "binary" and src.attrs["fn"] == "mul" and not n.attrs["linear"] \
                        and "scale" not in n.attrs:
                    a, b = src.inputs
                    sa, sb = g.shapes.get(a), g.shapes.get(b)
                    if g.is_const(a) or g.is_const(b) or sa is None or sb is None:
                        continue
                    full = g.shapes[src.outputs[0]]
                    if sa == full and sb == full[:2] + [1, 1]:
                        n.inputs = [a, b]
                    elif sb == full and sa == full[:2] + [1, 1]:
                        n.inputs = [b, a]
                    else:
                        continue
                else:
                    continue
                g.nodes.remove(src)
                changed = True
                break

    def cse_packs(self) -> None:
        g = self.g
        seen: dict[str, str] = {}
        rename: dict[str, str] = {}
        keep = []
        for n in g.nodes:
            for k, i in enumerate(n.inputs):
                n.inputs[k] = rename.get(i, i)
            if n.op == "pack":
                key = repr((n.inputs, sorted(n.attrs.items())))
                if key in seen:
                    rename[n.outputs[0]] = seen[key]
                    continue
                seen[key] = n.outputs[0]
            keep.append(n)
        g.nodes = keep

    def fuse_packs(self) -> None:
        """Let the conv that makes a pack's input write the packed signs in its epilogue."""
        g = self.g
        cons = g.consumers()
        prod = g.producers()
        for n in list(g.nodes):
            if n.op != "pack" or len(n.inputs) != 1 or "scale" in n.attrs:
                continue
            src = prod.get(n.inputs[0])
            if src is None or src.op not in CONV_LIKE or "pack" in src.attrs:
                continue
            if bool(src.attrs.get("linear")) != bool(n.attrs["linear"]):
                continue
            if src.outputs[0] != n.inputs[0]:
                continue
            src.attrs["pack"] = {"mode": n.attrs["mode"], "groups": n.attrs["groups"],
                                 "cg": n.attrs["cg"], "pads": list(n.attrs["pads"])}
            src.outputs.append(n.outputs[0])
            g.nodes.remove(n)
            others = [u for u in cons.get(n.inputs[0], []) if u is not n]
            if not others and n.inputs[0] not in g.outputs:
                src.attrs["out_float"] = False
                src.attrs["float_name"] = src.outputs.pop(0)

    def dce(self) -> None:
        g = self.g
        live = set(g.outputs)
        keep = []
        for n in reversed(g.nodes):
            if any(o in live for o in n.outputs):
                keep.append(n)
                live.update(n.inputs)
        g.nodes = keep[::-1]

    # -- serialise
    def serialize(self) -> dict:
        g = self.g
        tensors: dict[str, np.ndarray] = {}
        consts_used: list[str] = []
        nodes = []
        shapes: dict[str, list] = {}
        tensor_keys = ("weight", "corr", "scale", "shift", "slope", "bias", "masks")
        for i, n in enumerate(g.nodes):
            attrs = dict(n.attrs)
            name = f"{n.op}{i}"
            if n.op == "linear":  # stored [K, O] for x @ W
                w = np.asarray(g.consts[attrs["weight"]], np.float32)
                key = attrs["weight"] + "_t"
                tensors[key] = np.ascontiguousarray(w.T)
                attrs["weight"] = key
            for k in tensor_keys:
                if k in attrs and isinstance(attrs[k], str) and attrs[k] not in tensors:
                    tensors[attrs[k]] = np.ascontiguousarray(g.consts[attrs[k]])
            if n.op in ("maxpool", "avgpool"):
                attrs["out_hw"] = g.shapes[n.outputs[0]][2:4]
            if "epi" in attrs:
                e = attrs.pop("epi")
                key = name + ".ep"
                tensors[key] = _ep_array(e)
                attrs["ep"] = key
                attrs["nres"] = e["nres"]
            for k in ("pre_epi", "post_epi"):
                if k in attrs:
                    key = f"{name}.{k[:-4]}_ep"
                    tensors[key] = _ep_array(attrs.pop(k))
                    attrs[k[:-4] + "_ep"] = key
            if n.op == "quant" and "shift" in attrs:
                tensors[attrs["shift"]] = g.consts[attrs["shift"]]
            for inp in n.inputs:
                if g.is_const(inp) and inp not in consts_used:
                    consts_used.append(inp)
                    tensors[inp] = np.ascontiguousarray(np.asarray(g.consts[inp], np.float32))
            for v in list(n.inputs) + list(n.outputs):
                if v in g.shapes:
                    shapes[v] = g.shapes[v]
            nodes.append({"op": n.op, "name": name, "in": list(n.inputs),
                          "out": list(n.outputs), "attrs": _jsonable(attrs)})
        for o in g.outputs:
            if g.is_const(o) and o not in consts_used:
                consts_used.append(o)
                tensors[o] = np.asarray(g.consts[o], np.float32)
        graph = {"input": self.ir.input, "input_shape": g.shapes[self.ir.input],
                 "outputs": g.outputs, "batch_dynamic": self.ir.batch_dynamic,
                 "consts": consts_used, "nodes": nodes, "shapes": shapes}
        return {"graph": graph, "tensors": tensors}


def _plain_ewise(n: Node | None) -> bool:
    """An ``ewise`` node with no residual input and no packed output."""
    return (n is not None and n.op == "ewise" and n.attrs["epi"]["nres"] == 0
            and "pack" not in n.attrs and len(n.outputs) == 1)


def _ep_array(e: dict) -> np.ndarray:
    return np.stack([e["a1"], e["b1"], e["s1"], e["a2"], e["b2"], e["s2"]]).astype(np.float32)


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, float) and v != v:
        return None
    return v


def lower(ir: IRGraph) -> tuple[dict, dict[str, np.ndarray]]:
    """IR graph -> (engine graph JSON, tensors)."""
    out = Lowering(ir).run()
    return out["graph"], out["tensors"]
