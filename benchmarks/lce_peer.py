"""binface's packed engine against the Larq Compute Engine, side by side (needs the lce extra).

For each binary model: export to ``.bfp`` and to LCE's ``.tflite`` (target "arm"),
then time both runtimes in turns (one worker process each, one thread, batch 1,
112x112, full model with its embedding head) and check the targets of the LCE issue:
packed at least 5x faster than LCE on QuickNet, QuickNetSmall and BinaryDenseNet28,
and at least 10x on BinaryFaceNet (which LCE runs entirely in float). Also prints how
many layers LCE runs in binary. Writes ``lce_peer.md``, ``lce_peer.json`` and
``lce_peer.png`` to ``--out``.

    pip install -e ".[lce]"
    python benchmarks/lce_peer.py                       # the four models of the targets
    python benchmarks/lce_peer.py quicknet --repeats 200 --torch
    git worktree add /tmp/before f15de84                # the engine as it was ...
    python benchmarks/lce_peer.py quicknet binaryfacenet --baseline /tmp/before/src

``--baseline SRC`` also times the packed engine of another binface source tree (an
older commit's ``src``) on the same .bfp files, in the same rounds, and reports the
ratio of today's engine to it, with the issue 17 targets (packed vs LCE: QuickNet >=
24x, BinaryFaceNet >= 40x; today's engine >= 2x the baseline) and this core's measured
xor + popcount peak.

On x86_64, LCE runs its portable C++ kernels (its optimised ones are aarch64 only), as
in docs/lce.md; on an ARM board use LCE's own benchmark tool (README).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

from tqdm import tqdm

from binface.runtime.bench import Job, popcount_peak, prepare, time_jobs

TARGETS = {"quicknet": 5.0, "quicknet_small": 5.0, "binary_densenet28": 5.0,
           "binaryfacenet": 10.0}
# issue 17: packed vs LCE, and today's engine against the baseline tree
TARGETS_17 = {"quicknet": 24.0, "binaryfacenet": 40.0}
TARGET_VS_BASELINE = 2.0


def lce_layers(name: str) -> dict:
    """Totals of the per-layer LCE report (binary layers and MACs)."""
    from binface.runtime.lce import export_lce

    with tempfile.TemporaryDirectory() as tmp:
        return export_lce(name, Path(tmp) / "m.tflite")["report"].totals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=list(TARGETS))
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--torch", action="store_true", help="also time PyTorch")
    ap.add_argument("--out", default="benchmarks/out")
    ap.add_argument("--baseline", metavar="SRC",
                    help="also time the packed engine of this binface source folder")
    args = ap.parse_args()
    runtimes = ["packed", "lce"] + (["torch"] if args.torch else [])
    rows = []
    for name in tqdm(args.models, desc="models", unit="model"):
        with tempfile.TemporaryDirectory(prefix="lce-peer-") as tmp:
            art = prepare(name, runtimes, tmp, None)
            jobs = [Job(r, str(art.path(r)), art.input_size) for r in runtimes]
            if args.baseline:
                jobs.append(Job("packed", str(art.path("packed")), art.input_size,
                                src=args.baseline))
            res = time_jobs(jobs, args.threads, 1, args.repeats, rounds=args.rounds)
        by = {r["runtime"]: r for r in res[:len(runtimes)]}
        tot = lce_layers(name)
        row = {"model": name, **{f"{rt}_ms": by[rt]["median_ms"] for rt in runtimes},
               **{f"{rt}_p90_ms": by[rt]["p90_ms"] for rt in runtimes},
               "speedup": by["lce"]["median_ms"] / by["packed"]["median_ms"],
               "target": TARGETS.get(name), "target_17": TARGETS_17.get(name),
               "lce_binary_layers": tot["binary_layers"], "lce_layers": tot["layers"]}
        if args.baseline:
            row["baseline_ms"] = res[-1]["median_ms"]
            row["vs_baseline"] = row["baseline_ms"] / row["packed_ms"]
        rows.append(row)
    head = ["model", "packed ms"] + (["baseline ms"] if args.baseline else []) + [
        "LCE ms"] + (["torch ms"] if args.torch else []) + [
        "LCE binary layers", "packed vs LCE", "target", "ok"]
    if args.baseline:
        head += ["packed vs baseline", "issue 17 targets", "ok (17)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ok_all = ok17_all = True
    for r in rows:
        ok = r["target"] is None or r["speedup"] >= r["target"]
        ok_all &= ok
        cells = [r["model"], f"{r['packed_ms']:.2f}"]
        if args.baseline:
            cells.append(f"{r['baseline_ms']:.2f}")
        cells.append(f"{r['lce_ms']:.2f}")
        if args.torch:
            cells.append(f"{r['torch_ms']:.2f}")
        cells += [f"{r['lce_binary_layers']} / {r['lce_layers']}", f"{r['speedup']:.1f}x",
                  f">= {r['target']:g}x" if r["target"] else "-", "yes" if ok else "NO"]
        if args.baseline:
            t17 = r["target_17"]
            ok17 = r["vs_baseline"] >= TARGET_VS_BASELINE and (t17 is None
                                                              or r["speedup"] >= t17)
            ok17_all &= ok17
            cells += [f"{r['vs_baseline']:.2f}x",
                      (f"vs LCE >= {t17:g}x, " if t17 else "") + f"vs baseline >= "
                      f"{TARGET_VS_BASELINE:g}x", "yes" if ok17 else "NO"]
        lines.append("| " + " | ".join(cells) + " |")
    peak = popcount_peak() / 1e9
    env = (f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s), batch 1, "
           f"112x112, median of {args.repeats} runs in {args.rounds} interleaved rounds; "
           f"this core's xor + popcount peak {peak:.0f} G binary MAC/s")
    if args.baseline:
        env += f"; baseline engine from {args.baseline}"
    table = "\n".join(lines)
    print(table)
    print(env)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lce_peer.md").write_text(table + "\n\n" + env + "\n")
    (out / "lce_peer.json").write_text(json.dumps({"env": env, "peak_gmacs": round(peak, 1),
                                                   "rows": rows}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [r["lce_ms"] for r in rows], 0.4, label="LCE 0.16")
    ax.barh([y - 0.2 for y in ys], [r["packed_ms"] for r in rows], 0.4,
            label="binface packed")
    ax.set_yticks(list(ys), [r["model"] for r in rows])
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log scale, 1 thread, batch 1)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "lce_peer.png", dpi=120)
    verdict = f"LCE issue's targets {'met' if ok_all else 'MISSED'}"
    if args.baseline:
        verdict += f"; issue 17's targets {'met' if ok17_all else 'MISSED'}"
    print(f"wrote {out / 'lce_peer.md'}, .json, .png; {verdict}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
