"""Study: 8-bit models, the seed's middle ground between float and binary.

    python benchmarks/int8.py                # full: about 70 min on 2 cores
    python benchmarks/int8.py --quick        # smoke run, a few minutes
    python benchmarks/int8.py --timing-only  # re-time every row on this CPU, ~10 min
    nohup python benchmarks/int8.py > int8.log 2>&1 &

For MobileFaceNet, EdgeFace-XS and GhostFaceNetV2 on the default synthetic benchmark
(1,000 identities x 20 images, full packs):

- fp32: the distillation study's teachers, trained or reused in its folder
  (``runs/distillation``, its recipes and budgets); GhostFaceNetV2 trained here with
  MobileFaceNet's SGD recipe and budget;
- PTQ: ONNX Runtime's static int8 (QDQ, U8S8 with per-channel weights, min/max)
  calibrated on 256 training faces (``binface export --int8 --calibrate``);
- QAT: the fp32 checkpoint fine-tuned with ``train.qat=int8`` (``train.init``) for
  ``--qat-budget`` images at a tenth of the fp32 learning rate, then exported with its
  learned scales.

Every variant is scored through ONNX Runtime on the full packs (10-fold; no flip test,
which would double the scoring time and is the same for every variant)
and timed side by side in interleaved rounds (1 thread, batch 1). To say where int8
loses speed, ONNX Runtime's own profiler gives each variant's time by op type.
Writes ``docs/results/int8.json`` / ``.md`` / ``.png`` with the command, commit and
budgets; training and scoring resume from ``--work`` (a variant is rescored only
when its exported file changed); the timing is always rerun, side by side. A run of
some ``--models`` keeps the other models' rows of an earlier ``int8.json`` (each row
names the command and commit that measured it), so the three models can be measured
in separate sessions. ``--timing-only`` keeps every row's accuracy and re-times all
rows side by side on this CPU, from files exported from a few training steps (latency
depends on the graph, not on the weights' values), so that speed ratios of models
measured in different sessions (and CPUs) come from one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import binary_attention as ba  # noqa: E402  (shared study helpers)
import distillation as ds  # noqa: E402  (the teachers' recipe and training)

ROOT = ba.ROOT
PACKS = ba.PACKS
MODELS = ("mobilefacenet", "edgeface_xs", "ghostfacenetv2")
RECIPES = {**ds.TEACHERS, "ghostfacenetv2": ds.TEACHERS["mobilefacenet"]}
VARIANTS = ("fp32", "ptq", "qat")
GOAL_POINTS, GOAL_SPEEDUP = 0.5, 1.5


BUDGETS = {**ds.TEACHER_BUDGET, "ghostfacenetv2": ds.TEACHER_BUDGET["mobilefacenet"]}


def qat_overrides(base: list[str]) -> list[str]:
    """The fp32 recipe at a tenth of its learning rate, fake-quantised (also privacy.py's)."""
    out = []
    for o in base:
        if o.startswith("optim.lr="):
            o = f"optim.lr={float(o.split('=', 1)[1]) / 10:g}"
        out.append(o)
    return [*out, "train.qat=int8"]


def op_times(path: Path, images: np.ndarray, runs: int) -> dict[str, float]:
    """Mean ms per image spent in each ONNX Runtime op type (its profiler, 1 thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.profile_file_prefix = str(path.with_suffix("")) + "_prof"
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = (images[:1].transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 127.5
    for _ in range(runs):
        sess.run(None, {name: x})
    prof = Path(sess.end_profiling())
    events = json.loads(prof.read_text())
    prof.unlink()
    out: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            out[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny data and budgets")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--budget", type=int, help="fp32 images seen (default: the distillation "
                    "study's teacher budgets, " + ", ".join(
                        f"{k} {v:,}" for k, v in BUDGETS.items()) + ")")
    ap.add_argument("--qat-budget", type=int, default=6400, help="QAT fine-tuning images")
    ap.add_argument("--calibration-images", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2, help="threads for training and scoring")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "int8")
    ap.add_argument("--teachers", type=Path, default=ROOT / "runs" / "distillation",
                    help="the distillation study's work folder (fp32 teachers reused)")
    ap.add_argument("--out", type=Path, help="default: docs/results (--quick: work folder)")
    ap.add_argument("--timing-only", action="store_true",
                    help="re-time every row of the existing int8.json on this CPU, side by "
                    "side (files exported from a few training steps), keep its accuracy")
    args = ap.parse_args()
    if args.timing_only:
        retime(args)
        return

    import torch

    from binface.compare import cpu_description
    from binface.data.verification import sha256
    from binface.eval.run import OnnxEmbedder, evaluate_pack
    from binface.fileio import write_text
    from binface.models.loading import load_model
    from binface.profile import profile
    from binface.runtime import export_onnx, export_onnx_int8

    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in RECIPES:
            raise SystemExit(f"unknown model {m!r}; the study has {', '.join(RECIPES)}")
    budget, qat_budget, calib = args.budget, args.qat_budget, args.calibration_images
    work, teachers = args.work, args.teachers
    if args.quick:
        budget, qat_budget, calib = 8 * 32, 4 * 32, 16
        work = work.with_name(work.name + "_quick")
        teachers = work / "none"
    data, packs, plan = ba.study_benchmark(args.quick)
    n_train = plan.identities * plan.images_per_identity
    work.mkdir(parents=True, exist_ok=True)
    t_start, start_commit = time.perf_counter(), ba.commit()
    qat_steps = -(-qat_budget // 32)

    files: dict[tuple[str, str], Path] = {}
    rows = []
    budgets = {}
    for m in models:
        budgets[m] = -(-(budget or BUDGETS[m]) // 32) * 32
        over = ds.teacher_overrides(RECIPES[m], data, budgets[m], n_train)
        tag = {"overrides": over, "data": str(data)}
        # the distillation study's teachers are trained (or reused) in its own folder
        fdir = teachers / f"teacher_{m}" if m in ds.TEACHERS else work / f"fp32_{m}"
        print(f"[int8] {m} fp32: {budgets[m]:,} images in {fdir}", flush=True)
        fp32 = ds.train(m, over, fdir, tag)["checkpoint"]
        qdir = work / f"qat_{m}"
        qover = qat_overrides([*ds.teacher_overrides(RECIPES[m], data, qat_steps * 32,
                                                         n_train), f"train.init={fp32}"])
        print(f"[int8] {m} QAT fine-tuning: {qat_steps} steps", flush=True)
        qat = ds.train(m, qover, qdir, {"overrides": qover, "data": str(data)})["checkpoint"]
        for variant in VARIANTS:
            path = work / f"{m}_{variant}.onnx"
            if variant == "fp32":
                export_onnx(fp32, path)
            elif variant == "ptq":
                export_onnx_int8(fp32, path, calibrate=data / "train.rec", images=calib)
            else:
                export_onnx_int8(qat, path)
            files[(m, variant)] = path
            digest = sha256(path)
            cache = work / f"{m}_{variant}.scored.json"
            if cache.is_file() and json.loads(cache.read_text())["sha256"] == digest:
                rows.append(json.loads(cache.read_text())["row"])
                print(f"[int8] {m} {variant}: scored before ({cache})", flush=True)
                continue
            lm = load_model(fp32 if variant != "qat" else qat)
            mem = profile(lm.model, lm.input_size, name=m,
                          precision="float" if variant == "fp32" else "int8").totals
            emb = OnnxEmbedder(path, threads=args.threads)
            acc, folds = {}, {}
            for p, pack in packs.items():
                r = evaluate_pack(emb, pack, batch_size=64, flip=False,
                                  progress=f"{m} {variant} {p}")
                acc[p], folds[p] = round(100 * r["accuracy"], 3), r["fold_accuracies"]
            print(f"[int8] {m} {variant}: " + ", ".join(f"{p} {a:.2f}" for p, a in acc.items()),
                  flush=True)
            rows.append({"model": m, "variant": variant, "accuracy": acc,
                         "fold_accuracies": folds, "memory_kib": round(mem["memory_kib"], 2),
                         "macs_kbit": int(mem["macs_kbit"]), "macs_32bit": int(mem["macs_32bit"]),
                         "file_kib": round(path.stat().st_size / 1024, 1)})
            write_text(cache, json.dumps({"sha256": digest, "row": rows[-1]}) + "\n")

    time_rows(rows, files, packs[PACKS[0]].images, args.quick)

    command = "python benchmarks/int8.py" + " ".join([""] + sys.argv[1:])
    host = cpu_description()
    for row in rows:
        row["command"], row["commit"], row["cpu"] = command, start_commit, host
    out = args.out or (work / "results" if args.quick else ROOT / "docs" / "results")
    rows, per_model = merge_earlier(out / "int8.json", rows, {
        "budget_images": budgets,
        "recipes": {m: RECIPES[m] for m in dict.fromkeys(r["model"] for r in rows)}})
    doc = {"command": command,
           "commit": start_commit, "budget_images": per_model["budget_images"],
           "qat_budget_images": qat_steps * 32, "calibration_images": calib,
           "recipes": per_model["recipes"],
           "threads": args.threads,
           "torch": torch.__version__, "minutes": round((time.perf_counter() - t_start) / 60, 1),
           "rows": rows}
    write_results(doc, out)


def write_results(doc: dict, out: Path) -> None:
    from binface.fileio import write_text

    doc["verdict"] = verdict(doc["rows"])
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "int8.json", json.dumps(doc, indent=2) + "\n")
    md = render(doc)
    write_text(out / "int8.md", md)
    plot(doc, out / "int8.png")
    print(md)


def time_rows(rows: list[dict], files: dict[tuple[str, str], Path], faces: np.ndarray,
              quick: bool) -> None:
    """Time every row's file side by side (interleaved rounds, ONNX Runtime, 1 thread)
    and profile where its time goes; sets the rows' ``onnx_ms``, ``onnx_p90_ms``,
    ``op_ms``."""
    from binface.runtime.bench import Job, time_jobs

    print("[int8] timing every variant side by side (ONNX Runtime, 1 thread)", flush=True)
    keys = [(r["model"], r["variant"]) for r in rows]
    res = time_jobs([Job("onnx", str(files[k])) for k in keys], threads=1, batch=1,
                    repeats=10 if quick else 100, warmup=5, rounds=5 if quick else 10,
                    progress="timing")
    for row, k, r in zip(rows, keys, res, strict=True):
        row["onnx_ms"] = round(r["median_ms"], 3)
        row["onnx_p90_ms"] = round(r["p90_ms"], 3)
        row["op_ms"] = {op: round(v, 3) for op, v in
                        list(op_times(files[k], faces, 5 if quick else 30).items())[:8]}


def retime(args: argparse.Namespace) -> None:
    """``--timing-only``: every row of the existing int8.json timed again, side by side on
    this CPU. The files come from the study's recipes trained for two steps (fp32, then
    QAT from it; PTQ calibrated on 16 faces): ONNX Runtime's time depends on the graph,
    which training does not change, not on the weights' values."""
    import torch

    from binface.compare import cpu_description
    from binface.runtime import export_onnx, export_onnx_int8

    torch.set_num_threads(args.threads)
    out = args.out or ROOT / "docs" / "results"
    src = out / "int8.json"
    try:
        doc = json.loads(src.read_text())
        rows = doc["rows"]
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"{src}: no study result to re-time ({e})") from None
    data, packs, plan = ba.study_benchmark(True)
    n_train = plan.identities * plan.images_per_identity
    work = args.work.with_name(args.work.name + "_timing")
    work.mkdir(parents=True, exist_ok=True)
    commit = ba.commit()
    files: dict[tuple[str, str], Path] = {}
    for m in dict.fromkeys(r["model"] for r in rows):
        over = ds.teacher_overrides(RECIPES[m], data, 64, n_train)
        fp32 = ds.train(m, over, work / f"fp32_{m}", {"overrides": over})["checkpoint"]
        qover = qat_overrides([*over, f"train.init={fp32}"])
        qat = ds.train(m, qover, work / f"qat_{m}", {"overrides": qover})["checkpoint"]
        files.update({(m, v): work / f"{m}_{v}.onnx" for v in VARIANTS})
        export_onnx(fp32, files[(m, "fp32")])
        export_onnx_int8(fp32, files[(m, "ptq")], calibrate=data / "train.rec", images=16)
        export_onnx_int8(qat, files[(m, "qat")])
    time_rows(rows, files, packs[PACKS[0]].images, quick=False)
    command = "python benchmarks/int8.py" + " ".join([""] + sys.argv[1:])
    host = cpu_description()
    for row in rows:  # "cpu" stays that of the run that measured the accuracy
        row["timing"] = {"command": command, "commit": commit, "cpu": host}
    doc["timing"] = {"command": command, "commit": commit, "cpu": host}
    write_results(doc, out)


