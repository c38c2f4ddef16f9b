"""``binface compare``: the seed paper's comparison (complexity, latency, accuracy) in one command.

For each model (a zoo name with random weights, a checkpoint, or an exported
``.bfp`` / ``.onnx`` / ``.tflite`` file):

- complexity from :func:`binface.profile.profile` (larq convention, the whole model
  as it runs) where a torch model exists;
- latency in every runtime asked, through :func:`binface.runtime.bench.time_jobs`:
  one worker process per runtime holds all the models and every round times every
  (model, runtime) in turn, so a burst of load from elsewhere hits all alike;
- for checkpoints, verification accuracy on each pack given (insightface 10-fold
  protocol, flip test).

A runtime that cannot run a model gets a one-line note in that cell, never a crash.
``--table seed`` takes the rows of the seed's Tables 1 and 2 and sets our figures
beside the published ones. What is measured and how: docs/compare.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from binface.cli_args import positive_int
from binface.errors import BinfaceError
from binface.fileio import OVERWRITE_FLAG, check_outputs, write_text, write_with

DEFAULT_RUNTIMES = "torch,onnx,packed"
OUTPUTS = ("compare.md", "compare.json", "compare.png")
COMPLEXITY_KEYS = ("macs_1bit", "macs_kbit", "macs_32bit", "macs_runtime_binary",
                   "macs_matmul_1bit", "macs_matmul_32bit", "params_1bit", "params_kbit",
                   "params_32bit", "params_total", "memory_kib")
PUBLISHED_PACKS = ("lfw", "cfp_fp", "agedb_30")
PACK_LABELS = {"lfw": "LFW", "cfp_fp": "CFP-FP", "agedb_30": "AgeDB-30"}
SEED_RUNTIME = "LCE, one ARM core of an Nvidia Jetson Nano"


@dataclass(frozen=True)
class Entry:
    """One model to compare: what the user gave and what kind of thing it is."""

    spec: str
    kind: str  # "name" (zoo, random weights), "checkpoint" or "file" (exported)


def classify(spec: str) -> str:
    from binface.models.loading import is_checkpoint_path
    from binface.runtime.bench import FILE_RUNTIMES

    if Path(spec).suffix in FILE_RUNTIMES:
        return "file"
    return "checkpoint" if is_checkpoint_path(spec) else "name"


def check_entries(specs: list[str]) -> list[Entry]:
    """Every model named exists (before any work): an unknown name or missing file is one line."""
    from binface.models import model_info

    out = []
    for spec in dict.fromkeys(str(s) for s in specs):
        kind = classify(spec)
        if kind == "name":
            model_info(spec)  # unknown: one line with the close matches
        elif not Path(spec).is_file():
            raise BinfaceError(f"{spec}: no such file")
        out.append(Entry(spec, kind))
    if not out:
        raise BinfaceError("name at least one model (a zoo name, a checkpoint, or a .bfp, "
                           ".onnx or .tflite file), or use --table seed")
    return out


def seed_entries() -> list[Entry]:
    """The rows of ``binface profile --table float`` and ``--table binary``, in that order."""
    from binface.profile.float_table import FLOAT_REFERENCES
    from binface.profile.tables import SEED_TABLE2

    return [Entry(r.model, "name") for r in FLOAT_REFERENCES] + [
        Entry(m, "name") for m in SEED_TABLE2]


# ---------------------------------------------------------------- measuring
def run_compare(models: list[str] | None = None, packs: Sequence[str] = (),
                runtimes: list[str] | str = DEFAULT_RUNTIMES, repeats: int = 50,
                warmup: int = 5, rounds: int = 5, max_pairs: int | None = None,
                table: str | None = None, progress: bool = True,
                command: str | None = None, calibrate: str | None = None) -> dict:
    """Measure every model; returns ``{"meta": ..., "rows": [...]}`` (what compare.json holds).

    ``table="seed"`` takes the seed's Tables 1 and 2 instead of ``models``; ``calibrate``
    is the data ``onnx-int8`` calibrates on (default: noise, enough for timing).
    """
    from binface.runtime.bench import Job, check_runtimes, time_jobs

    if isinstance(runtimes, str):
        runtimes = runtimes.split(",")
    runtimes = check_runtimes(list(runtimes), installed=False)
    if table not in (None, "seed"):
        raise BinfaceError(f"unknown table {table!r}; the one table is 'seed'")
    if table and models:
        raise BinfaceError("give models or --table seed, not both")
    if table and packs:
        raise BinfaceError("--table seed times zoo models with random weights: --packs does "
                           "not apply (their accuracies are the published ones)")
    entries = seed_entries() if table else check_entries(list(models or []))
    for p in packs:
        if not Path(p).is_file():
            raise BinfaceError(f"{p}: no such pack")
    lce_note = _lce_note() if "lce" in runtimes else None

    from binface.progress import progress as progress_bar

    started = time.time()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    loaded_packs = []
    if packs and any(e.kind == "checkpoint" for e in entries):
        from binface.eval.run import load_eval_pack

        loaded_packs = [load_eval_pack(p, max_pairs) for p in packs]
    published = _seed_published(progress) if table else {}
    rows: list[dict] = []
    jobs, where = [], []
    with tempfile.TemporaryDirectory(prefix="binface-compare-") as tmp:
        bar = progress_bar(entries, desc="compare", unit="model", disable=not progress)
        for k, entry in enumerate(bar):
            bar.set_postfix_str(entry.spec, refresh=False)
            work = Path(tmp) / str(k)
            work.mkdir()
            row, art, errors = _prepare(entry, runtimes, work, loaded_packs, lce_note, progress,
                                        calibrate)
            if entry.spec in published:
                row["published"] = published[entry.spec]
            for rt in runtimes:
                if rt in errors:
                    row["latency"][rt] = {"error": errors[rt]}
                else:
                    jobs.append(Job(rt, str(art.path(rt)), art.input_size))
                    where.append((k, rt))
            rows.append(row)
        results = time_jobs(jobs, threads=1, batch=1, repeats=repeats, warmup=warmup,
                            rounds=rounds, progress="timing" if progress else None,
                            strict=False)
    rss: dict[str, float | None] = {}
    for (k, rt), res in zip(where, results, strict=True):
        if "error" in res:
            rows[k]["latency"][rt] = {"error": res["error"]}
            continue
        peak = res.pop("peak_rss_mb")
        rss[rt] = None if math.isnan(peak) else peak
        res.pop("runtime")
        rows[k]["latency"][rt] = res
    from binface import __version__

    meta = {
        "command": command or _api_command(models, packs, runtimes, repeats, warmup, rounds,
                                           max_pairs, table),
        "table": table, "threads": 1, "batch": 1, "repeats": repeats, "warmup": warmup,
        "rounds": max(1, min(rounds, repeats)), "runtimes": runtimes,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
        "binface": __version__, "cpu": cpu_name(), "python": platform.python_version(),
        "load_average_at_start": round(load, 2) if load is not None else None,
        "minutes": round((time.time() - started) / 60, 2),
        "packs": [str(p) for p in packs], "max_pairs": max_pairs, "calibrate": calibrate,
        "protocol": "insightface 10-fold, flip test" if packs else None,
        "worker_peak_rss_mb": rss,
    }
    return {"meta": meta, "rows": rows}


ACCURACY_KEYS = ("accuracy", "std", "pairs", "total_pairs", "subset", "sha256")


def add_accuracy(result: dict, scores: dict[str, dict[str, dict]], packs: Sequence[str],
                 max_pairs: int | None, scored_by: str, flip: bool = True) -> dict:
    """Set accuracies scored elsewhere (``{model spec: {pack name: evaluate_pack result}}``)
    into a :func:`run_compare` result, saying how they were scored (e.g. the demo scores
    binary students in the packed engine, which is many times faster than PyTorch)."""
    for row in result["rows"]:
        mine = scores.get(row["model"])
        if mine:
            row["accuracy"] = {p: {k: r[k] for k in ACCURACY_KEYS} for p, r in mine.items()}
            row["accuracy_note"] = None
    result["meta"].update(packs=[str(p) for p in packs], max_pairs=max_pairs,
                          protocol=f"insightface 10-fold, {'flip' if flip else 'no flip'} test",
                          scored_by=scored_by)
    return result


def _lce_note() -> str | None:
    """Why LCE cannot run here (one line), or None when it can."""
    from binface.runtime.errors import RuntimeUnavailableError
    from binface.runtime.lce import import_lce

    try:
        import_lce()
    except RuntimeUnavailableError as exc:
        return f"not run: {exc}"
    return None


def _prepare(entry: Entry, runtimes: list[str], work: Path, packs: list, lce_note: str | None,
             progress: bool, calibrate: str | None = None
             ) -> tuple[dict, object, dict[str, str]]:
    """One model's row (complexity, accuracy) and the files its runtimes need."""
    from binface.runtime.bench import prepare

    errors: dict[str, str] = {}
    if lce_note and "lce" in runtimes:
        errors["lce"] = lce_note
    wanted = [r for r in runtimes if r not in errors]
    row: dict = {"model": entry.spec, "kind": entry.kind, "name": None, "family": None,
                 "input_size": None, "complexity": None, "complexity_note": None,
                 "latency": {rt: None for rt in runtimes}, "accuracy": None,
                 "accuracy_note": None}
    if entry.kind == "file":
        art = prepare(entry.spec, wanted, work, errors=errors)
        row.update(name=art.name, input_size=list(art.input_size),
                   complexity_note="exported file: no torch model to count (give its name "
                   "or checkpoint)", accuracy_note="exported file: not evaluated")
        return row, art, errors

    from binface.models.loading import load_model
    from binface.profile import profile

    lm = load_model(entry.spec)
    totals = profile(lm.model, lm.input_size, name=lm.name).totals
    row.update(name=lm.name, family=lm.family, input_size=list(lm.input_size),
               complexity={k: (round(totals[k], 2) if k == "memory_kib" else int(totals[k]))
                           for k in COMPLEXITY_KEYS})
    if entry.kind == "name":
        row["accuracy_note"] = "random weights (a zoo name): no accuracy"
    elif not packs:
        row["accuracy_note"] = "no --packs given"
    else:
        row["accuracy"] = {pack.name: _score(lm.model, pack, entry.spec, progress)
                           for pack in packs}
    art = prepare(entry.spec, wanted, work, loaded=lm, errors=errors, calibrate=calibrate)
    return row, art, errors


