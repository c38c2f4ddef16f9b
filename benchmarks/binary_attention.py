"""Study: does binary self-attention (BinaryFaceFormer) beat BinaryFaceNet at equal speed?

    python benchmarks/binary_attention.py              # full: ~100 min on 2 cores
    python benchmarks/binary_attention.py --quick      # smoke run, a few minutes
    nohup python benchmarks/binary_attention.py > study.log 2>&1 &

Trains BinaryFaceNet, QuickNetSmall and the BinaryFaceFormer models with one recipe
(``RECIPE``) on the default synthetic benchmark (1,000 identities x 20 images), each
for the same budget of images seen and for each seed; then exports every trained
network to the packed engine, embeds the **full** verification packs with it (flip
test, 2 threads; the packed engine is several times faster than PyTorch here) and
scores them with the insightface 10-fold protocol. Packed latency (1 thread, batch 1)
is measured for all models side by side in interleaved rounds, before any training,
on default-initialised networks (latency does not depend on the weights).

Writes ``docs/results/binary_attention.json`` / ``.md`` / ``.png`` (``--out``), with
the command, the commit, the recipe, the budget and the seeds. Finished runs are
kept in ``--work`` (one ``result.json`` per model and seed, tagged with the recipe
and budget): a rerun with the same settings reuses them, so an interrupted study
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("binaryfacenet", "quicknet_small", "binaryfaceformer_sep", "binaryfaceformer_add")
PACKS = ("synth_lfw", "synth_cfp_fp", "synth_agedb_30")
# one recipe for every model (all are binary networks): the demo's binary-student recipe
RECIPE = {
    "optimizer": "adam", "lr": 0.002, "weight_decay": 0.0, "schedule": "polynomial (power 1)",
    "warmup": "5% of the steps", "batch_size": 32, "head": "arcface s=16 m=0.3",
    "grad_clip": 5.0, "channels_last": True, "augment": "horizontal flip",
}


def _overrides(model: str, seed: int, steps: int, data: Path, out: Path,
               n_train: int) -> list[str]:
    def epochs(n_steps: int) -> float:  # fractional epochs of n_steps steps of 32 images
        return n_steps * 32 / n_train

    return [f"model={model}", f"output={out}", f"data.train={data / 'train.rec'}",
            "optim.name=adam", f"optim.lr={RECIPE['lr']}", "optim.weight_decay=0",
            "head.s=16", "head.m=0.3", "train.batch_size=32", f"train.seed={seed}",
            f"train.max_steps={steps}", "train.log_every=25",
            "train.channels_last=true", "train.checkpoint_every=1000000",
            f"schedule.warmup_epochs={epochs(max(1, steps // 20))}",
            f"train.epochs={epochs(steps)}"]


def study_benchmark(quick: bool, data: Path | None = None, load_packs: bool = True):
    """The studies' data: the default synthetic benchmark (1,000 identities x 20, full
    packs), or a tiny one for ``--quick``; returns (folder, loaded packs, its Plan)
    (``load_packs=False``: no packs read, an empty dict)."""
    from binface.demo import Plan, synth_data
    from binface.eval.run import load_eval_pack

    if quick:
        plan = Plan(identities=80, images_per_identity=8, pack_pairs=200, eval_pairs=200,
                    batch_size=32, teacher_steps=0, student_steps=0)
    else:
        plan = Plan(identities=1000, images_per_identity=20, pack_pairs=None, eval_pairs=0,
                    batch_size=32, teacher_steps=0, student_steps=0)
    folder = synth_data(plan, 0, data)
    packs = {p: load_eval_pack(folder / f"{p}.bin") for p in PACKS} if load_packs else {}
    return folder, packs, plan


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def packed_latency(models: list[str], rounds: int, per_round: int, work: Path) -> dict:
    """Median 1-thread batch-1 packed latency (ms) of each model, interleaved rounds."""
    import torch

    from binface.models import create_model
    from binface.runtime import export_packed, load_packed

    engines = {}
    for name in models:
        torch.manual_seed(0)
        path = work / "latency" / f"{name}.bfp"
        path.parent.mkdir(parents=True, exist_ok=True)
        export_packed(create_model(name).eval(), path)
        engines[name] = load_packed(path)
    x = np.random.default_rng(0).standard_normal((1, 3, 112, 112)).astype(np.float32)
    times: dict[str, list[float]] = {n: [] for n in models}
    for e in engines.values():
        for _ in range(5):
            e.run(x)
    for _ in range(rounds):
        for name, e in engines.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                e.run(x)
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {n: statistics.median(t) for n, t in times.items()}


def train_one(model: str, seed: int, steps: int, data: Path, run_dir: Path,
              n_train: int) -> dict:
    """Train one (model, seed); its checkpoint path and training images/s."""
    from binface.train.config import load_config
    from binface.train.loop import Trainer

    cfg = load_config(None, _overrides(model, seed, steps, data, run_dir, n_train))
    trainer = Trainer(cfg, overwrite=True)
    t0 = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - t0
    return {"checkpoint": str(run_dir / "last.pt"), "train_s": wall,
            "train_img_s": steps * 32 / wall}


def embed_packed(engine, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """L2-normalised flip-test embeddings of uint8 (N, H, W, 3) images in the packed engine
    (the preprocessing of ``binface.eval.embed_images``)."""
    from binface.progress import progress

    out = []
    for s in progress(range(0, len(images), batch), desc="embed (packed)", unit="batch",
                      leave=False):
        x = images[s:s + batch].transpose(0, 3, 1, 2).astype(np.float32)
        x = (x - 127.5) / 127.5
        e = engine.run(np.ascontiguousarray(x)) + engine.run(np.ascontiguousarray(x[..., ::-1]))
        out.append(e.reshape(len(x), -1).astype(np.float64))
    emb = np.concatenate(out)
    if not np.isfinite(emb).all():
        raise SystemExit("the packed engine produced NaN or infinite embeddings")
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def score(checkpoint: str, packs: dict, run_dir: Path, threads: int) -> dict:
    """Accuracy (%) on each pack, embedded by the packed engine."""
    from binface.eval.verification import verification_from_pack_embeddings
    from binface.runtime import export_packed, load_packed

    bfp = run_dir / "model.bfp"
    export_packed(checkpoint, bfp)
    engine = load_packed(bfp, threads=threads)
    acc = {}
    for name, pack in packs.items():
        res = verification_from_pack_embeddings(embed_packed(engine, pack.images), pack.issame)
        acc[name] = 100.0 * res["accuracy"]
    return acc


def cost(model: str) -> dict:
    from binface.models import create_model
    from binface.profile import profile

    t = profile(create_model(model)).totals
    return {"macs_1bit": int(t["macs_1bit"]), "macs_32bit": int(t["macs_32bit"]),
            "macs_runtime_binary": int(t["macs_runtime_binary"]),
            "memory_kib": round(float(t["memory_kib"]), 1)}


def mean_range(row: dict, pack: str) -> str:
    """A row's mean accuracy on ``pack``, with the range over seeds when there are two+."""
    seeds = [s[pack] for s in row["accuracy_seeds"]]
    spread = f" ({min(seeds):.2f}-{max(seeds):.2f})" if len(seeds) > 1 else ""
    return f"{row['accuracy'][pack]:.2f}{spread}"


