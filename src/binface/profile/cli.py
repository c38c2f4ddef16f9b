"""``binface profile``: complexity of one model, or a seed table, as text or JSON."""

from __future__ import annotations

import argparse
import json

from binface.errors import BinfaceError
from binface.profile.counter import Profile, profile


def _n(v: float) -> str:
    return f"{int(v):,}" if v else "-"


def render_profile(p: Profile, per_layer: bool = False) -> str:
    """A per-layer table (optional) and the totals of a profile, as text."""
    t = p.totals
    lines = []
    if per_layer:
        head = (f"{'layer':<40} {'type':<22} {'output':<14} {'in/w bits':>9} {'1-bit MACs':>13} "
                f"{'k-bit MACs':>11} {'32-bit MACs':>12} {'runtime-bin':>12} {'mm 1-bit':>11} "
                f"{'mm 32-bit':>11} {'params':>10} {'KiB':>9}")
        lines += [head, "-" * len(head)]
        for layer in p.layers:
            d = layer.to_dict()
            bits = (f"{d['input_bits']}/{d['weight_bits']}" if d["input_bits"] is not None
                    else "")
            shape = "x".join(str(s) for s in d["output_shape"]) if d["output_shape"] else ""
            params = d["params_1bit"] + d["params_kbit"] + d["params_32bit"]
            # a layer whose nominal 1-bit MACs do not all run as xor + popcount
            flag = "*" if d["macs_1bit"] and d["macs_runtime_binary"] != d["macs_1bit"] else " "
            lines.append(
                f"{d['name'][:40]:<40} {d['type'][:22]:<22} {shape:<14} {bits:>9} "
                f"{_n(d['macs_1bit']):>13} {_n(d['macs_kbit']):>11} {_n(d['macs_32bit']):>12} "
                f"{_n(d['macs_runtime_binary']):>12}{flag}{_n(d['macs_matmul_1bit']):>11} "
                f"{_n(d['macs_matmul_32bit']):>11} {_n(params):>10} "
                f"{d['memory_bytes'] / 1024:>9.2f}"
            )
        lines += ["", "* nominally 1-bit MACs (larq count) that do not all run as xor + popcount "
                  "(a float operand, or a 1x1 depthwise sign flip folded into the packing)",
                  "mm: activation x activation products (attention), 1-bit when both are +-1",
                  ""]
    h, w = p.input_size
    kbits = p.kbit_widths
    widths = f"  ({', '.join(str(b) for b in kbits)}-bit)" if kbits else ""
    lines += [
        f"{p.model_name} at {h}x{w}x3 (larq convention: MACs of conv and dense layers)",
        f"  1-bit MACs           {t['macs_1bit']:>16,}",
        f"  k-bit MACs           {t['macs_kbit']:>16,}{widths}",
        f"  32-bit MACs          {t['macs_32bit']:>16,}",
        f"  runtime-binary MACs  {t['macs_runtime_binary']:>16,}  (both operands +-1 when run)",
    ]
    if t["macs_matmul"]:
        lines.append(f"  matmul MACs          {t['macs_matmul']:>16,}  (activation x activation, "
                     "not in the larq count)")
        lines.append(f"    1-bit              {t['macs_matmul_1bit']:>16,}  (both operands +-1)")
        lines.append(f"    32-bit             {t['macs_matmul_32bit']:>16,}")
    lines += [
        f"  1-bit params         {t['params_1bit']:>16,}",
        f"  k-bit params         {t['params_kbit']:>16,}{widths}",
        f"  32-bit params        {t['params_32bit']:>16,}",
        f"  total params         {t['params_total']:>16,}",
        f"  weight memory        {t['memory_kib']:>16,.2f} KiB",
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.table and args.name:
        raise BinfaceError("give either a model name or --table, not both")
    if args.table == "binary":
        from binface.profile.tables import binary_table_rows, render_binary_table

        rows = binary_table_rows(args.input_size)
        print(json.dumps(rows, indent=2) if args.json else render_binary_table(rows), end="\n"
              if args.json else "")
        return 0
    if args.table == "float":
        try:
            from binface.profile.float_table import render_float_table
        except ImportError as exc:  # pragma: no cover - until the float zoo lands
            raise BinfaceError("the float table needs the float model zoo") from exc
        print(render_float_table(as_json=args.json), end="")
        return 0
    if not args.name:
        raise BinfaceError("name a model (see `binface models`) or use --table binary|float")

    from binface.models.loading import is_checkpoint_path, load_model

    if is_checkpoint_path(args.name):
        if args.backbone_only:
            raise BinfaceError("--backbone-only takes a model name, not a checkpoint")
        model = load_model(args.name).model
        label = str(args.name)
    else:
        from binface.models import create_model

        model = create_model(args.name, backbone_only=args.backbone_only)
        label = args.name + (" (backbone only)" if args.backbone_only else "")
    p = profile(model, args.input_size, name=label, precision=args.precision)
    if args.json:
        print(json.dumps(p.to_dict(per_layer=args.per_layer), indent=2))
    else:
        print(render_profile(p, per_layer=args.per_layer), end="")
    return 0