def _score(model, pack, label: str, progress: bool) -> dict:
    import torch

    from binface.eval.run import evaluate_pack

    with torch.no_grad():
        r = evaluate_pack(model, pack, batch_size=32,
                          progress=f"{Path(label).name} {pack.name}" if progress else False)
    return {k: r[k] for k in ACCURACY_KEYS}


def _seed_published(progress: bool) -> dict[str, dict]:
    """Per seed model: the published figures, and our count of the same (the seed's scope)."""
    from binface.profile.float_table import PUBLISHED_ACCURACY, float_table_rows
    from binface.profile.tables import SEED_TABLE2_PUBLISHED, binary_table_rows

    if progress:
        print("[compare] counting the seed tables' models (as `binface profile --table`)",
              file=sys.stderr, flush=True)
    out: dict[str, dict] = {}
    for r in float_table_rows():
        acc, origin = PUBLISHED_ACCURACY.get(r["model"], (None, None))
        out[r["model"]] = {
            "table": "Table 1" if r["source"] == "seed" else "ref", "label": r["label"],
            "scope": "whole network", "counts": r,
            "accuracy": dict(zip(PUBLISHED_PACKS, acc, strict=True)) if acc else None,
            "accuracy_origin": origin}
    for r in binary_table_rows():
        t, fps, acc = SEED_TABLE2_PUBLISHED[r["model"]]
        out[r["model"]] = {
            "table": "Table 2", "label": r["model"], "scope": "backbone only", "counts": r,
            "time_s": t, "fps": fps, "runtime": SEED_RUNTIME,
            "accuracy": dict(zip(PUBLISHED_PACKS, acc, strict=True)),
            "accuracy_origin": "seed Table 2"}
    return out


