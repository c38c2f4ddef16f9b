"""``binface eval``: a checkpoint on verification packs, with reports and a ROC plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from binface.cli_args import positive_int
from binface.errors import BinfaceError
from binface.fileio import OVERWRITE_FLAG, check_outputs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="verification accuracy of a checkpoint on .bin packs",
        description="Embed every image of each pack (flip test, batches), score the pairs with "
        "the insightface 10-fold protocol (or another, named), print a table and write "
        "report.json, report.md and roc.png. Each pack's sha256 is recorded.")
    p.add_argument("checkpoint", help="a binface checkpoint (.pt), or an .onnx file (float or "
                   "int8, run by ONNX Runtime on the CPU)")
    p.add_argument("--pack", action="append", required=True, metavar="PACK.bin",
                   help="verification pack; repeat for several")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--no-flip", action="store_true", help="score single embeddings")
    p.add_argument("--protocol", default="insightface",
                   choices=["insightface", "best_threshold", "facexzoo"])
    p.add_argument("--max-pairs", type=positive_int, default=None,
                   help="score a fold-balanced subset of this many pairs per pack")
    p.add_argument("--out", default=None, help="report folder (default: eval/ beside the "
                   "checkpoint)")
    p.add_argument(OVERWRITE_FLAG, action="store_true",
                   help="replace report.json, report.md and roc.png if they exist")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from binface.eval.report import (
        plot_roc,
        results_table,
        write_report_json,
        write_report_markdown,
    )
    from binface.eval.run import evaluate_pack, load_eval_pack
    from binface.models.loading import load_checkpoint, model_from_checkpoint

    ckpt_path = Path(args.checkpoint)
    out = Path(args.out) if args.out else ckpt_path.parent / "eval"
    reports = [out / "report.json", out / "report.md", out / "roc.png"]
    check_outputs(reports, inputs=[ckpt_path, *args.pack], overwrite=args.overwrite)
    if ckpt_path.suffix == ".onnx":
        from binface.eval.run import OnnxEmbedder

        if not ckpt_path.is_file():
            raise BinfaceError(f"ONNX model not found: {ckpt_path}")
        model = OnnxEmbedder(ckpt_path)
        ck = {"model": model.model_name, "step": None}
    else:
        ck = load_checkpoint(ckpt_path)
        model = model_from_checkpoint(ck, where=str(ckpt_path))
    rows = []
    with torch.no_grad():
        for path in args.pack:
            pack = load_eval_pack(path, args.max_pairs)
            r = evaluate_pack(model, pack, args.batch_size, flip=not args.no_flip,
                              protocol=args.protocol, progress=f"{pack.name}")
            r["model"] = ck["model"]
            rows.append(r)
    meta = {"checkpoint": str(ckpt_path), "model": ck["model"], "step": ck.get("step"),
            "protocol": args.protocol, "flip": not args.no_flip}
    write_report_json(rows, out / "report.json", meta)
    write_report_markdown(rows, out / "report.md", f"Verification of {ckpt_path.name}", meta)
    plot_roc(rows, out / "roc.png", f"{ck['model']} ({ckpt_path.name})")
    print(results_table(rows), end="")
    print(f"reports: {out / 'report.json'}, {out / 'report.md'}, {out / 'roc.png'}")
    return 0
