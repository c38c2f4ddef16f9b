"""``binface demo``: the seed paper's story, end to end, on the built-in synthetic faces.

1. Generate (or reuse from the cache) the synthetic face-identity benchmark: a
   training ``.rec`` and three verification packs (synth LFW, CFP-FP, AgeDB-30).
2. Train, all with ArcFace: a hybrid-transformer teacher (EdgeFace-XS), BinaryFaceNet
   and BinaryFaceFormer-sep from scratch, and both binary students distilled from the
   teacher (embedding cosine + logit KD).
3. Score the five on every pack (flip test, insightface 10-fold protocol on a
   fold-balanced subset of pairs): binary students through the packed engine (they
   run as xor + popcount), the teacher through ONNX Runtime. Time all five in PyTorch,
   ONNX Runtime and the packed engine side by side (``binface compare``'s report).
4. Print one table and conclusions computed from the numbers: "A beats B on pack P"
   only where the paired per-fold difference exceeds 2.26 standard errors (a 95%
   t interval over 10 folds), otherwise "within noise" (:mod:`binface.eval.paired`).

Sized for 2 CPU cores: in a fresh-clone run (data generation included; the target is
20 minutes) 10.2 minutes on an Intel Xeon with AVX-512, 19.0 on an AMD EPYC with AVX2;
a few minutes with ``--quick``.
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


# Training speed on 2 cores (batch 32): EdgeFace-XS ~73 img/s, BinaryFaceFormer-sep ~60,
# BinaryFaceNet ~19 (PyTorch emulates its binary layers in float at 112x112x64). The
# teacher needs many steps to get ahead of the students (at 400 it is worse than both;
# at 900, 3 points ahead on synth LFW). A fresh-clone run at 900 / 120 steps took 21.8 min
# (training 15.6, scoring 4.3); at 800 / 80, 20.2 min (data 1.1, training 13.9: teacher
# 6.8, students 2.6 + 2.8 + 0.7 + 0.9; scoring and comparing about 5); hence 720 / 70:
# 19.0 min in a fresh-clone run (AMD EPYC, AVX2), 10.2 min on an Intel Xeon (AVX-512).
FULL = Plan(identities=300, images_per_identity=20, pack_pairs=2000, eval_pairs=2000,
            batch_size=32, teacher_steps=720, student_steps=70)
QUICK = Plan(identities=60, images_per_identity=8, pack_pairs=100, eval_pairs=100,
             batch_size=32, teacher_steps=10, student_steps=6)

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


TEACHER = "edgeface_xs"
STUDENTS = ("binaryfacenet", "binaryfaceformer_sep")
# ArcFace with a short-schedule margin (m = 0.3): a few hundred steps from scratch do not
# converge under the full m = 0.5 of the MS1M recipe. AdamW at 1e-3: at 2e-3 EdgeFace-XS's
# embeddings collapse in the warm-up (mean cosine of 400 different faces 0.985 after 300
# steps of this recipe, against 0.000 at 1e-3; benchmarks/distillation.py's teacher)
TEACHER_RECIPE = ["optim.name=adamw", "optim.lr=0.001", "optim.weight_decay=0.05",
                  "head.s=32", "head.m=0.3"]
STUDENT_RECIPE = ["optim.name=adam", "optim.lr=0.002", "optim.weight_decay=0", "head.s=16",
                  "head.m=0.3"]
DISTILL = ["distill.cosine=4.0", "distill.logit_kd=1.0"]
# no flip test: it doubles the scoring time, and the demo compares models under one
# protocol (the studies and `binface eval` use it)
FLIP = False
OUTPUT_FILES = ("table.txt", "demo.json", "report.json", "report.md", "roc.png",
                "accuracy_vs_macs.png", "compare.md", "compare.json", "compare.png")
LATENCY_REPEATS = 30


@dataclass(frozen=True)
class Run:
    """One model the demo trains."""

    label: str  # as printed, e.g. "binaryfacenet (distilled)"
    folder: str  # under the output folder
    model: str
    distilled: bool = False


def runs_of_plan() -> list[Run]:
    """The teacher first (the distilled students need it), then scratch, then distilled."""
    out = [Run(f"{TEACHER} (teacher)", f"teacher_{TEACHER}", TEACHER)]
    out += [Run(f"{s} (scratch)", f"{s}_scratch", s) for s in STUDENTS]
    out += [Run(f"{s} (distilled)", f"{s}_distilled", s, True) for s in STUDENTS]
    return out


def comparisons() -> list[tuple[str, str]]:
    """(A, B) pairs the conclusions are about, in the order of the seed's story."""
    bfn, bff = STUDENTS
    return [(f"{bff} (scratch)", f"{bfn} (scratch)"),
            (f"{bfn} (distilled)", f"{bfn} (scratch)"),
            (f"{bff} (distilled)", f"{bff} (scratch)"),
            (f"{bff} (distilled)", f"{bfn} (distilled)"),
            (f"{TEACHER} (teacher)", f"{bff} (distilled)")]


