"""Study: what an attacker recovers from float, int8 and binary face models.

    python benchmarks/privacy.py               # full run: many hours on 2 cores (resumes)
    python benchmarks/privacy.py --quick       # smoke run, a few minutes
    nohup python benchmarks/privacy.py > privacy.log 2>&1 &
    python benchmarks/privacy.py --recorded-only   # report the recorded rows only

The seed's third avenue, measured with ``binface.privacy``'s attacks (docs/privacy.md):

- **Models**: one architecture at three precisions, QuickNetSmall at 32 bits
  (``quicknet_small_float``), at 8 bits (its QAT fine-tuning, ``train.qat=int8``) and at
  1 bit (``quicknet_small``), plus the zoo's MobileFaceNet, BinaryFaceNet and
  BinaryFaceFormer-sep. Each is attacked at its initialisation and after training on a
  small synthetic benchmark (the *members*), all with one recipe (Adam 2e-3, ArcFace
  s=16 m=0.3, batch 32); the int8 model at initialisation is the float one with its
  fake-quant ranges observed on 32 member faces.
- **Attacks**: gradient inversion of one training step at batch 1, 4 and 8 (labels,
  embedding at batch 1, images), template inversion of stored embeddings, and the
  confidence membership attack (members against a benchmark of other identities).
- **Defences** (the gradient a defended client sends; docs/privacy.md): gradient
  pruning (90%), sign compression and DP-SGD through Opacus (clipping norm 1, noise
  multiplier 0.001 and 1), on the trained float QuickNetSmall at batch 1.
- **Evaluator**: identity leakage is judged by an independent model, the distillation
  study's EdgeFace-XS teacher (another architecture, trained on other identities);
  its FMR = 0.1% threshold is set on the members' pack.

One gradient-inversion step is a double backward through the whole network at 112x112:
about 1-3 s on 2 cores at batch 1 (BinaryFaceFormer: 2.4 s on one loaded core), so the
default budget (8 faces x 3 seeds per row, 50 steps) makes a run of many hours. Every
(model, state, attack, batch) row is recorded in ``--records`` (default
``docs/results/privacy_runs/``, committed: one small JSON per row with its budget, the
training recipe of the attacked model, the commit and the CPU; the grid's
reconstructions as uint8) as it finishes, so the study can be finished over several
sessions: a recorded row is not run again, and a model is trained only when one of its
trained rows is still missing (in a later session, on another CPU, the same recipe may
give a model that differs in its last bits: each row records its checkpoint's sha256).
The evaluator is the distillation study's recorded EdgeFace-XS teacher file when its
record matches. Writes ``docs/results/privacy.json`` / ``.md`` and the grid PNG
(originals, then one row of gradient-inversion reconstructions per model).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import binary_attention as ba  # noqa: E402  (shared study helpers)
import distillation as ds  # noqa: E402  (training and the evaluator teacher)
import int8  # noqa: E402  (the QAT fine-tuning recipe)

ROOT = ba.ROOT
# (row label, zoo model, precision, trained from: None = scratch, else a label)
MODELS = (("quicknet_small_float", "quicknet_small_float", "float", None),
          ("quicknet_small_int8", "quicknet_small_float", "int8", "quicknet_small_float"),
          ("quicknet_small", "quicknet_small", "binary", None),
          ("mobilefacenet", "mobilefacenet", "float", None),
          ("binaryfacenet", "binaryfacenet", "binary", None),
          ("binaryfaceformer_sep", "binaryfaceformer_sep", "binary", None))
RECIPE = ["optim.name=adam", "optim.lr=0.002", "optim.weight_decay=0", "head.s=16",
          "head.m=0.3"]
EVALUATOR = "edgeface_xs"
# the optional defences, measured on one trained model at batch 1 (docs/privacy.md):
# gradient pruning, sign compression, and DP-SGD (Opacus) with a weak and a usual noise
DEFENDED = "quicknet_small_float"
DEFENCES = ("prune:0.9", "sign", "dp:1:0.001", "dp:1:1")
BATCHES = (1, 4, 8)
METRICS = {"gradient": ("label_accuracy", "psnr", "ssim", "embedding_cosine",
                        "identity_cosine", "identity_match_rate"),
           "template": ("success_attack_rate", "success_attack_rate_transferred", "psnr",
                        "ssim"),
           "membership": ("auc", "advantage")}


def _benchmarks(quick: bool):
    """Members (trained on, attacked) and a holdout of other identities."""
    from binface.demo import Plan, synth_data

    plan = Plan(identities=40 if quick else 100, images_per_identity=6 if quick else 10,
                pack_pairs=400 if quick else 2000, eval_pairs=0, batch_size=32,
                teacher_steps=0, student_steps=0)
    return synth_data(plan, 0), synth_data(plan, 1), plan


def _qat_init(model, faces):
    """A float model made int8 (fake-quant) with its ranges observed on ``faces``."""
    import torch

    from binface.nn.qat import prepare_qat

    model = prepare_qat(model)
    model.train()
    with torch.no_grad():
        model(faces)
    return model.eval()


def _trained(label: str, zoo: str, source: str | None, data: Path, images: int,
             qat_images: int, n_train: int, work: Path, ckpts: dict) -> str:
    over = ds.teacher_overrides(RECIPE, data, images, n_train)
    if source is not None:  # QAT: fine-tune the float checkpoint at a tenth of the rate
        over = int8.qat_overrides([*ds.teacher_overrides(RECIPE, data, qat_images, n_train),
                                   f"train.init={ckpts[source]}"])
    print(f"[privacy] training {label}", flush=True)
    return ds.train(zoo, over, work / f"train_{label}", {"overrides": over,
                                                         "data": str(data)})["checkpoint"]


def _save_faces(path: Path, shown: list) -> None:
    """The grid's first 8 originals and reconstructions as uint8 (N, H, W, 3), compressed
    (about 0.5 MB a row)."""
    import io

    import torch

    from binface.fileio import write_bytes
    from binface.privacy.faces import to_uint8

    buf = io.BytesIO()
    np.savez_compressed(buf, original=np.concatenate(
        [to_uint8(torch.as_tensor(a)) for a, _ in shown])[:8], reconstruction=np.concatenate(
        [to_uint8(b.detach()) for _, b in shown])[:8])
    write_bytes(path, buf.getvalue())


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, dict):
        key = "rate" if "rate" in v else "mean"
        return f"{v[key]:.3f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]"
    return f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny data and budgets")
    ap.add_argument("--models", default=",".join(m[0] for m in MODELS))
    ap.add_argument("--images", type=int, default=8, help="faces attacked per seed (at "
                    "least the largest batch)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50, help="inversion steps per restart")
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--train-images", type=int, default=8000, help="images seen in training")
    ap.add_argument("--qat-images", type=int, default=1600, help="QAT fine-tuning images")
    ap.add_argument("--membership-images", type=int, default=128,
                    help="faces per side of the membership attack, per seed")
    ap.add_argument("--recorded-only", action="store_true",
                    help="attack and train nothing: report the recorded rows and list the "
                    "missing ones (an interim report while the full run goes on)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "privacy")
    ap.add_argument("--teachers", type=Path, default=ROOT / "runs" / "distillation",
                    help="the distillation study's folder (its EdgeFace-XS is the evaluator)")
    ap.add_argument("--out", type=Path, help="default: docs/results (--quick: work folder)")
    ap.add_argument("--records", type=Path, default=ROOT / "docs" / "results" / "privacy_runs",
                    help="one JSON per finished row (default docs/results/privacy_runs; "
                    "--quick: in the work folder)")
    args = ap.parse_args()

    import torch

    from binface.compare import cpu_description
    from binface.data.verification import sha256
    from binface.fileio import write_text
    from binface.privacy.cli import run_gradient, run_membership, run_template
    from binface.privacy.faces import read_faces, to_tensor
    from binface.privacy.head import load_attack_target

    torch.set_num_threads(args.threads)
    chosen = [m for m in MODELS if m[0] in args.models.split(",")]
    images, seeds, steps, restarts = args.images, args.seeds, args.steps, args.restarts
    fmr, batches = 1e-3, BATCHES
    train_images, qat_images, m_images = args.train_images, args.qat_images, \
        args.membership_images
    work, teachers = args.work, args.teachers
    if args.quick:
        images, seeds, steps, restarts, fmr = 2, 1, 2, 1, 1e-2  # a small pack
        batches = (1, 2)
        if args.models == ",".join(m[0] for m in MODELS):  # one architecture, 3 precisions
            chosen = chosen[:3]
        train_images, qat_images, m_images = 64, 32, 16
        work = work.with_name(work.name + "_quick")
        teachers = work / "teachers"
        args.records = work / "records"
    records = args.records
    members, holdout, plan = _benchmarks(args.quick)
    n_train = plan.identities * plan.images_per_identity
    work.mkdir(parents=True, exist_ok=True)
    t_start, start_commit = time.perf_counter(), ba.commit()

    # the evaluator: the distillation study's transformer teacher (trained or reused)
    big, _, big_plan = ba.study_benchmark(args.quick, load_packs=False)  # training data only
    e_images = 64 if args.quick else ds.TEACHER_BUDGET[EVALUATOR]
    e_over = ds.teacher_overrides(ds.TEACHERS[EVALUATOR], big, e_images,
                                  big_plan.identities * big_plan.images_per_identity)
    print(f"[privacy] evaluator {EVALUATOR}", flush=True)
    e_tag = {"overrides": e_over, "data": str(big)}
    e_file = ROOT / "docs" / "results" / "distillation_runs" / f"teacher_{EVALUATOR}.pt"
    e_rec = ds.load_record(e_file.parent, e_file.stem, e_tag)
    if args.recorded_only:
        e_ckpt = None
    elif not args.quick and e_rec is not None and e_file.is_file() \
            and e_rec.get("sha256") == sha256(e_file):
        print(f"[privacy] evaluator: the distillation study's recorded {e_file}", flush=True)
        e_ckpt = str(e_file)
    else:
        e_ckpt = ds.train(EVALUATOR, e_over, teachers / f"teacher_{EVALUATOR}", e_tag)[
            "checkpoint"]
    evaluator = load_attack_target(e_ckpt).model if e_ckpt else None
    host = cpu_description()

    ckpts: dict[str, str] = {}
    rows, grid, missing = [], {}, []
    budget = {"gradient": {"images": images, "seeds": seeds, "steps": steps,
                           "restarts": restarts, "batches": list(batches),
                           "batchnorm": "auto (running at batch 1, batch otherwise)"},
              "template": {"images": images, "seeds": seeds, "steps": steps,
                           "restarts": restarts},
              "membership": {"images": m_images, "seeds": seeds}, "fmr": fmr,
              "train_images": train_images, "qat_images": qat_images}
    base_jobs = [("gradient", b, "none") for b in batches] + [("template", None, "none"),
                                                               ("membership", None, "none")]

    def jobs_of(label: str, trained: bool) -> list[tuple[str, int | None, str]]:
        defended = [("gradient", 1, d) for d in DEFENCES] if trained and label == DEFENDED \
            else []
        return base_jobs + defended

    def key_of(label: str, trained: bool, attack: str, batch: int | None,
               defence: str = "none") -> str:
        return f"{label}_{'trained' if trained else 'init'}_{attack}" + (
            f"_b{batch}" if batch else "") + (
            "" if defence == "none" else "_" + defence.replace(":", "-"))

    def want_of(label: str, trained: bool, attack: str, defence: str = "none") -> dict:
        """What a row depends on: the attack's budget and, trained, the recipe of the
        attacked model (its data, images seen and, for int8, the float model's)."""
        recipe = None
        if trained:
            source = next(m[3] for m in MODELS if m[0] == label)
            recipe = {"recipe": RECIPE, "data": str(members), "images": train_images,
                      "qat_images": qat_images if source else None, "from": source}
        b = budget[attack] if defence == "none" else {**budget[attack], "defence": defence}
        return json.loads(ds.portable({"budget": b, "trained": recipe}))

    def recorded(key: str, want: dict) -> dict | None:
        path = records / f"{key}.json"
        if path.is_file():
            rec = json.loads(path.read_text())
            if rec.get("want") == want:
                return rec
        return None

    for label, zoo, precision, source in chosen:
        for trained in (False, True):
            jobs = jobs_of(label, trained)
            todo = [(a, b, d) for a, b, d in jobs
                    if recorded(key_of(label, trained, a, b, d),
                                want_of(label, trained, a, d)) is None]
            if not todo or args.recorded_only:
                target = None
            elif trained:
                if source is not None and source not in ckpts:
                    src = next(m for m in MODELS if m[0] == source)
                    ckpts[source] = _trained(*src[:2], None, members, train_images,
                                             qat_images, n_train, work, ckpts)
                if label not in ckpts:
                    ckpts[label] = _trained(label, zoo, source, members, train_images,
                                            qat_images, n_train, work, ckpts)
                target = load_attack_target(ckpts[label])
            else:
                torch.manual_seed(0)
                target = load_attack_target(zoo, num_classes=plan.identities, seed=0)
                if precision == "int8":
                    faces, _ = read_faces(members, 32, seed=99)
                    target.model = _qat_init(target.model, to_tensor(faces))
                    target.precision = "int8"
            for attack, batch, defence in jobs:
                key = key_of(label, trained, attack, batch, defence)
                want = want_of(label, trained, attack, defence)
                rec = recorded(key, want)
                if rec is not None:
                    row = {**rec["row"], "commit": rec.get("commit"), "cpu": rec.get("cpu")}
                    print(f"[privacy] {key}: recorded", flush=True)
                elif args.recorded_only:
                    missing.append(key)
                    continue
                else:
                    print(f"[privacy] {key}", flush=True)
                    torch.manual_seed(0)
                    t0 = time.perf_counter()
                    if attack == "gradient":
                        metrics, shown = run_gradient(target, evaluator, members, None, images,
                                                      batch, seeds, steps, restarts, fmr=fmr,
                                                      defence=defence)
                    elif attack == "template":
                        metrics, shown = run_template(target, evaluator, members, None,
                                                      images, seeds, steps, restarts,
                                                      fmr=fmr)
                    else:
                        metrics, shown = run_membership(target, members, holdout, m_images,
                                                        seeds)
                    row = {"model": label, "architecture": zoo, "precision": precision,
                           "trained": trained, "attack": attack, "batch": batch,
                           **({"defence": defence} if defence != "none" else {}),
                           **{k: metrics.get(k) for k in METRICS[attack]},
                           "seconds": round(time.perf_counter() - t0, 1),
                           "commit": start_commit, "cpu": host}
                    records.mkdir(parents=True, exist_ok=True)
                    grid_row = trained and attack == "gradient" and batch == 1 \
                        and defence == "none"
                    if shown and grid_row:  # the grid's faces, small enough to commit
                        _save_faces(records / f"{key}.npz", shown)
                    write_text(records / f"{key}.json", json.dumps({
                        "want": want, "row": {k: v for k, v in row.items()
                                              if k not in ("commit", "cpu")},
                        "commit": start_commit, "cpu": host,
                        "checkpoint_sha256": sha256(ckpts[label])
                        if trained else None}, indent=1) + "\n")
                rows.append(row)
                if trained and attack == "gradient" and batch == 1 \
                        and (records / f"{key}.npz").is_file():
                    grid[label] = records / f"{key}.npz"

    doc = {"command": "python benchmarks/privacy.py" + " ".join([""] + sys.argv[1:]),
           "commit": start_commit, "budget": budget, "recipe": RECIPE,
           "members": {"identities": plan.identities, "images_per_identity":
                       plan.images_per_identity, "pack_pairs": plan.pack_pairs},
           "evaluator": {"model": EVALUATOR, "images": e_images,
                         "recipe": ds.TEACHERS[EVALUATOR]},
           "threads": args.threads, "torch": torch.__version__,
           "minutes": round((time.perf_counter() - t_start) / 60, 1), "rows": rows,
           "missing": missing}
    out = args.out or (work / "results" if args.quick else ROOT / "docs" / "results")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "privacy.json", json.dumps(doc, indent=2) + "\n")
    md = render(doc)
    write_text(out / "privacy.md", md)
    if grid:
        plot_grid(grid, out / "privacy.png")
    print(md)