def merge_earlier(path: Path, rows: list[dict], per_model: dict[str, dict]
                  ) -> tuple[list[dict], dict[str, dict]]:
    """This run's rows, then an earlier result's rows of the models this run left out
    (each row keeps the command and commit of the run that measured it: a study of three
    models can be finished over several sessions; within a model every figure, the
    side-by-side timing included, comes from one run). ``per_model`` maps a key of the
    result (``budget_images``, ``recipes``) to its {model: value}; the kept models take
    their values from the earlier result, as measured."""
    if not path.is_file():
        return rows, per_model
    try:
        old = json.loads(path.read_text())
        done = {r["model"] for r in rows}
        keep = [r for r in old["rows"] if r["model"] not in done and "commit" in r]
    except (ValueError, KeyError, TypeError):
        return rows, per_model
    kept = {r["model"] for r in keep}
    merged_per_model = {key: {**values, **{m: v for m, v in (old.get(key) or {}).items()
                                           if m in kept}}
                        for key, values in per_model.items()}
    order = {m: i for i, m in enumerate(MODELS)}
    merged = sorted(rows + keep, key=lambda r: (order.get(r["model"], 99),
                                                VARIANTS.index(r["variant"])))
    return merged, merged_per_model


def verdict(rows: list[dict]) -> list[str]:
    """The goal, computed: int8 within 0.5 points of fp32 on every pack, >= 1.5x faster."""
    by = {(r["model"], r["variant"]): r for r in rows}
    out = []
    for (m, v), r in by.items():
        if v == "fp32":
            continue
        base = by[(m, "fp32")]
        drops = {p: base["accuracy"][p] - r["accuracy"][p] for p in PACKS}
        speed = base["onnx_ms"] / r["onnx_ms"]
        ok_acc = all(d <= GOAL_POINTS for d in drops.values())
        ok_speed = speed >= GOAL_SPEEDUP
        worst = max(drops, key=drops.get)
        out.append(f"- {m} {v}: accuracy {'within' if ok_acc else 'not within'} "
                   f"{GOAL_POINTS} points (largest drop {drops[worst]:+.2f} on {worst}); "
                   f"{speed:.2f}x fp32's speed ({'meets' if ok_speed else 'misses'} "
                   f"{GOAL_SPEEDUP}x); where its time goes: " + ", ".join(
                       f"{op} {ms:.2f} ms" for op, ms in list(r["op_ms"].items())[:4]))
    return out


