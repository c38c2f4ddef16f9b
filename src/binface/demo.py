"""``binface demo``: the seed paper's question, end to end, on the built-in synthetic faces.

1. Generate (or reuse from the cache) the synthetic face-identity benchmark: a
   training ``.rec`` and three verification packs (synth LFW, CFP-FP, AgeDB-30).
2. Train a float MobileFaceNet (the teacher), BinaryFaceNet from scratch, and
   BinaryFaceNet distilled from the teacher, all with ArcFace.
3. Verify all three on the three packs (flip test, insightface 10-fold protocol on a
   fold-balanced subset of pairs, said in the table) and print one table with
   accuracy, MACs by precision and memory; write the reports and plots.

Sized for 2 CPU cores: about 20 minutes in full, under 3 with ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from binface.errors import BinfaceError
from binface.fileio import write_text, write_with


@dataclass(frozen=True)
class Plan:
    """Sizes of one demo run."""

    identities: int
    images_per_identity: int
    pack_pairs: int | None  # pairs generated per pack; None: the real 6000 / 7000 / 6000
    eval_pairs: int  # pairs scored per pack
    batch_size: int
    teacher_steps: int
    student_steps: int
    difficulty: float = 1.0


# BinaryFaceNet trains at about 6 images/s on 2 cores in PyTorch (float emulation of its
# binary layers at 112x112x64), MobileFaceNet at about 25: the full plan fits 20 minutes
FULL = Plan(identities=300, images_per_identity=20, pack_pairs=None, eval_pairs=600,
            batch_size=32, teacher_steps=160, student_steps=45)
QUICK = Plan(identities=60, images_per_identity=8, pack_pairs=100, eval_pairs=100,
             batch_size=32, teacher_steps=10, student_steps=8)

PACKS = ("synth_lfw", "synth_cfp_fp", "synth_agedb_30")
CACHE_VERSION = 2  # bump when the generator's output changes


def cache_dir() -> Path:
    root = os.environ.get("BINFACE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "binface")
    return Path(root)


def synth_data(plan: Plan, seed: int, data: Path | None = None) -> Path:
    """The benchmark folder for ``plan``: reused if complete, else generated."""
    from binface.data import synth

    if data is None:
        key = (f"synth-v{CACHE_VERSION}-{plan.identities}x{plan.images_per_identity}-"
               f"p{plan.pack_pairs or 'real'}-d{plan.difficulty:g}-s{seed}")
        data = cache_dir() / key
    done = data / "COMPLETE"
    if done.is_file():
        print(f"[demo] reusing the synthetic benchmark in {data}")
        return data
    print(f"[demo] generating the synthetic benchmark in {data} "
          f"({plan.identities} identities x {plan.images_per_identity} images, "
          f"{plan.pack_pairs or '6000 / 7000 / 6000'} pairs per pack)")
    synth.generate(data, identities=plan.identities,
                   images_per_identity=plan.images_per_identity, seed=seed,
                   difficulty=plan.difficulty, pairs=plan.pack_pairs)
    write_text(done, json.dumps(asdict(plan)) + "\n")
    return data


def _train(name: str, out: Path, data: Path, overrides: list[str]) -> Path:
    from binface.train.config import load_config
    from binface.train.loop import Trainer

    cfg = load_config(None, [f"output={out / name}", f"data.train={data / 'train.rec'}",
                             *overrides])
    trainer = Trainer(cfg, overwrite=True)
    trainer.fit()
    return out / name / "last.pt"


def run_demo(out: Path, quick: bool = False, seed: int = 0, data: Path | None = None,
             plan: Plan | None = None, latency: bool = True) -> dict:
    """Run the demo; returns the table rows and writes the reports into ``out``."""
    import torch

    from binface.eval.report import plot_roc, write_report_json, write_report_markdown
    from binface.eval.run import evaluate_pack, load_eval_pack
    from binface.models import model_info
    from binface.models.loading import load_checkpoint, model_from_checkpoint
    from binface.profile import profile

    plan = plan or (QUICK if quick else FULL)
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = synth_data(plan, seed, data)
    for p in PACKS:
        if not (data / f"{p}.bin").is_file():
            raise BinfaceError(f"{data} lacks {p}.bin: not a complete synthetic benchmark")

    bs = plan.batch_size
    common = [f"train.batch_size={bs}", f"train.seed={seed}", "train.log_every=5"]
    runs = {}
    # ArcFace with a short-schedule margin (m = 0.3): a few hundred steps from scratch
    # do not converge under the full m = 0.5 of the MS1M recipe
    print("[demo] 1/3 training the float teacher: mobilefacenet")
    runs["mobilefacenet (teacher)"] = _train("teacher_mobilefacenet", out, data, [
        *common, "model=mobilefacenet", "optim.name=sgd", "optim.lr=0.1",
        "optim.weight_decay=5e-4", "head.s=32", "head.m=0.3",
        f"schedule.warmup_epochs={_epochs(plan, max(1, plan.teacher_steps // 10))}",
        f"train.epochs={_epochs(plan, plan.teacher_steps)}"])
    student = [*common, "model=binaryfacenet", "optim.name=adam", "optim.lr=0.002",
               "optim.weight_decay=0", "head.s=16", "head.m=0.3",
               f"schedule.warmup_epochs={_epochs(plan, max(1, plan.student_steps // 20))}",
               f"train.epochs={_epochs(plan, plan.student_steps)}"]
    print("[demo] 2/3 training binaryfacenet from scratch")
    runs["binaryfacenet (scratch)"] = _train("binaryfacenet_scratch", out, data, student)
    print("[demo] 3/3 training binaryfacenet distilled from the teacher")
    runs["binaryfacenet (distilled)"] = _train("binaryfacenet_distilled", out, data, [
        *student, f"teacher={runs['mobilefacenet (teacher)']}", "distill.cosine=4.0",
        "distill.logit_kd=1.0"])

    print(f"[demo] verifying on {plan.eval_pairs} pairs of each pack (flip test)")
    packs = [load_eval_pack(data / f"{p}.bin", plan.eval_pairs) for p in PACKS]
    rows, results = [], []
    for label, ckpt_path in runs.items():
        ck = load_checkpoint(ckpt_path)
        model = model_from_checkpoint(ck)
        backbone_cost = profile(model, name=ck["model"]).totals
        row = {"model": label, "family": model_info(ck["model"]).family,
               "macs_1bit": backbone_cost["macs_1bit"], "macs_32bit": backbone_cost["macs_32bit"],
               "macs_runtime_binary": backbone_cost["macs_runtime_binary"],
               "memory_kib": backbone_cost["memory_kib"], "packs": {}}
        for pack in packs:
            with torch.no_grad():
                r = evaluate_pack(model, pack, batch_size=32, progress=f"{label} {pack.name}")
            r["model"] = label
            results.append(r)
            row["packs"][pack.name] = {"accuracy": r["accuracy"], "std": r["std"]}
        if latency:
            row["latency_ms"] = _latency(ckpt_path)
        rows.append(row)

    elapsed = time.perf_counter() - t_start
    meta = {"mode": "quick" if quick else "full", "plan": json.dumps(asdict(plan)),
            "data": str(data), "eval pairs per pack": plan.eval_pairs,
            "protocol": "insightface 10-fold, flip test", "minutes": round(elapsed / 60, 1)}
    table = demo_table(rows, plan)
    write_text(out / "table.txt", table)
    write_report_json(results, out / "report.json", meta)
    write_report_markdown(results, out / "report.md", "binface demo", meta)
    write_text(out / "demo.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    plot_roc(results, out / "roc.png", "binface demo: synthetic benchmark")
    plot_accuracy_vs_cost(rows, out / "accuracy_vs_macs.png")
    print(table, end="")
    print(f"[demo] done in {elapsed / 60:.1f} min; reports and plots in {out}")
    return {"rows": rows, "meta": meta}


def _latency(checkpoint: Path) -> dict[str, float]:
    """Median single-image latency (1 thread) in PyTorch, ONNX Runtime and the packed engine."""
    from binface.runtime.bench import run_bench

    print(f"[demo] timing {checkpoint.parent.name} in torch, onnx and packed (1 thread)")
    res = run_bench(str(checkpoint), ["torch", "onnx", "packed"], threads=1, batch=1,
                    repeats=30, warmup=5)
    return {r["runtime"]: r["median_ms"] for r in res["results"]}


def _epochs(plan: Plan, steps: int) -> float:
    """Epochs (fractional) that make ``steps`` optimiser steps at the plan's batch size."""
    per_epoch = plan.identities * plan.images_per_identity // plan.batch_size
    return round(steps / per_epoch, 6)


