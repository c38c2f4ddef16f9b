"""Study: a transformer teacher, a binary student (the seed's second proposal).

    python benchmarks/distillation.py               # full: about 2.5 h on 2 cores
    python benchmarks/distillation.py --quick       # smoke run, a few minutes
    python benchmarks/distillation.py --recorded-only   # report the recorded runs only
    nohup python benchmarks/distillation.py > distillation.log 2>&1 &

On a 2-core Intel Xeon (AVX-512): the EdgeFace-XS teacher trains in 14 min, a
BinaryFaceFormer-sep student in 5 (7 with scoring), a BinaryFaceNet student in 16 (18).

On the default synthetic benchmark (1,000 identities x 20 images, full packs):

1. Teachers, each trained once for ``--teacher-budget`` images (default 48,000, twice
   the students'): MobileFaceNet (CNN; SGD) and EdgeFace-XS (the seed's hybrid
   transformer; AdamW), both ArcFace.
2. Students: BinaryFaceNet and a BinaryFaceFormer, with the recipe and budget of the
   binary-attention study (``benchmarks/binary_attention.py``: 24,000 images, 2 seeds).
   Their scratch runs are that study's: finished runs in its work folder with the same
   recipe, budget and data are reused, others are trained here the same way.
3. Each student distilled from each teacher with the loss mix named by ``--main`` on
   every seed; the other mixes of ``VARIANTS`` run on the first seed for the
   (student, teacher) pairs of ``--explore`` only (the goal's pair by default: the
   transformer teacher and the BinaryFaceFormer), and the ``.md`` reports every one.

Students are scored through the packed engine on the full packs (flip test, 10-fold),
teachers through ONNX Runtime; packed latency is measured side by side (1 thread).
Writes ``docs/results/distillation.json`` / ``.md`` / ``.png``; runs resume from
``--work`` like the binary-attention study. Every finished run is also recorded in
``--records`` (default ``docs/results/distillation_runs/``, one small JSON per run with
its tag, accuracy and commit; committed), so the study can be finished over several
sessions: a student run whose record matches its tag is not trained again. Each teacher
is recorded with its weights (``teacher_NAME.pt``: the trained checkpoint without its
optimiser state, tensors in float16, 2-4 MB): the students learn from that file and
the teacher is scored from it, and its sha256 is part of every student's tag, so a
later session (another clone, another CPU, where retraining would not give the same
bits) distils from the very same teacher, and a retrained teacher makes the students
recorded from the old one stale.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import binary_attention as ba  # noqa: E402  (the shared study helpers)

ROOT = ba.ROOT
PACKS = ba.PACKS
TEACHERS = {
    "mobilefacenet": ["optim.name=sgd", "optim.lr=0.1", "optim.weight_decay=5e-4",
                      "head.s=32", "head.m=0.3"],
    # s=16: at s=32 and 48,000 images EdgeFace-XS reached only 78.2 / 70.1 / 64.2, below
    # BinaryFaceFormer from scratch; s=16 learnt faster in the demo's recipe search.
    # lr 1e-3 (insightface's ViT recipes use AdamW 1e-3 or less): at 2e-3 its embeddings
    # collapsed during the warm-up (mean cosine between 400 different faces 0.98 after
    # 400 steps, loss at chance to step 3,000 in one session, 88.3 / 81.4 / 71.5 in
    # another); at 1e-3 the same probe gave 0.02 (docs/training.md, "Hybrid transformers")
    "edgeface_xs": ["optim.name=adamw", "optim.lr=0.001", "optim.weight_decay=0.05",
                    "head.s=16", "head.m=0.3"],
}
# images seen: EdgeFace-XS's 4x4 patch stem needs more images than MobileFaceNet
TEACHER_BUDGET = {"mobilefacenet": 48000, "edgeface_xs": 96000}
TEACHER_RECIPE = {"mobilefacenet": "SGD lr 0.1 wd 5e-4, ArcFace s=32 m=0.3",
                  "edgeface_xs": "AdamW lr 1e-3 wd 0.05, ArcFace s=16 m=0.3",
                  "common": "batch 32, 5% warm-up, linear decay, channels-last"}


def teacher_overrides(recipe: list[str], data: Path, images: int, n_train: int) -> list[str]:
    """A teacher's training overrides for ``images`` images seen (shared with int8.py)."""
    steps = -(-images // 32)
    return [f"data.train={data / 'train.rec'}", "train.batch_size=32", "train.seed=0",
            f"train.max_steps={steps}", f"train.epochs={steps * 32 / n_train}",
            f"schedule.warmup_epochs={max(1, steps // 20) * 32 / n_train}",
            "train.log_every=25", "train.channels_last=true", *recipe]
# loss mixes (distill.* overrides); "attention" pairs the last two stages of each side
VARIANTS = {
    "cosine+kd": ["distill.cosine=4.0", "distill.logit_kd=1.0"],
    "cosine": ["distill.cosine=4.0"],
    "cosine+kd+attention": ["distill.cosine=4.0", "distill.logit_kd=1.0",
                            "distill.attention=1.0"],
}
# the stages whose attention maps are matched (teacher stage, student stage): the 14x14
# and 7x7 maps of both sides (BinaryFaceNet's last binary map is 14x14)
STAGES = {
    ("edgeface_xs", "binaryfaceformer_sep"): [["backbone.stages.1", "backbone.6"],
                                              ["backbone.stages.2", "backbone.9"]],
    ("edgeface_xs", "binaryfaceformer_add"): [["backbone.stages.1", "backbone.6"],
                                              ["backbone.stages.2", "backbone.9"]],
    ("edgeface_xs", "binaryfacenet"): [["backbone.stages.1", "backbone.5"]],
    ("mobilefacenet", "binaryfaceformer_sep"): [["backbone.stage3", "backbone.6"],
                                                ["backbone.stage4", "backbone.9"]],
    ("mobilefacenet", "binaryfaceformer_add"): [["backbone.stage3", "backbone.6"],
                                                ["backbone.stage4", "backbone.9"]],
    ("mobilefacenet", "binaryfacenet"): [["backbone.stage3", "backbone.5"]],
}


def _variant_overrides(name: str, teacher: str, student: str) -> list[str]:
    out = list(VARIANTS[name])
    if any(o.startswith("distill.attention=") for o in out):
        out.append(f"distill.attention_pairs={json.dumps(STAGES[(teacher, student)])}")
    return out


def _trained(run_dir: Path, tag: dict) -> dict | None:
    """The finished training in ``run_dir`` if it was run with ``tag``."""
    done = run_dir / "trained.json"
    if done.is_file():
        prev = json.loads(done.read_text())
        if prev.get("tag") == tag and Path(prev["checkpoint"]).is_file():
            return prev
    return None


def train(model: str, overrides: list[str], run_dir: Path, tag: dict) -> dict:
    """Train (or reuse) one run; returns its result.json contents without accuracy."""
    from binface.fileio import write_text
    from binface.train.config import load_config
    from binface.train.loop import Trainer

    done = run_dir / "trained.json"
    if (prev := _trained(run_dir, tag)) is not None:
        print(f"[study] reusing {done}", flush=True)
        return prev
    cfg = load_config(None, [f"model={model}", f"output={run_dir}", *overrides])
    # a run stopped after an epoch's checkpoint (e.g. at the end of a session) continues
    # from it, bit for bit, when it was started with the same config
    saved = run_dir / "config.yaml"
    resume = (run_dir / "last.pt").is_file() and saved.is_file() and \
        load_config(saved, []) == cfg
    if run_dir.name.startswith("teacher_") and not resume:
        # students distilled from an earlier teacher in this folder are stale
        for stale in run_dir.parent.glob(f"*_from_{run_dir.name[8:]}_*/trained.json"):
            stale.unlink()
    t0 = time.perf_counter()
    if resume:
        print(f"[study] resuming {run_dir} from its last checkpoint", flush=True)
    trainer = Trainer(cfg, overwrite=True, resume=resume)
    first = trainer.step  # > 0 when resumed
    trainer.fit()
    wall = time.perf_counter() - t0
    res = {"checkpoint": str(run_dir / "last.pt"), "train_s": wall, "tag": tag,
           "train_img_s": (trainer.step - first) * trainer.images_per_step / wall,
           "resumed_at_step": first}
    write_text(done, json.dumps(res, indent=2) + "\n")
    return res


def teacher_file(checkpoint: str, path: Path) -> str:
    """Write a teacher's weights for the records: ``checkpoint`` without its optimiser
    state, floating tensors in float16 (the teacher the students learn from and that is
    scored is this rounded one; ``load_state_dict`` copies it into float32 parameters).
    Returns its sha256."""
    import hashlib
    import io

    import torch

    from binface.fileio import write_bytes
    from binface.models.loading import load_checkpoint

    ckpt = load_checkpoint(checkpoint)

    def half(tree):
        if isinstance(tree, dict):
            return {k: half(v) for k, v in tree.items()}
        if torch.is_tensor(tree) and tree.is_floating_point():
            return tree.to(torch.float16)
        return tree

    keep = {k: v for k, v in ckpt.items() if k not in ("optimizer", "scheduler", "rng_torch")}
    keep["state_dict"] = half(keep["state_dict"])
    keep["head_state"] = half(keep.get("head_state") or {})
    buf = io.BytesIO()
    torch.save(keep, buf)
    write_bytes(path, buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def score_onnx(checkpoint: str, packs: dict, run_dir: Path, threads: int) -> dict:
    """Accuracy (%) of a float checkpoint on each pack, embedded by ONNX Runtime."""
    from binface.eval.verification import verification_from_pack_embeddings
    from binface.runtime import export_onnx, load_onnx

    path = run_dir / "model.onnx"
    export_onnx(checkpoint, path)
    runner = load_onnx(path, threads=threads)
    return {name: 100.0 * verification_from_pack_embeddings(
        ba.embed_packed(runner, pack.images), pack.issame)["accuracy"]
        for name, pack in packs.items()}


def _scored(res: dict, run_dir: Path, packs: dict, threads: int, onnx: bool) -> dict:
    from binface.fileio import write_text

    done = run_dir / "scored.json"
    if done.is_file():
        prev = json.loads(done.read_text())
        if prev.get("tag") == res["tag"] and prev.get("checkpoint") == res["checkpoint"] \
                and prev.get("sha256") == res.get("sha256"):
            return prev
    fn = score_onnx if onnx else ba.score
    out = {**res, "accuracy": fn(res["checkpoint"], packs, run_dir, threads)}
    write_text(done, json.dumps(out, indent=2) + "\n")
    print(f"[study] {run_dir.name}: " + ", ".join(f"{p} {a:.2f}" for p, a in
                                                  out["accuracy"].items()), flush=True)
    return out


def portable(tag: dict) -> str:
    """A tag with this checkout's and the data cache's absolute paths taken out, so that
    records match from another clone or cache folder."""
    from binface.demo import cache_dir

    text = json.dumps(tag, sort_keys=True)
    for root, name in ((str(ROOT), "<checkout>"), (str(cache_dir()), "<cache>")):
        text = text.replace(root, name)
    return text


def load_record(records: Path, name: str, tag: dict) -> dict | None:
    """The recorded result of run ``name`` if its tag matches (else None)."""
    path = records / f"{name}.json"
    if not path.is_file():
        return None
    rec = json.loads(path.read_text())
    return rec if portable(rec.get("tag", {})) == portable(tag) else None


def save_record(records: Path, name: str, res: dict, commit: str) -> None:
    """Write run ``name``'s record; a run recorded before keeps its first commit."""
    from binface.fileio import write_text

    path = records / f"{name}.json"
    if path.is_file() and "commit" not in res:
        commit = json.loads(path.read_text()).get("commit", commit)
    keep = {k: v for k, v in res.items() if k != "checkpoint"}
    write_text(path, json.dumps({**keep, "run": name, "commit": res.get("commit", commit)},
                                indent=2) + "\n")


def gap_closed(scratch: float, distilled: float, teacher: float) -> float | None:
    """Fraction of the scratch-to-teacher gap that distillation closes (None: no gap)."""
    gap = teacher - scratch
    return None if gap <= 0 else (distilled - scratch) / gap


def table(doc: dict) -> str:
    lines = ["| student | teacher | losses | " + " | ".join(PACKS) + " | packed ms |",
             "|---|---|---|" + "---|" * (len(PACKS) + 1)]
    for t in doc["teachers"]:
        lines.append(f"| (teacher) | {t['model']} | arcface | "
                     + " | ".join(f"{t['accuracy'][p]:.2f}" for p in PACKS) + " | - |")
    for r in doc["rows"]:
        accs = [ba.mean_range(r, p) for p in PACKS]
        lines.append(f"| {r['student']} | {r['teacher'] or '-'} | {r['losses']} | "
                     + " | ".join(accs) + f" | {r['packed_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def _mean(row: dict, seeds: list[int], pack: str) -> float:
    """A row's mean accuracy on ``pack`` over ``seeds`` (a subset of its own)."""
    return float(np.mean([a[pack] for a, s in zip(row["accuracy_seeds"], row["seeds"],
                                                  strict=True) if s in seeds]))


def verdict(doc: dict) -> list[str]:
    """The issue's goal, computed per pack: the share of the scratch-to-teacher gap that
    the transformer-distilled BinaryFaceFormer closes (goal: >= 50% on every pack).
    Distilled and scratch runs are compared over the seeds both have."""
    teachers = {t["model"]: t for t in doc["teachers"]}
    out = []
    for r in doc["rows"]:
        if r["teacher"] is None or r["losses"] != doc["main"]:
            continue
        scratch = next((s for s in doc["rows"] if s["student"] == r["student"]
                        and s["teacher"] is None), None)
        if scratch is None:
            continue
        shared = [s for s in r["seeds"] if s in scratch["seeds"]]
        if not shared:
            continue
        t = teachers[r["teacher"]]
        parts, ok = [], True
        for p in PACKS:
            d = _mean(r, shared, p)
            g = gap_closed(_mean(scratch, shared, p), d, t["accuracy"][p])
            ok = ok and g is not None and g >= 0.5
            parts.append(f"{p} {'-' if g is None else f'{100 * g:.0f}%'} "
                         f"(student {d - t['accuracy'][p]:+.2f} against the teacher)")
        goal = ""
        if r["teacher"] == "edgeface_xs" and r["student"].startswith("binaryfaceformer"):
            goal = f": goal {'met' if ok else 'not met'}"
        out.append(f"- {r['student']} from {r['teacher']} (seeds {shared}): gap closed "
                   + ", ".join(parts) + goal)
    return out


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from binface.fileio import write_with

    fig, axes = plt.subplots(1, len(PACKS), figsize=(4.4 * len(PACKS), 3.8))
    lat = {r["student"]: r["packed_ms"] for r in doc["rows"]}
    for ax, p in zip(axes, PACKS, strict=True):
        for t in doc["teachers"]:
            ax.axhline(t["accuracy"][p], ls="--", lw=1, color="grey")
            ax.text(min(lat.values()), t["accuracy"][p], f" teacher {t['model']}", fontsize=6,
                    va="bottom")
        for r in doc["rows"]:
            if r["losses"] not in (doc["main"], "arcface"):
                continue
            marker = "o" if r["teacher"] is None else ("s" if r["teacher"] == "mobilefacenet"
                                                         else "^")
            ax.plot(r["packed_ms"], r["accuracy"][p], marker, label=f"{r['student']} "
                    f"{'scratch' if r['teacher'] is None else 'from ' + r['teacher']}")
            s = next((x for x in doc["rows"] if x["student"] == r["student"]
                      and x["teacher"] is None), None)
            if r["teacher"] is not None and s is not None:
                ax.annotate("", (r["packed_ms"], r["accuracy"][p]),
                            (s["packed_ms"], s["accuracy"][p]),
                            arrowprops={"arrowstyle": "->", "lw": 0.8})
        ax.set_title(p)
        ax.set_xlabel("packed latency, ms (1 thread)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("verification accuracy, %")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny data and budgets")
    ap.add_argument("--students", default="binaryfaceformer_sep,binaryfacenet",
                    help="binaryfaceformer_sep: the best BinaryFaceFormer of the "
                         "binary-attention study")
    ap.add_argument("--teachers", default=",".join(TEACHERS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--main", default="cosine+kd", help="the loss mix run on every seed")
    ap.add_argument("--explore", default="binaryfaceformer_sep/edgeface_xs",
                    help="student/teacher pairs (comma-separated) that also try the "
                         "other loss mixes, on the first seed")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--budget", type=int, default=24000, help="student images seen per run")
    ap.add_argument("--teacher-budget", type=int,
                    help="teacher images seen (default: " + ", ".join(
                        f"{k} {v:,}" for k, v in TEACHER_BUDGET.items()) + ")")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "distillation")
    ap.add_argument("--scratch-work", type=Path, default=ROOT / "runs" / "binary_attention",
                    help="the binary-attention study's work folder (scratch runs reused)")
    ap.add_argument("--out", type=Path, help="default: docs/results (--quick: work folder)")
    ap.add_argument("--records", type=Path, default=ROOT / "docs" / "results" /
                    "distillation_runs", help="one JSON per finished run (default "
                    "docs/results/distillation_runs; --quick: in the work folder)")
    ap.add_argument("--recorded-only", action="store_true",
                    help="train nothing: report the recorded runs, list the missing ones "
                         "(an interim report of a study finished over several sessions)")
    args = ap.parse_args()

    import torch

    from binface.data.verification import sha256
    from binface.fileio import write_text

    torch.set_num_threads(args.threads)
    students = [s for s in args.students.split(",") if s]
    teachers = [t for t in args.teachers.split(",") if t]
    variants = [v for v in args.variants.split(",") if v]
    for v in [*variants, args.main]:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; known: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    budget, t_budget = args.budget, args.teacher_budget
    work, scratch_work = args.work, args.scratch_work
    if args.quick:
        seeds, budget, t_budget = seeds[:1], 8 * 32, 16 * 32
        work = work.with_name(work.name + "_quick")
        scratch_work = work / "scratch"
        args.records = work / "records"
    data, packs, plan = ba.study_benchmark(args.quick)
    n_train = plan.identities * plan.images_per_identity
    work.mkdir(parents=True, exist_ok=True)
    t_start, start_commit = time.perf_counter(), ba.commit()

    print(f"[study] packed latency of {', '.join(students)} (1 thread, side by side)",
          flush=True)
    lat = ba.packed_latency(students, rounds=3 if args.quick else 10,
                            per_round=5 if args.quick else 20, work=work)

    teacher_rows, teacher_ckpt, teacher_sha = [], {}, {}
    for t in teachers:
        t_steps = -(-(t_budget or TEACHER_BUDGET[t]) // 32)
        over = teacher_overrides(TEACHERS[t], data, t_steps * 32, n_train)
        tag = {"overrides": over, "data": str(data)}
        pt = args.records / f"teacher_{t}.pt"
        rec = load_record(args.records, f"teacher_{t}", tag)
        if rec is not None and pt.is_file() and rec.get("sha256") == sha256(pt):
            print(f"[study] teacher {t}: recorded ({pt})", flush=True)
            res = rec
        elif args.recorded_only:
            raise SystemExit(f"--recorded-only: teacher {t} has no matching record in "
                             f"{args.records}")
        else:
            print(f"[study] teacher {t}: {t_steps} steps of 32", flush=True)
            res = train(t, over, work / f"teacher_{t}", tag)
            res = {**res, "checkpoint": str(pt), "sha256": teacher_file(res["checkpoint"], pt)}
            res = _scored(res, work / f"teacher_{t}", packs, args.threads, onnx=True)
            save_record(args.records, f"teacher_{t}", {**res, "commit": start_commit},
                        start_commit)
        teacher_ckpt[t] = str(pt)
        teacher_sha[t] = res["sha256"]
        teacher_rows.append({"model": t, "accuracy": {p: round(res["accuracy"][p], 3)
                                                      for p in PACKS},
                             "budget_images": t_steps * 32, "recipe": TEACHER_RECIPE[t],
                             "train_img_s": round(res["train_img_s"], 2)})

    # teacher runs that failed and were set aside (``teacher_NAME.failed.json``, renamed
    # by hand with the reason in the commit): reported, never used
    failed = []
    for path in sorted(args.records.glob("teacher_*.failed.json")):
        rec = json.loads(path.read_text())
        lr = next((o.split("=", 1)[1] for o in rec["tag"]["overrides"]
                   if o.startswith("optim.lr=")), "?")
        failed.append({"run": path.name, "lr": lr, "commit": rec.get("commit"),
                       "accuracy": {p: round(rec["accuracy"][p], 3) for p in PACKS}})

    steps = -(-budget // 32)
    runs: dict[tuple[str, str | None, str], list[dict]] = {}
    missing: list[str] = []  # --recorded-only: runs not recorded yet
    explore = {tuple(x.split("/", 1)) for x in args.explore.split(",") if "/" in x}
    for student in students:
        for seed in seeds:
            # scratch: the binary-attention study's run (same recipe, budget and data)
            sdir = scratch_work / f"{student}_s{seed}"
            prev = sdir / "result.json"
            tag_ba = {"recipe": ba.RECIPE, "steps": steps, "data": str(data)}
            rec = load_record(args.records, f"scratch_{student}_s{seed}", tag_ba)
            if prev.is_file() and json.loads(prev.read_text()).get("tag") == tag_ba:
                print(f"[study] scratch {student} seed {seed}: reusing {prev}", flush=True)
                scratch = json.loads(prev.read_text())
            elif rec is not None:
                print(f"[study] scratch {student} seed {seed}: recorded", flush=True)
                scratch = rec
            elif args.recorded_only:
                print(f"[study] scratch {student} seed {seed}: not recorded, left out",
                      flush=True)
                missing.append(f"scratch_{student}_s{seed}")
                scratch = None
            else:
                print(f"[study] scratch {student} seed {seed}: training", flush=True)
                scratch = ba.train_one(student, seed, steps, data, sdir, n_train)
                scratch["accuracy"] = ba.score(scratch["checkpoint"], packs, sdir, args.threads)
                scratch["tag"] = tag_ba
                scratch["commit"] = start_commit
                write_text(prev, json.dumps(scratch, indent=2) + "\n")
            if scratch is not None:
                save_record(args.records, f"scratch_{student}_s{seed}", scratch, start_commit)
                runs.setdefault((student, None, "arcface"), []).append({**scratch,
                                                                        "seed": seed})
            for t in teachers:
                for v in variants:
                    if v != args.main and (seed != seeds[0] or (student, t) not in explore):
                        continue
                    over = [*ba._overrides(student, seed, steps, data, Path("."), n_train)[1:],
                            f"teacher={teacher_ckpt[t]}", *_variant_overrides(v, t, student)]
                    over = [o for o in over if not o.startswith("output=")]
                    run_dir = work / f"{student}_from_{t}_{v}_s{seed}"
                    tag = {"overrides": over, "data": str(data), "teacher_sha256": teacher_sha[t]}
                    print(f"[study] {student} from {t} ({v}), seed {seed}", flush=True)
                    res = load_record(args.records, run_dir.name, tag)
                    if res is None and args.recorded_only:
                        print(f"[study] {run_dir.name}: not recorded, left out", flush=True)
                        missing.append(run_dir.name)
                        continue
                    if res is None:
                        res = _scored(train(student, over, run_dir, tag), run_dir, packs,
                                      args.threads, onnx=False)
                        save_record(args.records, run_dir.name, res, start_commit)
                    else:
                        print(f"[study] {run_dir.name}: recorded", flush=True)
                    runs.setdefault((student, t, v), []).append({**res, "seed": seed})

    rows = []
    for (student, t, v), rs in runs.items():
        rows.append({
            "student": student, "teacher": t, "losses": v,
            "accuracy": {p: round(float(np.mean([r["accuracy"][p] for r in rs])), 3)
                         for p in PACKS},
            "accuracy_seeds": [{p: round(r["accuracy"][p], 3) for p in PACKS} for r in rs],
            "seeds": [r["seed"] for r in rs], "packed_ms": round(lat[student], 3),
            "train_img_s": round(float(np.mean([r["train_img_s"] for r in rs])), 2)})
    doc = {
        "command": "python benchmarks/distillation.py" + " ".join([""] + sys.argv[1:]),
        "commit": start_commit, "main": args.main,
        "explore": sorted("/".join(x) for x in explore),
        "student_recipe": ba.RECIPE, "budget_images": steps * 32,
        "seeds": seeds,
        "variants": {v: VARIANTS[v] for v in variants}, "stages": {
            f"{t}->{s}": p for (t, s), p in STAGES.items() if t in teachers and s in students},
        "threads": args.threads, "torch": torch.__version__,
        "minutes": round((time.perf_counter() - t_start) / 60, 1),
        "teachers": teacher_rows, "failed_teachers": failed, "rows": rows,
        "missing": missing,
    }
    doc["verdict"] = verdict(doc)
    out = args.out or (work / "results" if args.quick else ROOT / "docs" / "results")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "distillation.json", json.dumps(doc, indent=2) + "\n")
    md = (f"# Transformer teacher, binary student\n\nCommand: `{doc['command']}` at commit "
          f"`{doc['commit']}`; students {doc['budget_images']:,} images seen per run (seeds "
          f"{seeds}; variants other than `{args.main}` on seed {seeds[0]} for "
          f"{', '.join(sorted('/'.join(x) for x in explore)) or 'no pair'} only); teachers "
          f"({TEACHER_RECIPE['common']}) " + "; ".join(
              f"{r['model']}: {r['budget_images']:,} images, {TEACHER_RECIPE[r['model']]}"
              for r in teacher_rows)
          + f"; {doc['minutes']} min.\n\nAccuracy (%) on the full synthetic packs, mean over "
          "seeds (range). Teachers scored through ONNX Runtime, students through the packed "
          "engine.\n\n" + table(doc) + "\n" + "\n".join(doc["verdict"]) + "\n"
          + (f"\nNot recorded yet, left out (`--recorded-only`): {', '.join(missing)}.\n"
             if missing else "")
          + "".join(f"\nA teacher run set aside, not used: `{f['run']}` (lr {f['lr']}, "
                    f"commit `{str(f['commit'])[:7]}`): "
                    + " / ".join(f"{f['accuracy'][p]:.2f}" for p in PACKS) + "\n"
                    for f in failed))
    write_text(out / "distillation.md", md)
    plot(doc, out / "distillation.png")
    print(md)


if __name__ == "__main__":
    main()