def cpu_name() -> str:
    """The CPU model as Linux names it, else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimd", "asimddp")


def cpu_simd() -> list[str]:
    """Which of SIMD_FLAGS the CPU reports (Linux ``flags`` / ARM ``Features``): what int8
    and binary kernels depend on (ONNX Runtime's uint8 x int8 convs saturate without
    VNNI). Empty where /proc/cpuinfo cannot be read."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines
                      if ln.startswith(("flags", "Features"))), []))
    return [f for f in SIMD_FLAGS if f in flags]


def cpu_description() -> str:
    """:func:`cpu_name` and :func:`cpu_simd` in one line, as studies record a row's CPU."""
    return f"{cpu_name()}, SIMD: {', '.join(cpu_simd()) or 'none reported'}"


def _api_command(models, packs, runtimes, repeats, warmup, rounds, max_pairs, table) -> str:
    """The command line that asks for the same comparison."""
    parts = ["binface", "compare", *(models or [])]
    if table:
        parts += ["--table", table]
    if packs:
        parts += ["--packs", *map(str, packs)]
    parts += ["--runtimes", ",".join(runtimes), "--repeats", str(repeats), "--warmup",
              str(warmup), "--rounds", str(rounds)]
    if max_pairs:
        parts += ["--max-pairs", str(max_pairs)]
    return shlex.join(parts)


