"""``binface privacy {gradient,template,membership} MODEL``: one attack, measured, reported.

Each run writes ``report.json`` (the metrics with their 95% intervals, the attack's
budget, the model), ``report.md`` and, for the reconstruction attacks, ``grid.png``
(originals above, reconstructions below) into ``--out``. A zoo name is attacked at its
initialisation with a random head; a checkpoint with its own head. Faces come from
``--data`` (a training ``.rec`` or a synthetic benchmark folder), by default a small
synthetic benchmark generated into the cache.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from binface.cli_args import positive_int
from binface.errors import BinfaceError
from binface.fileio import OVERWRITE_FLAG, check_outputs, write_text, write_with

OUTPUTS = ("report.json", "report.md", "grid.png")
ATTACKS = ("gradient", "template", "membership")


# ---------------------------------------------------------------- data
def default_data(seed: int = 0) -> Path:
    """A small synthetic benchmark (60 identities x 6, packs of 2,000 pairs), cached."""
    from binface.demo import Plan, synth_data

    plan = Plan(identities=60, images_per_identity=6, pack_pairs=2000, eval_pairs=2000,
                batch_size=32, teacher_steps=0, student_steps=0)
    return synth_data(plan, seed)


def _pack(path: Path | None, data: Path) -> tuple[np.ndarray, np.ndarray]:
    from binface.data.verification import load_pack

    p = path or (data / "synth_lfw.bin" if data.is_dir() else None)
    if p is None or not Path(p).is_file():
        raise BinfaceError(f"{p or data}: no verification pack to set the FMR threshold "
                           "(give --pack PACK.bin)")
    return load_pack(p)


# ---------------------------------------------------------------- attacks
def run_gradient(target, evaluator, data: Path, pack: Path | None, images: int, batch: int,
                 seeds: int, steps: int, restarts: int, progress: bool = True,
                 bn: str = "auto", fmr: float = 1e-3, defence: str = "none"
                 ) -> tuple[dict, list]:
    """Label, embedding and image recovery from observed training-step gradients.

    ``bn``: the BatchNorm statistics of the observed step, "batch" (a plain training
    step) or "running" (frozen statistics); "auto" takes running ones at batch 1, where
    batch statistics of one face make the output of a final BatchNorm (MobileFaceNet's
    embedding) a constant, and batch ones otherwise. ``defence``: what the client sends
    instead of its gradient (:func:`binface.privacy.gradient.defend`)."""
    import torch

    from binface.privacy.faces import read_faces, to_tensor
    from binface.privacy.gradient import (
        HEAD_KEY,
        defend,
        dp_gradients,
        invert_gradients,
        label_accuracy,
        observe_gradients,
        parse_defence,
        recover_embedding,
        recover_labels,
        step_embedding,
    )
    from binface.privacy.metrics import need, psnr, rate, ssim, summary
    from binface.privacy.template import embed, threshold_at_fmr

    if target.head is None:
        raise BinfaceError(f"{target.name}: no margin head (class centres) to take a "
                           "gradient through: give a checkpoint saved by binface train, or "
                           "a zoo name")
    if batch > images:
        raise BinfaceError(f"--batch {batch} is larger than --images {images}")
    kind, dp = parse_defence(defence)  # a bad spec fails before any work
    optimize = need("scipy.optimize")
    if kind == "dp":
        need("opacus.optimizers")
        if bn == "batch":
            raise BinfaceError("--defence dp takes the step with BatchNorm on running "
                               "statistics (per-sample gradients): drop --bn batch")
    thr_e = threshold_at_fmr(evaluator, *_pack(pack, data), fmr) if evaluator else None
    train = kind != "dp" and (bn == "batch" or (bn == "auto" and batch > 1))
    hits = total = 0
    ps, ss, ecos, icos, matches, shown = [], [], [], [], [], []
    for seed in range(seeds):
        faces, labels = read_faces(data, images, seed=seed)
        labels = labels % target.head.num_classes
        for start in range(0, images - batch + 1, batch):
            x = to_tensor(faces[start:start + batch])
            y = torch.from_numpy(labels[start:start + batch])
            if kind == "dp":  # per-sample clipping and noise (Opacus)
                obs = dp_gradients(target.model, target.head, x, y, *dp,
                                   seed=seed * 1000 + start)
            else:
                obs = defend(observe_gradients(target.model, target.head, x, y,
                                               train=train), defence)
            got = recover_labels(obs[HEAD_KEY], batch)
            hits += round(label_accuracy(y, got) * batch)
            total += batch
            if batch == 1:
                e = recover_embedding(target.head.weight, obs[HEAD_KEY], int(got[0]))
                ecos.append(float(e @ step_embedding(target.model, x, train)[0]))
            rec, _ = invert_gradients(target.model, target.head, obs, got, tuple(x.shape),
                                      steps=steps, restarts=restarts, seed=seed, train=train,
                                      progress=f"invert seed {seed} images {start}" if
                                      progress else False)
            # reconstructions come in the recovered labels' order: pair them with the
            # originals that they resemble most (Hungarian assignment on PSNR)
            cost = np.array([[-psnr(o, r) for r in rec.numpy()] for o in x.numpy()])
            rows, cols = optimize.linear_sum_assignment(cost)
            ps += (-cost[rows, cols]).tolist()  # rows are 0..B-1 in order
            rec = rec[cols[np.argsort(rows)]]
            for o, r in zip(x.numpy(), rec.numpy(), strict=True):
                ss.append(ssim(o, r))
            if evaluator is not None:
                c = (embed(evaluator, rec) * embed(evaluator, x)).sum(1)
                icos += c.tolist()
                matches += (c >= thr_e["threshold"]).tolist()
            if len(shown) < 8:
                shown.append((x, rec))
    out = {"label_accuracy": rate(hits, total), "psnr": summary(ps), "ssim": summary(ss),
           "embedding_cosine": summary(ecos) if ecos else None,
           "identity_cosine": summary(icos) if icos else None,
           "identity_match_rate": rate(int(sum(matches)), len(matches)) if matches else None,
           "evaluator_threshold": thr_e, "batchnorm": "batch" if train else "running",
           "defence": defence}
    return out, shown


def run_template(target, evaluator, data: Path, pack: Path | None, images: int, seeds: int,
                 steps: int, restarts: int, progress: bool = True, fmr: float = 1e-3
                 ) -> tuple[dict, list]:
    """Faces rebuilt from their embeddings; success at the FMR = 0.1% thresholds."""
    from binface.privacy.faces import read_faces, to_tensor
    from binface.privacy.metrics import psnr, rate, ssim, summary
    from binface.privacy.template import embed, invert_template, threshold_at_fmr

    pair_images, issame = _pack(pack, data)
    thr = threshold_at_fmr(target.model, pair_images, issame, fmr)
    thr_e = threshold_at_fmr(evaluator, pair_images, issame, fmr) if evaluator else None
    same, trans, ps, ss, shown = [], [], [], [], []
    for seed in range(seeds):
        faces, _ = read_faces(data, images, seed=seed)
        x = to_tensor(faces)
        t = embed(target.model, x)
        rec, info = invert_template(target.model, t, tuple(x.shape), steps=steps,
                                    restarts=restarts, seed=seed,
                                    progress=f"invert seed {seed}" if progress else False)
        same += [c >= thr["threshold"] for c in info["cosine"]]
        if evaluator is not None:
            c = (embed(evaluator, rec) * embed(evaluator, x)).sum(1)
            trans += (c >= thr_e["threshold"]).tolist()
        for o, r in zip(x.numpy(), rec.numpy(), strict=True):
            ps.append(psnr(o, r))
            ss.append(ssim(o, r))
        shown.append((x[:8], rec[:8]))
    return {"success_attack_rate": rate(int(sum(same)), len(same)),
            "success_attack_rate_transferred": rate(int(sum(trans)), len(trans)) if trans
            else None, "threshold": thr, "evaluator_threshold": thr_e,
            "psnr": summary(ps), "ssim": summary(ss)}, shown


def run_membership(target, data: Path, holdout: Path, images: int, seeds: int
                   ) -> tuple[dict, list]:
    """The confidence attack on ``data``'s identities (members) vs ``holdout``'s."""
    from binface.privacy.faces import read_faces, to_tensor
    from binface.privacy.membership import membership_attack, membership_scores

    if Path(data).resolve() == Path(holdout).resolve():
        raise BinfaceError("--holdout must hold other identities than --data")
    per = []
    for seed in range(seeds):
        a, _ = read_faces(data, images, seed=seed)
        b, _ = read_faces(holdout, images, seed=seed)
        per.append(membership_attack(membership_scores(target.model, target.head, to_tensor(a)),
                                     membership_scores(target.model, target.head, to_tensor(b)),
                                     seed=seed))
    out = dict(per[0]) if seeds == 1 else {
        "auc": float(np.mean([p["auc"] for p in per])),
        "auc_ci95": [float(np.mean([p["auc_ci95"][0] for p in per])),
                     float(np.mean([p["auc_ci95"][1] for p in per]))],
        "advantage": float(np.mean([p["advantage"] for p in per])),
        "advantage_ci95": [float(np.mean([p["advantage_ci95"][0] for p in per])),
                           float(np.mean([p["advantage_ci95"][1] for p in per]))]}
    out["per_seed"] = per
    return out, []


# ---------------------------------------------------------------- outputs
def plot_grid(shown: list, path: Path, title: str) -> None:
    """Originals (top) and reconstructions (bottom), up to 8 faces."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from binface.privacy.faces import to_uint8

    orig = np.concatenate([to_uint8(a) for a, _ in shown])[:8]
    rec = np.concatenate([to_uint8(b) for _, b in shown])[:8]
    n = len(orig)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 2.9), squeeze=False)
    for j in range(n):
        for i, img in enumerate((orig[j], rec[j])):
            axes[i][j].imshow(img)
            axes[i][j].axis("off")
    axes[0][0].set_title("original", fontsize=7, loc="left")
    axes[1][0].set_title("reconstruction", fontsize=7, loc="left")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    try:
        write_with(path, fig.savefig)
    finally:
        plt.close(fig)