def render(doc: dict) -> str:
    b = doc["budget"]
    lines = ["# Privacy of float, int8 and binary face models\n",
             f"Command: `{doc['command']}` at commit `{doc['commit']}`. Each row was recorded "
             f"by a run of this script (its commit and CPU are in privacy.json): commits "
             f"{', '.join(sorted({str(r.get('commit'))[:7] for r in doc['rows']}))}; "
             f"{sum(r.get('seconds') or 0 for r in doc['rows']) / 60:.0f} min of attacks in all. "
             f"Members: {doc['members']['identities']} identities x "
             f"{doc['members']['images_per_identity']} synthetic faces, models trained on "
             f"{b['train_images']:,} images (int8: QAT fine-tuning of the float model, "
             f"{b['qat_images']:,} images). Gradient and template inversion: "
             f"{b['gradient']['images']} faces x {b['gradient']['seeds']} seeds, "
             f"{b['gradient']['steps']} steps x {b['gradient']['restarts']} restart(s); "
             f"membership: {b['membership']['images']} faces per side x "
             f"{b['membership']['seeds']} seeds. Identity leakage judged by "
             f"{doc['evaluator']['model']} at FMR = {b['fmr']:g}. 95% intervals in brackets.\n"]
    for attack, cols in METRICS.items():
        rs = [r for r in doc["rows"] if r["attack"] == attack]
        if not rs:
            continue
        dcol = attack == "gradient"  # the defended client's rows
        lines += [f"## {attack}\n", "| model | precision | trained | batch | "
                  + ("defence | " if dcol else "") + " | ".join(cols) + " |",
                  "|---|---|---|---|" + ("---|" if dcol else "") + "---|" * len(cols)]
        for r in rs:
            lines.append(f"| {r['model']} | {r['precision']} | {'yes' if r['trained'] else 'no'}"
                         f" | {r['batch'] or '-'} | "
                         + (f"{r.get('defence', 'none')} | " if dcol else "")
                         + " | ".join(_cell(r[c]) for c in cols) + " |")
        lines.append("")
    if doc.get("missing"):
        lines.append(f"**Interim report** (`--recorded-only`): {len(doc['missing'])} rows are "
                     f"not recorded yet: {', '.join(doc['missing'])}.\n")
    lines.append("Leakage measured under these attacks and budgets; no row shows that a "
                 "model is private.")
    return "\n".join(lines) + "\n"


def plot_grid(grid: dict[str, Path], path: Path) -> None:
    """Originals on top, then one row of batch-1 reconstructions per trained model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from binface.fileio import write_with
    from binface.privacy.faces import to_uint8

    loaded = {k: np.load(v) for k, v in grid.items()}
    first = next(iter(loaded.values()))
    n = min(8, len(first["original"]))
    rows = [("original", first["original"])] + [(k, v["reconstruction"])
                                                for k, v in loaded.items()]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.3 * len(rows)), squeeze=False)
    for i, (name, arr) in enumerate(rows):
        # uint8 NHWC as recorded (older work folders held float NCHW)
        imgs = arr[:n] if arr.dtype == np.uint8 else to_uint8(torch.from_numpy(arr[:n]))
        for j in range(n):
            axes[i][j].imshow(imgs[j])
            axes[i][j].set_xticks([])
            axes[i][j].set_yticks([])
        axes[i][0].set_ylabel(name, fontsize=6)
    fig.suptitle("gradient inversion at batch 1 (trained models)", fontsize=8)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


if __name__ == "__main__":
    main()