def table(doc: dict) -> str:
    ref = next((r for r in doc["rows"] if r["model"] == "binaryfacenet"), None)
    lines = ["| model | " + " | ".join(PACKS) + " | packed ms | vs BinaryFaceNet | "
             "1-bit MACs | 32-bit MACs | KiB | train img/s |",
             "|---|" + "---|" * (len(PACKS) + 6)]
    for r in doc["rows"]:
        accs = [mean_range(r, p) for p in PACKS]
        rel = f"{r['packed_ms'] / ref['packed_ms']:.2f}x" if ref else "-"
        lines.append(f"| {r['model']} | " + " | ".join(accs) + f" | {r['packed_ms']:.2f} | {rel}"
                     f" | {r['macs_1bit'] / 1e6:.1f}M | {r['macs_32bit'] / 1e6:.1f}M | "
                     f"{r['memory_kib']:.0f} | {r['train_img_s']:.1f} |")
    return "\n".join(lines) + "\n"


def verdict(doc: dict) -> list[str]:
    """The issue's goal, computed: a BinaryFaceFormer above BinaryFaceNet on every pack
    (mean over seeds) at no more than 1.15x its packed latency."""
    rows = {r["model"]: r for r in doc["rows"]}
    ref = rows.get("binaryfacenet")
    out = []
    if ref is None:
        return out
    for name, r in rows.items():
        if not name.startswith("binaryfaceformer"):
            continue
        wins = [p for p in PACKS if r["accuracy"][p] > ref["accuracy"][p]]
        ratio = r["packed_ms"] / ref["packed_ms"]
        ok = len(wins) == len(PACKS) and ratio <= 1.15
        diffs = ", ".join(f"{p} {r['accuracy'][p] - ref['accuracy'][p]:+.2f}" for p in PACKS)
        out.append(f"- {name}: {diffs} points vs BinaryFaceNet, {ratio:.2f}x its packed "
                   f"latency: goal {'met' if ok else 'not met'}")
    return out


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from binface.fileio import write_with

    fig, axes = plt.subplots(1, len(PACKS), figsize=(4.2 * len(PACKS), 3.6), sharex=True)
    for ax, p in zip(axes, PACKS, strict=True):
        for r in doc["rows"]:
            seeds = [s[p] for s in r["accuracy_seeds"]]
            ax.errorbar(r["packed_ms"], r["accuracy"][p],
                        yerr=[[r["accuracy"][p] - min(seeds)], [max(seeds) - r["accuracy"][p]]],
                        fmt="o", capsize=3, label=r["model"])
        ax.set_title(p)
        ax.set_xlabel("packed latency, ms (1 thread)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("verification accuracy, %")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"binary attention vs BinaryFaceNet ({doc['budget_images']:,} images seen, "
                 f"seeds {doc['seeds']})", fontsize=9)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 80 identities, 200-pair packs, 16 steps, 1 seed")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--budget", type=int, default=24000, help="training images seen per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, help="a synthetic benchmark folder (default: cache)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "binary_attention")
    ap.add_argument("--out", type=Path, help="where binary_attention.json/.md/.png go "
                    "(default: docs/results; with --quick: the work folder)")
    args = ap.parse_args()

    import torch

    from binface.fileio import write_text

    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    budget = args.budget
    if args.quick:
        seeds, budget = seeds[:1], 16 * 32
        work = args.work.with_name(args.work.name + "_quick")
    else:
        work = args.work
    steps = -(-budget // 32)
    data, packs, plan = study_benchmark(args.quick, args.data)
    work.mkdir(parents=True, exist_ok=True)
    t_start, start_commit = time.perf_counter(), commit()

    print(f"[study] packed latency of {', '.join(models)} (1 thread, side by side)", flush=True)
    lat = packed_latency(models, rounds=3 if args.quick else 10,
                         per_round=5 if args.quick else 20, work=work)
    tag = {"recipe": RECIPE, "steps": steps, "data": str(data)}
    results: dict[tuple[str, int], dict] = {}
    for seed in seeds:
        for model in models:
            run_dir = work / f"{model}_s{seed}"
            done = run_dir / "result.json"
            if done.is_file():
                prev = json.loads(done.read_text())
                if prev.get("tag") == tag:
                    print(f"[study] reusing {done}", flush=True)
                    results[(model, seed)] = prev
                    continue
            print(f"[study] training {model}, seed {seed}: {steps} steps of 32", flush=True)
            r = train_one(model, seed, steps, data, run_dir,
                          plan.identities * plan.images_per_identity)
            print(f"[study] scoring {model}, seed {seed} on the full packs (packed engine)",
                  flush=True)
            r["accuracy"] = score(r["checkpoint"], packs, run_dir, args.threads)
            r["tag"] = tag
            r["commit"] = start_commit
            write_text(done, json.dumps(r, indent=2) + "\n")
            results[(model, seed)] = r
            print(f"[study] {model} seed {seed}: " + ", ".join(
                f"{p} {a:.2f}" for p, a in r["accuracy"].items())
                + f"; {r['train_img_s']:.1f} img/s", flush=True)

    rows = []
    for model in models:
        per_seed = [results[(model, s)]["accuracy"] for s in seeds]
        rows.append({
            "model": model,
            "accuracy": {p: round(float(np.mean([a[p] for a in per_seed])), 3) for p in PACKS},
            "accuracy_seeds": [{p: round(a[p], 3) for p in PACKS} for a in per_seed],
            "packed_ms": round(lat[model], 3),
            **cost(model),
            "train_img_s": round(float(np.mean([results[(model, s)]["train_img_s"]
                                                for s in seeds])), 2),
        })
    doc = {
        "command": "python benchmarks/binary_attention.py" + " ".join([""] + sys.argv[1:]),
        "commit": start_commit,
        "run_commits": sorted({results[k]["commit"] for k in results}),
        "recipe": RECIPE,
        "budget_images": steps * 32,
        "seeds": seeds,
        "data": {"identities": plan.identities, "images_per_identity": plan.images_per_identity,
                 "pairs": {p: int(len(packs[p].issame)) for p in PACKS},
                 "protocol": "insightface 10-fold, flip test"},
        "threads": args.threads,
        "torch": torch.__version__,
        "minutes": round((time.perf_counter() - t_start) / 60, 1),
        "rows": rows,
    }
    doc["verdict"] = verdict(doc)
    out = args.out or (work / "results" if args.quick else ROOT / "docs" / "results")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "binary_attention.json", json.dumps(doc, indent=2) + "\n")
    md = (f"# Binary attention vs BinaryFaceNet\n\nCommand: `{doc['command']}` at commit "
          f"`{doc['commit']}`; {doc['budget_images']:,} training images seen per run, seeds "
          f"{seeds}, {args.threads} threads, {doc['minutes']} min. Recipe: "
          + ", ".join(f"{k} {v}" for k, v in RECIPE.items())
          + ".\n\nAccuracy (%) on the full synthetic packs: mean over seeds (range). Packed "
          "latency: 1 thread, batch 1, median, all models side by side.\n\n"
          + table(doc) + "\n" + "\n".join(doc["verdict"]) + "\n")
    write_text(out / "binary_attention.md", md)
    plot(doc, out / "binary_attention.png")
    print(md)


if __name__ == "__main__":
    main()