def check_demo_outputs(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, a demo folder holding an earlier run (unless ``overwrite``)."""
    from binface.fileio import check_outputs

    check_outputs([out / n for n in OUTPUT_FILES], overwrite=overwrite)
    if not overwrite:
        old = [r.folder for r in runs_of_plan() if (out / r.folder).exists()]
        if old:
            raise BinfaceError(f"{out} already holds demo runs ({', '.join(old)}); "
                               "use --overwrite to replace them, or another --out")


def _train(run: Run, out: Path, data: Path, plan: Plan, seed: int,
           teacher: Path | None) -> Path:
    from binface.train.config import load_config
    from binface.train.loop import Trainer

    steps = plan.teacher_steps if run.model == TEACHER else plan.student_steps
    recipe = TEACHER_RECIPE if run.model == TEACHER else STUDENT_RECIPE
    over = [f"output={out / run.folder}", f"data.train={data / 'train.rec'}",
            f"model={run.model}", f"train.batch_size={plan.batch_size}", f"train.seed={seed}",
            "train.log_every=10", "train.channels_last=true", f"train.max_steps={steps}",
            f"schedule.warmup_epochs={_epochs(plan, max(1, steps // 20))}",
            f"train.epochs={_epochs(plan, steps)}", *recipe]
    if run.distilled:
        over += [f"teacher={teacher}", *DISTILL]
    trainer = Trainer(load_config(None, over), overwrite=True)
    trainer.fit()
    return out / run.folder / "last.pt"


def _score_run(checkpoint: Path, family: str, packs: list, label: str) -> dict[str, dict]:
    """Each pack's verification result, embedded the way the model is deployed: binary
    networks in the packed engine (xor + popcount), float ones in ONNX Runtime."""
    import torch

    from binface.eval.run import RunnerEmbedder, evaluate_pack
    from binface.runtime import export_onnx, export_packed, load_onnx, load_packed

    threads = max(1, torch.get_num_threads())
    if family == "binary":
        path = checkpoint.with_name("model.bfp")
        export_packed(checkpoint, path)
        runner = load_packed(path, threads=threads)
    else:
        path = checkpoint.with_name("model.onnx")
        export_onnx(checkpoint, path)
        runner = load_onnx(path, threads=threads)
    embedder = RunnerEmbedder(runner)
    out = {}
    for pack in packs:
        r = evaluate_pack(embedder, pack, batch_size=64, flip=FLIP,
                          progress=f"{label} {pack.name}")
        r["model"] = label
        r["runtime"] = "packed" if family == "binary" else "onnx"
        out[pack.name] = r
    return out


def conclusions(rows: list[dict]) -> list[str]:
    """Sentences computed from the per-fold accuracies (paired, with their standard error)
    and the measured latencies; nothing here is fixed in advance."""
    from binface.eval.paired import describe, paired_difference

    by = {r["model"]: r for r in rows}
    lines = []
    for a, b in comparisons():
        if a not in by or b not in by:
            continue
        for pack in by[a]["packs"]:
            fa = by[a]["packs"][pack].get("fold_accuracies")
            fb = by[b]["packs"].get(pack, {}).get("fold_accuracies")
            if fa and fb:
                lines.append(describe(a, b, pack, paired_difference(fa, fb)))
    lat = {m: r.get("latency_ms", {}) for m, r in by.items()}
    bfn, bff = STUDENTS
    pk = {m: v.get("packed") for m, v in lat.items()}
    if pk.get(f"{bff} (scratch)") and pk.get(f"{bfn} (scratch)"):
        lines.append(f"packed latency: {bff} {pk[f'{bff} (scratch)']:.2f} ms, {bfn} "
                     f"{pk[f'{bfn} (scratch)']:.2f} ms "
                     f"({pk[f'{bff} (scratch)'] / pk[f'{bfn} (scratch)']:.2f}x)")
    t_onnx = lat.get(f"{TEACHER} (teacher)", {}).get("onnx")
    if t_onnx and pk.get(f"{bff} (distilled)"):
        lines.append(f"{bff} (distilled) in the packed engine runs "
                     f"{t_onnx / pk[f'{bff} (distilled)']:.1f}x faster than the teacher in "
                     f"ONNX Runtime ({pk[f'{bff} (distilled)']:.2f} vs {t_onnx:.2f} ms)")
    return lines


def run_demo(out: Path, quick: bool = False, seed: int = 0, data: Path | None = None,
             plan: Plan | None = None, latency: bool = True, overwrite: bool = False,
             repeats: int = LATENCY_REPEATS) -> dict:
    """Run the demo; returns the table rows and writes the reports into ``out``."""
    from binface.compare import add_accuracy, run_compare, write_outputs
    from binface.eval.report import plot_roc, write_report_json, write_report_markdown
    from binface.eval.run import load_eval_pack
    from binface.models.loading import load_model
    from binface.profile import profile

    plan = plan or (QUICK if quick else FULL)
    check_demo_outputs(out, overwrite)
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = synth_data(plan, seed, data)
    for p in PACKS:
        if not (data / f"{p}.bin").is_file():
            raise BinfaceError(f"{data} lacks {p}.bin: not a complete synthetic benchmark")

    runs, ckpts = runs_of_plan(), {}
    for k, run in enumerate(runs, 1):
        print(f"[demo] {k}/{len(runs)} training {run.label}")
        ckpts[run.label] = _train(run, out, data, plan, seed,
                                  ckpts.get(f"{TEACHER} (teacher)"))

    print(f"[demo] verifying on {plan.eval_pairs} pairs of each pack (binary models in the "
          "packed engine, the teacher in ONNX Runtime)")
    packs = [load_eval_pack(data / f"{p}.bin", plan.eval_pairs) for p in PACKS]
    rows, results, scores = [], [], {}
    for run in runs:
        lm = load_model(ckpts[run.label])
        res = _score_run(ckpts[run.label], lm.family, packs, run.label)
        scores[str(ckpts[run.label])] = res
        results += list(res.values())
        totals = profile(lm.model, lm.input_size, name=lm.name).totals
        rows.append({"model": run.label, "family": lm.family, "checkpoint":
                     str(ckpts[run.label]), "scored_in": res[packs[0].name]["runtime"],
                     **{k: totals[k] for k in ("macs_1bit", "macs_32bit",
                                               "macs_runtime_binary", "memory_kib")},
                     "packs": {n: {"accuracy": r["accuracy"], "std": r["std"],
                                   "fold_accuracies": r["fold_accuracies"]}
                               for n, r in res.items()}})
    if latency:
        print("[demo] timing all five in torch, onnx and packed, side by side (1 thread)")
        cmp = run_compare([str(c) for c in ckpts.values()], runtimes="torch,onnx,packed",
                          repeats=repeats, rounds=5, progress=True)
        add_accuracy(cmp, scores, [str(p.path) for p in packs], plan.eval_pairs,
                     "the packed engine (binary models) and ONNX Runtime (float models)",
                     flip=FLIP)
        for row, crow in zip(rows, cmp["rows"], strict=True):
            row["latency_ms"] = {rt: c["median_ms"] for rt, c in crow["latency"].items()
                                 if c and "median_ms" in c}
        write_outputs(cmp, out)
    else:  # an earlier run's report (replaced with --overwrite) must not sit beside this one
        for name in ("compare.md", "compare.json", "compare.png"):
            (out / name).unlink(missing_ok=True)

    elapsed = time.perf_counter() - t_start
    meta = {"mode": "quick" if quick else "full", "plan": asdict(plan), "seed": seed,
            "data": str(data), "eval pairs per pack": plan.eval_pairs,
            "protocol": f"insightface 10-fold, {'flip test' if FLIP else 'no flip test'}",
            "minutes": round(elapsed / 60, 1)}
    concl = conclusions(rows)
    table = demo_table(rows, plan, concl)
    write_text(out / "table.txt", table)
    write_report_json(results, out / "report.json", {**meta, "plan": json.dumps(meta["plan"])})
    write_report_markdown(results, out / "report.md", "binface demo",
                          {**meta, "plan": json.dumps(meta["plan"])})
    write_text(out / "demo.json", json.dumps({"meta": meta, "rows": rows,
                                              "conclusions": concl}, indent=2) + "\n")
    plot_roc(results, out / "roc.png", "binface demo: synthetic benchmark")
    plot_accuracy_vs_cost(rows, out / "accuracy_vs_macs.png")
    print(table, end="")
    print(f"[demo] done in {elapsed / 60:.1f} min; reports and plots in {out}")
    return {"rows": rows, "meta": meta, "conclusions": concl}


def _epochs(plan: Plan, steps: int) -> float:
    """Epochs (fractional) that make ``steps`` optimiser steps at the plan's batch size."""
    per_epoch = plan.identities * plan.images_per_identity // plan.batch_size
    return round(steps / per_epoch, 6)


def demo_table(rows: list[dict], plan: Plan, concl: list[str] = ()) -> str:
    packs = list(rows[0]["packs"]) if rows else []
    head = f"{'model':<34} {'family':<7}" + "".join(f" {p:>16}" for p in packs)
    head += f" {'1-bit MACs':>12} {'32-bit MACs':>12} {'memory KiB':>11}"
    timed = any("latency_ms" in r for r in rows)
    if timed:
        head += f" {'torch ms':>9} {'onnx ms':>8} {'packed ms':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        accs = "".join(f" {100 * v['accuracy']:>8.2f} +- {100 * v['std']:<4.1f}"
                       for v in r["packs"].values())
        line = (f"{r['model']:<34} {r['family']:<7}{accs} {r['macs_1bit'] / 1e6:>11.1f}M "
                f"{r['macs_32bit'] / 1e6:>11.1f}M {r['memory_kib']:>11.1f}")
        if timed:
            lat = r.get("latency_ms", {})
            line += "".join(f" {lat[k]:>{w}.2f}" if k in lat else f" {'-':>{w}}"
                            for k, w in (("torch", 9), ("onnx", 8), ("packed", 10)))
        lines.append(line)
    lines += [
        "",
        f"accuracy (%): mean +- std over the 10 folds (insightface protocol, "
        f"{'flip test' if FLIP else 'no flip test'}) on "
        f"{plan.eval_pairs} fold-balanced pairs of each synthetic pack; binary models "
        "embedded by the packed engine, the float teacher by ONNX Runtime",
        "MACs: larq convention, whole model at 112x112 (1-bit MACs that run as xor + "
        "popcount: `binface profile NAME --per-layer`)",
    ]
    if timed:
        lines.append("latency: median of single images, 1 thread, PyTorch eager / ONNX Runtime"
                     " / binface's packed engine, timed side by side (compare.md)")
    if concl:
        lines += ["", "conclusions (a difference is called only where the paired per-fold "
                  "difference exceeds t(0.975, 9) = 2.26 standard errors, a 95% interval; "
                  "docs/protocol.md):", *(f"- {c}" for c in concl)]
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
    from binface.fileio import OVERWRITE_FLAG

    p = sub.add_parser(
        "demo", help="a transformer teacher and binary students on synthetic faces, compared",
        description="Generate (or reuse) the synthetic face-identity benchmark; train a "
        "hybrid-transformer teacher (EdgeFace-XS), BinaryFaceNet and BinaryFaceFormer from "
        "scratch and both distilled from the teacher; compare them (verification accuracy "
        "with its uncertainty, MACs by precision, memory, latency in PyTorch, ONNX Runtime "
        "and the packed engine). 10 to 20 minutes on 2 CPU cores; --quick in a few.")
    p.add_argument("--out", default="binface-demo", help="output folder (default binface-demo)")
    p.add_argument("--quick", action="store_true", help="a tiny run (smoke test, a few minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None,
                   help="benchmark folder to use or create (default: the user cache)")
    p.add_argument("--no-latency", action="store_true",
                   help="skip the torch / onnx / packed timing (and compare.*)")
    p.add_argument(OVERWRITE_FLAG, action="store_true",
                   help="replace an earlier demo's results in --out")
    p.set_defaults(func=lambda a: run_demo(Path(a.out), a.quick, a.seed,
                                           Path(a.data) if a.data else None,
                                           latency=not a.no_latency,
                                           overwrite=a.overwrite) and 0)