def render(doc: dict) -> str:
    lines = ["# 8-bit models: fp32, post-training int8, quantisation-aware int8\n",
             f"Command: `{doc['command']}` at commit `{doc['commit']}`; fp32 "
             + ", ".join(f"{m} {n:,}" for m, n in doc["budget_images"].items())
             + f" images seen, QAT fine-tuning {doc['qat_budget_images']:,} "
             f"images from fp32, PTQ calibrated on {doc['calibration_images']} training faces; "
             f"{doc['minutes']} min.\n",
             "Accuracy (%) on the full synthetic packs through ONNX Runtime (10-fold, no flip "
             "test); "
             "latency: median of single images, 1 thread, all variants timed side by side.\n",
             "| model | variant | " + " | ".join(PACKS) + " | onnx ms | memory KiB | file KiB |",
             "|---|---|" + "---|" * (len(PACKS) + 3)]
    for r in doc["rows"]:
        lines.append(f"| {r['model']} | {r['variant']} | "
                     + " | ".join(f"{r['accuracy'][p]:.2f}" for p in PACKS)
                     + f" | {r['onnx_ms']:.2f} | {r['memory_kib']:,.1f} | {r['file_kib']:,.1f} |")
    lines += ["", "Goal: int8 within 0.5 points of fp32 on every pack and at least 1.5x faster "
              "in ONNX Runtime.", "", *doc["verdict"], ""]
    if "timing" in doc:
        t = doc["timing"]
        lines += [f"Latency of every row re-measured side by side by `{t['command']}` at "
                  f"commit `{t['commit']}` (CPU: {t['cpu']}), from files of the same graphs "
                  "exported after two training steps (time depends on the graph, not on the "
                  "weights); accuracy from the runs below.", ""]
    earlier = sorted({(r["command"], r["commit"]) for r in doc["rows"]
                      if r.get("commit") != doc["commit"] and "command" in r})
    for cmd, commit in earlier:
        models = sorted({r["model"] for r in doc["rows"] if r.get("commit") == commit})
        cpus = sorted({r.get("cpu", "not recorded") for r in doc["rows"]
                       if r.get("commit") == commit})
        lines += [f"Rows of {', '.join(models)} are from an earlier run: `{cmd}` at commit "
                  f"`{commit}` (its CPU: {'; '.join(cpus)}).", ""]
    missing = [m for m in MODELS if m not in {r["model"] for r in doc["rows"]}]
    if missing:
        lines += [f"Not in this run: {', '.join(missing)} (the study's `--models` left "
                  "them out).", ""]
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from binface.fileio import write_with

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=110)
    marks = {"fp32": "o", "ptq": "s", "qat": "^"}
    for m in dict.fromkeys(r["model"] for r in doc["rows"]):
        rs = [r for r in doc["rows"] if r["model"] == m]
        xs = [r["onnx_ms"] for r in rs]
        ys = [float(np.mean([r["accuracy"][p] for p in PACKS])) for r in rs]
        line = ax.plot(xs, ys, "-", lw=0.8, alpha=0.5)[0]
        for r, x, y in zip(rs, xs, ys, strict=True):
            ax.plot(x, y, marks[r["variant"]], color=line.get_color(),
                    label=f"{m} {r['variant']}")
    ax.set_xlabel("ONNX Runtime latency, ms (1 thread)")
    ax.set_ylabel("mean accuracy over the packs, %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    main()