# ---------------------------------------------------------------- rendering
def _cell(text: str) -> str:
    """One markdown table cell: one line, no column separator."""
    return " ".join(str(text).split()).replace("|", "/")


def _int(v) -> str:
    return "-" if v is None else f"{int(v):,}"


def _mega(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v / 1e6:,.{digits}f}M"


def _latency(cell: dict | None) -> str:
    if cell is None:
        return "-"
    if "error" in cell:
        return _cell(cell["error"])
    return f"{cell['median_ms']:.2f} ({cell['p90_ms']:.2f})"


def _accuracy(cell: dict) -> str:
    return f"{100 * cell['accuracy']:.2f} ± {100 * cell['std']:.2f}"


def render_markdown(result: dict) -> str:
    """compare.md: the table (two, one per seed table, with ``--table seed``) and its notes."""
    meta, rows = result["meta"], result["rows"]
    rts = meta["runtimes"]
    lines = ["# binface compare", "",
             f"`{meta['command']}`", "",
             f"{meta['date']}, binface {meta['binface']}, {meta['cpu']}, load average "
             f"{meta['load_average_at_start']} at start. Latency: median (p90) ms of "
             f"{meta['repeats']} runs of one image, one thread, in {meta['rounds']} rounds "
             "interleaved across all models and runtimes, after "
             f"{meta['warmup']} warm-up run(s).", ""]
    if meta["table"] == "seed":
        lines += _seed_tables(rows, rts)
    else:
        lines += _main_table(rows, rts, meta)
    lines += ["", "Notes:",
              "- Complexity: larq convention (MACs of conv and dense layers at max(input, "
              "weight) precision; runtime-binary MACs run as xor + popcount; matmul MACs are "
              "attention's activation products, outside the larq count; BatchNorm counts "
              "mean and variance); see docs/counting.md.",
              "- Runtimes: " + "; ".join(f"{r}: {_runtime_note(r)}" for r in rts) + "."]
    if "onnx-int8" in rts:
        lines.append("- onnx-int8 times an int8 export made on the fly (calibrated on "
                     + (f"`{meta['calibrate']}`" if meta.get("calibrate") else "noise, which "
                        "is enough for timing") + "); accuracies are the float model's, so "
                     "the plot leaves its points out.")
    if meta["table"] == "seed":
        lines += ["- Our latencies are of the whole model (embedding head included) with "
                  "random weights, on this CPU; the published times are the seed's, on "
                  f"{SEED_RUNTIME}: compare orders, not values.",
                  "- Published accuracies (%) are labelled as such and were not measured "
                  "here; empty where nothing is published. Origins:"]
        for r in rows:
            pub = r.get("published") or {}
            if pub.get("accuracy_origin"):
                lines.append(f"  - {pub['label']}: {pub['accuracy_origin']}")
    elif meta["packs"]:
        sub = f"a fold-balanced subset of {meta['max_pairs']} pairs" if meta["max_pairs"] \
            else "all pairs"
        flip = "no flip test" if "no flip" in (meta.get("protocol") or "") else "flip test"
        lines.append(f"- Accuracy (%): mean ± std over the 10 folds, insightface protocol "
                     f"with {flip}, on {sub} of each pack"
                     + (f", scored by {meta['scored_by']}." if meta.get("scored_by")
                        else "."))
    return "\n".join(lines) + "\n"