def _fmt(v) -> str:
    if isinstance(v, dict) and "ci95" in v:
        key = "rate" if "rate" in v else "mean"
        return f"{v[key]:.3f} [{v['ci95'][0]:.3f}, {v['ci95'][1]:.3f}]"
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def render(report: dict) -> str:
    lines = [f"# binface privacy {report['attack']}: {report['model']}", "",
             f"`{report['command']}`", "",
             f"Model {report['model']} ({report['precision']}, "
             f"{'trained' if report['trained'] else 'at initialisation'}); budget: "
             + ", ".join(f"{k} {v}" for k, v in report["budget"].items()) + ".", "",
             "| metric | value [95% interval] |", "|---|---|"]
    for k, v in report["metrics"].items():
        if k in ("per_seed", "threshold", "evaluator_threshold"):
            continue
        if k.endswith("_ci95"):
            continue
        if k in ("auc", "advantage"):
            ci = report["metrics"][f"{k}_ci95"]
            lines.append(f"| {k} | {v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] |")
        else:
            lines.append(f"| {k} | {_fmt(v)} |")
    lines += ["", "Leakage measured under this attack and budget; not a proof of privacy."]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    import torch

    from binface.privacy.head import load_attack_target

    out = Path(args.out or f"privacy-{args.attack}")
    check_outputs([out / n for n in OUTPUTS], inputs=[args.model], overwrite=args.overwrite)
    data = Path(args.data) if args.data else default_data()
    if not data.exists():
        raise BinfaceError(f"{data}: no such data")
    from binface.data.recordio import read_property

    rec = data / "train.rec" if data.is_dir() else data
    prop = read_property(rec.with_name("property")) if rec.with_name("property").is_file() \
        else None
    classes = prop[0] if prop else args.classes
    target = load_attack_target(args.model, num_classes=classes, seed=0)
    evaluator = None
    if getattr(args, "evaluator", None):
        evaluator = load_attack_target(args.evaluator).model
    torch.manual_seed(0)
    t0 = time.perf_counter()
    budget = {"images": args.images, "seeds": args.seeds}
    if args.attack == "gradient":
        budget.update(batch=args.batch, steps=args.steps, restarts=args.restarts,
                      batchnorm=args.bn, fmr=args.fmr, defence=args.defence)
        metrics, shown = run_gradient(target, evaluator, data, args.pack and Path(args.pack),
                                      args.images, args.batch, args.seeds, args.steps,
                                      args.restarts, bn=args.bn, fmr=args.fmr,
                                      defence=args.defence)
    elif args.attack == "template":
        budget.update(steps=args.steps, restarts=args.restarts, fmr=args.fmr)
        metrics, shown = run_template(target, evaluator, data, args.pack and Path(args.pack),
                                      args.images, args.seeds, args.steps, args.restarts,
                                      fmr=args.fmr)
    else:
        holdout = Path(args.holdout) if args.holdout else default_data(seed=1)
        metrics, shown = run_membership(target, data, holdout, args.images, args.seeds)
    report = {"attack": args.attack, "model": target.name, "spec": str(args.model),
              "precision": target.precision, "family": target.family,
              "trained": target.trained, "evaluator": getattr(args, "evaluator", None),
              "data": str(data), "budget": budget, "metrics": metrics,
              "seconds": round(time.perf_counter() - t0, 1),
              "command": "binface " + shlex.join(sys.argv[1:])}
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "report.md", render(report))
    if shown:
        plot_grid(shown, out / "grid.png", f"{args.attack} inversion of {target.name} "
                  f"({target.precision})")
    print(json.dumps(report, indent=2) if args.json else render(report), end="")
    if not args.json:
        print(f"wrote {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "privacy", help="measure what an attacker recovers from a face model",
        description="Gradient inversion (labels, embedding, images from one training step's "
        "gradient), template inversion (a face from a stored embedding) or membership "
        "inference (training vs held-out identities), with 95%% intervals. Needs the "
        "`privacy` extra (scikit-image, SciPy). See docs/privacy.md.")
    s = p.add_subparsers(dest="attack", required=True, metavar="ATTACK")
    for name in ATTACKS:
        a = s.add_parser(name, help={"gradient": "rebuild a training batch from its gradient",
                                     "template": "rebuild faces from stored embeddings",
                                     "membership": "tell training identities from others"}[
                                         name])
        a.add_argument("model", help="zoo name (attacked at initialisation) or checkpoint")
        a.add_argument("--data", help="training .rec or synthetic benchmark folder (default: "
                       "a small synthetic benchmark in the cache)")
        a.add_argument("--images", type=positive_int, default=16,
                       help="faces attacked per seed (default 16)")
        a.add_argument("--seeds", type=positive_int, default=1, help="seeds (default 1)")
        a.add_argument("--out", help=f"output folder (default privacy-{name})")
        a.add_argument("--json", action="store_true", help="print the JSON report")
        a.add_argument("--classes", type=positive_int, default=60,
                       help="classes of the random head of a zoo name when --data has no "
                       "property file (default 60)")
        a.add_argument(OVERWRITE_FLAG, action="store_true", help="replace an earlier report")
        if name in ("gradient", "template"):
            a.add_argument("--steps", type=positive_int, default=200,
                           help="optimisation steps per restart (default 200)")
            a.add_argument("--restarts", type=positive_int, default=1,
                           help="restarts; the best is kept (default 1)")
            a.add_argument("--evaluator", help="an independent checkpoint (another "
                           "architecture, trained separately) that judges identity leakage")
            a.add_argument("--pack", help="verification pack for the FMR thresholds "
                           "(default: the benchmark's synth_lfw.bin)")
            a.add_argument("--fmr", type=float, default=1e-3, help="false match rate of the "
                           "thresholds (default 0.001; the pack needs 1/FMR impostor pairs)")
        if name == "gradient":
            a.add_argument("--batch", type=positive_int, default=1,
                           help="images per observed training step (default 1)")
            a.add_argument("--bn", choices=["auto", "batch", "running"], default="auto",
                           help="BatchNorm statistics of the observed step (auto: running "
                           "at batch 1, batch otherwise)")
            a.add_argument("--defence", default="none", metavar="D",
                           help="what the client sends instead of its gradient: none, "
                           "prune:P (the share P of smallest entries zeroed), sign (sign "
                           "compression) or dp:C:SIGMA (DP-SGD through Opacus: per-sample "
                           "clipping to norm C, noise SIGMA x C; BatchNorm on running "
                           "statistics); default none")
        if name == "membership":
            a.add_argument("--holdout", help="faces of identities the model never saw "
                           "(default: a synthetic benchmark with another seed)")
        a.set_defaults(func=run)