def demo_table(rows: list[dict], plan: Plan) -> str:
    packs = list(rows[0]["packs"]) if rows else []
    head = f"{'model':<27} {'family':<7}" + "".join(f" {p:>16}" for p in packs)
    head += f" {'1-bit MACs':>12} {'32-bit MACs':>12} {'memory KiB':>11}"
    timed = any("latency_ms" in r for r in rows)
    if timed:
        head += f" {'torch ms':>9} {'onnx ms':>8} {'packed ms':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        accs = "".join(f" {100 * v['accuracy']:>8.2f} +- {100 * v['std']:<4.1f}"
                       for v in r["packs"].values())
        line = (f"{r['model']:<27} {r['family']:<7}{accs} {r['macs_1bit'] / 1e6:>11.1f}M "
                f"{r['macs_32bit'] / 1e6:>11.1f}M {r['memory_kib']:>11.1f}")
        if timed:
            lat = r.get("latency_ms", {})
            line += "".join(f" {lat[k]:>{w}.2f}" if k in lat else f" {'-':>{w}}"
                            for k, w in (("torch", 9), ("onnx", 8), ("packed", 10)))
        lines.append(line)
    lines += [
        "",
        f"accuracy (%): insightface 10-fold protocol with flip test, on {plan.eval_pairs} "
        "fold-balanced pairs of each synthetic pack (a subset; `binface eval` scores full packs)",
        "MACs: larq convention, whole model at 112x112 (1-bit MACs of BinaryFaceNet that run "
        "as xor + popcount: see `binface profile binaryfacenet --per-layer`)",
    ]
    if timed:
        lines.append("latency: median of 30 single images, 1 thread, PyTorch eager / ONNX Runtime"
                     " / binface's packed engine (xor + popcount for every +-1 layer)")
    by = {r["model"]: r for r in rows}
    a, b = by.get("binaryfacenet (distilled)"), by.get("binaryfacenet (scratch)")
    if a and b:
        wins = [p for p in a["packs"] if a["packs"][p]["accuracy"] > b["packs"][p]["accuracy"]]
        lines.append(f"distillation beat training from scratch on {len(wins)} of {len(a['packs'])}"
                     f" packs{': ' + ', '.join(wins) if wins else ''}")
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_cost(rows: list[dict], path: Path) -> None:
    """Mean accuracy against 32-bit MACs (1-bit MACs at 1/64 cost), one point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for r in rows:
        cost = (r["macs_32bit"] + r["macs_1bit"] / 64) / 1e6
        acc = 100 * sum(v["accuracy"] for v in r["packs"].values()) / len(r["packs"])
        ax.scatter([cost], [acc], s=60)
        ax.annotate(r["model"], (cost, acc), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("cost: 32-bit MACs + 1-bit MACs / 64 (millions)")
    ax.set_ylabel("mean verification accuracy (%)")
    ax.set_title("binface demo: accuracy against cost")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    try:
        write_with(path, fig.savefig)
    finally:
        plt.close(fig)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="train and compare a float teacher and binary students on synthetic faces",
        description="Generate (or reuse) the synthetic face-identity benchmark, train a float "
        "MobileFaceNet, BinaryFaceNet from scratch and BinaryFaceNet distilled from it, and "
        "compare them: verification accuracy, MACs by precision and memory. About 20 minutes "
        "on 2 CPU cores; --quick in under 3.")
    p.add_argument("--out", default="binface-demo", help="output folder (default binface-demo)")
    p.add_argument("--quick", action="store_true", help="a tiny run (smoke test, < 3 minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None,
                   help="benchmark folder to use or create (default: the user cache)")
    p.add_argument("--no-latency", action="store_true",
                   help="skip the torch / onnx / packed latency columns")
    p.set_defaults(func=lambda a: run_demo(Path(a.out), a.quick, a.seed,
                                           Path(a.data) if a.data else None,
                                           latency=not a.no_latency) and 0)