def _runtime_note(rt: str) -> str:
    from binface.runtime.bench import NOTES

    return NOTES.get(rt, rt)


def _main_table(rows: list[dict], rts: list[str], meta: dict) -> list[str]:
    packs = list(dict.fromkeys(p for r in rows for p in (r["accuracy"] or {})))
    acc_heads = [f"{p} acc." for p in packs] or ["accuracy"]
    head = ["model", "family", "1-bit MACs", "32-bit MACs", "runtime-binary MACs",
            "matmul MACs 1-bit / 32-bit", "params", "memory KiB",
            *(f"{r} ms" for r in rts), *acc_heads]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        c = r["complexity"]
        if c is None:
            cx = [_cell(r["complexity_note"])] + ["-"] * 5
        else:
            cx = [_int(c["macs_1bit"]), _int(c["macs_32bit"]), _int(c["macs_runtime_binary"]),
                  f"{_int(c['macs_matmul_1bit'])} / {_int(c['macs_matmul_32bit'])}",
                  _int(c["params_total"]), f"{c['memory_kib']:,.2f}"]
        lat = [_latency(r["latency"].get(rt)) for rt in rts]
        if r["accuracy"]:
            acc = [_accuracy(r["accuracy"][p]) if p in r["accuracy"] else "-" for p in packs]
        else:
            acc = [_cell(r["accuracy_note"] or "-")] + ["-"] * (len(acc_heads) - 1)
        cells = [f"`{_cell(r['model'])}`", r["family"] or "-"]
        out.append("| " + " | ".join([*cells, *cx, *lat, *acc]) + " |")
    return out


def _pub_acc(pub: dict) -> list[str]:
    acc = pub.get("accuracy")
    return [f"{acc[p]:.2f}" if acc else "" for p in PUBLISHED_PACKS]


def _seed_tables(rows: list[dict], rts: list[str]) -> list[str]:
    pacc = [f"published {PACK_LABELS[p]}" for p in PUBLISHED_PACKS]
    t1 = [r for r in rows if r.get("published", {}).get("table") in ("Table 1", "ref")]
    t2 = [r for r in rows if r.get("published", {}).get("table") == "Table 2"]
    out = ["## Table 1: lightweight CNNs and hybrids (whole network, 112x112)", "",
           "Our FLOPs are our MACs (and attention matmul MACs where the published figure "
           "includes them) in the published figure's convention; `ref` rows are not in the "
           "seed's table (originals and family members, with their own paper's figure).", ""]
    head = ["model", "src", "params", "published params", "MACs", "matmul MACs",
            "FLOPs (convention)", "published FLOPs", *(f"{r} ms" for r in rts), *pacc]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in t1:
        pub = r["published"]
        c = pub["counts"]
        cells = [pub["label"], c["source"], _mega(c["ours_params"]), _mega(c["seed_params"]),
                 _mega(c["ours_macs"], 1), _mega(c["ours_matmul_macs"]) if
                 c["ours_matmul_macs"] else "-",
                 f"{_mega(c['ours_in_convention'], 1)} ({c['convention']})",
                 _mega(c["seed_flops"], 1),
                 *(_latency(r["latency"].get(rt)) for rt in rts), *_pub_acc(pub)]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "## Table 2: binary networks (counts of the backbone only, as the seed's)", ""]
    head = ["model", "1-bit MACs", "published", "32-bit MACs", "published", "memory KiB",
            "published", *(f"{r} ms" for r in rts), "published time s", "published FPS",
            *pacc]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in t2:
        pub = r["published"]
        c = pub["counts"]
        cells = [r["model"], _int(c["macs_1bit"]["binface"]), _int(c["macs_1bit"]["seed"]),
                 _int(c["macs_32bit"]["binface"]), _int(c["macs_32bit"]["seed"]),
                 f"{c['memory_kib']['binface']:,.2f}", f"{c['memory_kib']['seed']:,.2f}",
                 *(_latency(r["latency"].get(rt)) for rt in rts), f"{pub['time_s']:g}",
                 f"{pub['fps']:g}", *_pub_acc(pub)]
        out.append("| " + " | ".join(cells) + " |")
    return out


