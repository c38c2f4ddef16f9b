"""Latency of the whole zoo in every runtime (torch, onnx, packed), a table and a chart.

For each model, ``binface.runtime.bench.run_bench`` exports what ONNX Runtime and
the packed engine need, then times the runtimes in turns (one worker process per
runtime, so background load hits them alike), one thread, batch 1, 112x112. It
writes ``runtime.md`` (the table), ``runtime.json`` and ``runtime.png`` (a latency
chart, no accuracy) to ``--out``, checks the speed targets of the runtime issue,
and prints the binary MACs per second of every binary layer of QuickNet.

    python benchmarks/runtime.py                          # the whole zoo
    python benchmarks/runtime.py quicknet binaryfacenet mobilefacenet --repeats 100
    python benchmarks/runtime.py --family binary --layers quicknet
    python benchmarks/runtime.py --layers '' \\
        --thread-scaling quicknet,binaryfacenet,binaryfaceformer_sep   # threads only

Timings on a shared machine are noisy; compare runtimes within one row (measured
side by side), and re-run when ``uptime`` shows a low load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from binface.models import list_models, model_info
from binface.runtime.bench import layer_times, run_bench

TARGETS = {  # model: minimum packed speed-up over PyTorch (float execution), one thread
    "quicknet": 3.0, "quicknet_small": 3.0, "binary_densenet28": 3.0, "binaryfacenet": 2.0,
}


def bench_zoo(names: list[str], runtimes: list[str], threads: int, repeats: int,
              rounds: int) -> list[dict]:
    rows = []
    for name in tqdm(names, desc="models", unit="model"):
        family = model_info(name).family
        row = {"model": name, "family": family, "results": {}, "errors": {}}
        try:  # one run_bench per model: all its runtimes side by side
            res = run_bench(name, runtimes, threads=threads, batch=1, repeats=repeats,
                            rounds=rounds)
            row["results"] = {r["runtime"]: r for r in res["results"]}
        except Exception as exc:  # noqa: BLE001 - e.g. an op one runtime lacks: go per runtime
            for rt in runtimes:
                try:
                    res = run_bench(name, [rt], threads=threads, batch=1, repeats=repeats,
                                    rounds=rounds)
                    row["results"][rt] = res["results"][0]
                except Exception as exc2:  # noqa: BLE001
                    row["errors"][rt] = str(exc2).splitlines()[0][:120]
            if not row["results"]:
                row["errors"]["all"] = str(exc).splitlines()[0][:120]
        rows.append(row)
    return rows


def render_table(rows: list[dict], runtimes: list[str]) -> str:
    head = "| model | family | " + " | ".join(f"{r} ms" for r in runtimes)
    if "torch" in runtimes:
        head += " | " + " | ".join(f"{r} vs torch" for r in runtimes if r != "torch")
    head += " | packed peak RSS MB |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        res = row["results"]
        cells = [f"{res[r]['median_ms']:.2f}" if r in res else "-" for r in runtimes]
        if "torch" in runtimes:
            t = res.get("torch", {}).get("median_ms")
            cells += [f"{t / res[r]['median_ms']:.1f}x" if t and r in res else "-"
                      for r in runtimes if r != "torch"]
        cells.append(f"{res['packed']['peak_rss_mb']:.0f}" if "packed" in res else "-")
        lines.append(f"| {row['model']} | {row['family']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check_targets(rows: list[dict]) -> list[str]:
    by = {r["model"]: r["results"] for r in rows}
    out = []
    for name, need in TARGETS.items():
        res = by.get(name, {})
        if "torch" in res and "packed" in res:
            sp = res["torch"]["median_ms"] / res["packed"]["median_ms"]
            out.append(f"{name}: packed {res['packed']['median_ms']:.2f} ms, torch "
                       f"{res['torch']['median_ms']:.2f} ms, {sp:.1f}x (target >= {need:g}x) "
                       f"{'OK' if sp >= need else 'MISSED'}")
    bfn = by.get("binaryfacenet", {}).get("packed")
    mfn = by.get("mobilefacenet", {}).get("onnx")
    if bfn and mfn:
        ok = bfn["median_ms"] < mfn["median_ms"]
        out.append(f"binaryfacenet packed {bfn['median_ms']:.2f} ms vs mobilefacenet onnx "
                   f"{mfn['median_ms']:.2f} ms: {'OK' if ok else 'MISSED'}")
    return out


def chart(rows: list[dict], runtimes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["model"] for r in rows]
    y = np.arange(len(names))
    h = 0.8 / len(runtimes)
    colors = {"torch": "#d62728", "onnx": "#1f77b4", "packed": "#2ca02c"}
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.5))
    for k, rt in enumerate(runtimes):
        vals = [r["results"].get(rt, {}).get("median_ms", np.nan) for r in rows]
        ax.barh(y + (k - (len(runtimes) - 1) / 2) * h, vals, height=h, label=rt,
                color=colors.get(rt))
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median latency, ms (log scale), batch 1, 112x112")
    ax.set_title(title)
    ax.legend(loc="lower right")
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


THREAD_TARGETS = {1: 1.6, 16: 1.8}  # batch: minimum 2-thread speed-up over 1 thread


def thread_scaling(names: list[str], threads: int, images: int, rounds: int) -> list[dict]:
    """The packed engine on 1 and ``threads`` threads, side by side (one worker process
    per thread count, ``rounds`` rounds alternating between them), at batch 1 and 16:
    ``images`` images per thread count at each batch (``images // 16`` runs of 16).

    Many short rounds, not a few long ones: this VM's host changes what the two vCPUs
    get every few seconds (``benchmarks/thread_phases.py``), so a figure from one or
    two seconds says more about the moment than about the engine."""
    from binface.runtime import export_packed
    from binface.runtime.bench import Job, time_jobs

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in tqdm(names, desc="thread scaling", unit="model"):
            path = str(Path(tmp) / f"{name}.bfp")
            export_packed(name, path)
            ms = {}
            for b in THREAD_TARGETS:
                res = time_jobs([Job("packed", path, threads=t, batch=b)
                                 for t in (1, threads)],
                                repeats=max(rounds, images // b), rounds=rounds)
                ms.update({f"batch{b}_threads{t}_ms": r["median_ms"]
                           for t, r in zip((1, threads), res, strict=True)})
            rows.append({"model": name, "threads": threads, **ms, "speedup": {
                b: round(ms[f"batch{b}_threads1_ms"] / ms[f"batch{b}_threads{threads}_ms"], 3)
                for b in THREAD_TARGETS}})
    return rows


def thread_lines(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        t = r["threads"]
        parts = []
        for b, need in THREAD_TARGETS.items():
            sp = r["speedup"][b]
            parts.append(f"batch {b}: {r[f'batch{b}_threads1_ms']:.2f} -> "
                         f"{r[f'batch{b}_threads{t}_ms']:.2f} ms, {sp:.2f}x (target >= "
                         f"{need:g}x) {'OK' if sp >= need else 'MISSED'}")
        out.append(f"{r['model']} packed, 1 vs {t} threads: " + "; ".join(parts))
    return out


def print_layers(name: str, repeats: int) -> list[dict]:
    """Per-layer time and binary MACs per second of one binary model in the packed engine."""
    from binface.runtime import export_packed, load_packed

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.bfp"
        export_packed(name, path)
        eng = load_packed(path, threads=1)
        x = np.random.default_rng(0).standard_normal((1, 3, 112, 112), dtype=np.float32)
        rows = layer_times(eng, x, repeats)
    print(f"\n{name}: binary layers in the packed engine (batch 1, one thread, median of "
          f"{repeats})")
    print(f"{'layer':<28} {'kernel':>7} {'binary MACs':>13} {'ms':>8} {'G binary MACs/s':>16}")
    for r in rows:
        if r["macs_1bit"]:
            k = "x".join(str(v) for v in r["kernel"]) if r["kernel"] else ""
            print(f"{(r['source'] or r['name'])[:28]:<28} {k:>7} {r['macs_1bit']:>13,} "
                  f"{r['ms']:>8.3f} {r['gmacs_per_s']:>16.0f}")
    tot = sum(r["ms"] for r in rows)
    b = [r for r in rows if r["macs_1bit"]]
    print(f"all ops {tot:.3f} ms; binary layers {sum(r['ms'] for r in b):.3f} ms for "
          f"{sum(r['macs_1bit'] for r in b):,} binary MACs")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", help="model names (default: the whole zoo)")
    p.add_argument("--family", choices=["cnn", "hybrid", "binary"])
    p.add_argument("--runtime", default="torch,onnx,packed")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--layers", default="quicknet", help="comma-separated models whose binary "
                   "layers to time one by one ('' for none)")
    p.add_argument("--out", default="runs/benchmarks", help="folder for the table and chart "
                   "(default runs/benchmarks, git-ignored)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--thread-scaling", default="", help="comma-separated models timed in "
                   "the packed engine on 1 and --scaling-threads threads, batch 1 and 16, "
                   "side by side (e.g. quicknet,binaryfacenet,binaryfaceformer_sep)")
    p.add_argument("--scaling-threads", type=int, default=2)
    p.add_argument("--scaling-images", type=int, default=2000, help="images per thread "
                   "count and batch size in --thread-scaling")
    p.add_argument("--scaling-rounds", type=int, default=40)
    args = p.parse_args(argv)
    # --thread-scaling alone: only that
    names = args.models or ([] if args.thread_scaling and not args.family
                            else list_models(args.family))
    runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = bench_zoo(names, runtimes, args.threads, args.repeats, args.rounds) if names else []
    table = render_table(rows, runtimes)
    env = (f"{platform.processor() or platform.machine()}, {args.threads} thread(s), "
           f"load average {load:.2f} at start, python {sys.version.split()[0]}")
    scaling = [n for n in args.thread_scaling.split(",") if n]
    threads_rows = (thread_scaling(scaling, args.scaling_threads, args.scaling_images,
                                   args.scaling_rounds) if scaling else [])
    md = f"Latency, batch 1, 112x112 ({env})\n\n{table}"
    if threads_rows:
        md += "\nPacked engine, threads inside each layer:\n\n" + "\n".join(
            f"- {line}" for line in thread_lines(threads_rows)) + "\n"
    (out / "runtime.md").write_text(md)
    (out / "runtime.json").write_text(json.dumps({"env": env, "rows": rows,
                                                  "thread_scaling": threads_rows}, indent=2))
    if rows:
        chart(rows, runtimes, out / "runtime.png", f"binface runtimes, {args.threads} thread(s)")
    print(json.dumps(rows, indent=2) if args.json else table)
    for line in check_targets(rows) + thread_lines(threads_rows):
        print(line)
    for name in [n for n in args.layers.split(",") if n]:
        print_layers(name, max(10, args.repeats // 2))
    print(f"\nwrote {out / 'runtime.md'}, {out / 'runtime.json'}, {out / 'runtime.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