# ---------------------------------------------------------------- the plot
def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and value."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0],
                   -points[i][1] if higher_is_better else points[i][1]))
    front, best = [], None
    for i in order:
        v = points[i][1]
        if best is None or (v > best if higher_is_better else v < best):
            front.append(i)
            best = v
    return front


def _plot_values(result: dict) -> tuple[dict[str, float], str, bool]:
    """(model -> value, axis label, higher is better): accuracy where any, else cost."""
    rows, seed = result["rows"], result["meta"]["table"] == "seed"
    acc = {}
    for r in rows:
        a = (r.get("published") or {}).get("accuracy") if seed else r["accuracy"]
        if a:
            vals = [v if seed else 100 * v["accuracy"] for v in a.values()]
            acc[r["model"]] = sum(vals) / len(vals)
    if acc:
        packs = "LFW, CFP-FP, AgeDB-30" if seed else "the packs"
        return acc, (f"{'published ' if seed else ''}mean verification accuracy over "
                     f"{packs} (%)"), True
    cost = {r["model"]: (r["complexity"]["macs_32bit"] + r["complexity"]["macs_1bit"] / 64)
            / 1e6 for r in rows if r["complexity"]}
    return cost, "cost: 32-bit MACs + 1-bit MACs / 64 (millions)", False


def plot_pareto(result: dict, path: str | os.PathLike) -> None:
    """compare.png: accuracy (else MAC cost) against latency, with the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    values, ylabel, higher = _plot_values(result)
    colors = {"torch": "#d62728", "onnx": "#1f77b4", "onnx-int8": "#17becf", "packed": "#2ca02c",
              "lce": "#9467bd"}
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    points, labels = [], []
    for r in result["rows"]:
        if r["model"] not in values:
            continue
        # an int8 export's latency beside the float model's accuracy would be a point no
        # model has: with accuracies, onnx-int8 stays in the table only
        mine = [(c["median_ms"], rt) for rt, c in r["latency"].items()
                if c and "median_ms" in c and not (higher and rt == "onnx-int8")]
        if not mine:
            continue
        y = values[r["model"]]
        xs = sorted(ms for ms, _ in mine)
        ax.plot(xs, [y] * len(xs), color="0.8", lw=1, zorder=1)
        for ms, rt in mine:
            ax.scatter([ms], [y], color=colors.get(rt), s=30, zorder=3)
            points.append((ms, y))
            labels.append(rt)
        ax.annotate(r["model"], (min(xs), y),
                    textcoords="offset points", xytext=(-4, 4), ha="right", fontsize=7)
    if points:
        front = pareto_front(points, higher)
        fx = [points[i][0] for i in front]
        fy = [points[i][1] for i in front]
        ax.step(fx, fy, where="post", color="k", lw=1, ls="--", zorder=2)
        ax.scatter(fx, fy, s=110, facecolors="none", edgecolors="k", lw=1, zorder=4,
                   label="Pareto front")
        for rt in dict.fromkeys(labels):
            ax.scatter([], [], color=colors.get(rt), s=30, label=rt)
        ax.set_xscale("log")
        if not higher:
            ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis) if not higher else (ax.xaxis,):
            axis.set_major_locator(matplotlib.ticker.LogLocator(10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no model has both a latency and a figure to plot",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("median latency, ms (one image, one thread; log scale)")
    ax.set_ylabel(ylabel)
    left_out = len(result["rows"]) - len({r["model"] for r in result["rows"]} & set(values))
    ax.set_title("binface compare" + (": seed tables" if result["meta"]["table"] else "")
                 + (f" ({left_out} model(s) without this figure left out)" if left_out else ""),
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    try:
        write_with(path, fig.savefig)
    finally:
        plt.close(fig)


def write_outputs(result: dict, out: str | os.PathLike) -> list[Path]:
    out = Path(out)
    paths = [out / n for n in OUTPUTS]
    write_text(paths[0], render_markdown(result))
    write_text(paths[1], json.dumps(result, indent=2) + "\n")
    plot_pareto(result, paths[2])
    return paths


# ---------------------------------------------------------------- the command
def _command_line(args: argparse.Namespace) -> str:
    return _api_command(args.models, args.packs, [r.strip() for r in args.runtimes.split(",")
                                                  if r.strip()], args.repeats, args.warmup,
                        args.rounds, args.max_pairs, args.table) + (
        f" --out {shlex.quote(args.out)}" if args.out != "compare" else "") + (
        f" --calibrate {shlex.quote(args.calibrate)}" if args.calibrate else "")


def _cmd(args: argparse.Namespace) -> int:
    out = Path(args.out)
    inputs = [m for m in args.models if Path(m).is_file()] + list(args.packs)
    check_outputs([out / n for n in OUTPUTS], inputs=inputs, overwrite=args.overwrite)
    result = run_compare(args.models, args.packs, args.runtimes, args.repeats, args.warmup,
                         args.rounds, args.max_pairs, args.table, progress=True,
                         command=_command_line(args), calibrate=args.calibrate)
    paths = write_outputs(result, out)
    print(render_markdown(result), end="")
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``compare`` command to the top-level parser."""
    p = sub.add_parser(
        "compare", help="complexity, latency and accuracy of several models side by side",
        description="For each model (a zoo name with random weights, a checkpoint, or an "
        "exported .bfp / .onnx / .tflite file): complexity in the larq convention, latency in "
        "each runtime (one thread, batch 1, median and p90, measured in rounds interleaved "
        "across all models and runtimes) and, for checkpoints, verification accuracy on each "
        "pack (insightface 10-fold, flip test). Writes compare.md, compare.json and a Pareto "
        "plot compare.png into --out. --table seed measures the models of the seed's Tables "
        "1 and 2 and prints them beside the published figures.")
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="zoo name, checkpoint (.pt), or .bfp / .onnx / .tflite file")
    p.add_argument("--table", choices=["seed"], help="the seed's Tables 1 and 2 instead of "
                   "MODELs")
    p.add_argument("--packs", nargs="+", default=[], metavar="PACK.bin",
                   help="verification packs to score the checkpoints on (give them after "
                   "the models)")
    p.add_argument("--runtimes", "--runtime", default=DEFAULT_RUNTIMES,
                   help="comma-separated: torch, onnx, onnx-int8, packed, lce (default "
                   f"{DEFAULT_RUNTIMES})")
    p.add_argument("--calibrate", metavar="DATA", default=None, help="onnx-int8: calibration "
                   "faces (.rec, image folder or .bin pack; default: noise, for timing)")
    p.add_argument("--out", default="compare", metavar="DIR",
                   help="folder for compare.md, compare.json, compare.png (default compare/)")
    p.add_argument("--repeats", type=positive_int, default=50,
                   help="timed runs per model and runtime (default 50)")
    p.add_argument("--warmup", type=positive_int, default=5,
                   help="untimed runs first (default 5)")
    p.add_argument("--rounds", type=positive_int, default=5,
                   help="rounds the timed runs are split into (default 5)")
    p.add_argument("--max-pairs", type=positive_int, default=None, metavar="N",
                   help="score a fold-balanced subset of N pairs of each pack (default all)")
    p.add_argument(OVERWRITE_FLAG, action="store_true", help="replace existing output files")
    p.set_defaults(func=_cmd)
