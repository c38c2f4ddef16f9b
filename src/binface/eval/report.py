"""Verification reports: a terminal table, JSON, Markdown and a ROC plot (PNG)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from binface.fileio import write_text, write_with


def results_table(rows: list[dict]) -> str:
    """One line per (model, pack): accuracy +- std, VAL@FAR=1e-3, TAR@FAR=1e-4, pairs."""
    head = (f"{'model':<24} {'pack':<16} {'accuracy %':>15} {'VAL@1e-3':>9} {'TAR@1e-4':>9} "
            f"{'pairs':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        pairs = f"{r['pairs']}" + ("" if not r.get("subset") else f"/{r['total_pairs']}")
        val = r.get("val_at_far_1e-3")
        lines.append(
            f"{r.get('model', ''):<24} {r['pack']:<16} "
            f"{100 * r['accuracy']:>7.2f} +- {100 * r['std']:<5.2f}"
            f"{'' if val is None else f'{100 * val:9.2f}':>9} "
            f"{100 * r['tar_at_far']['1e-04']:9.2f} {pairs:>11}")
    protocols = sorted({r["protocol_description"] for r in rows})
    lines.append("")
    lines += [f"protocol: {p}" for p in protocols]
    if any(r.get("subset") for r in rows):
        lines.append("pairs a/b: a fold-balanced subset of a pairs out of b (10-fold layout kept)")
    if any(r.get("flip") for r in rows):
        lines.append("embeddings: flip test (emb(x) + emb(mirror(x)), then L2-normalised)")
    return "\n".join(lines) + "\n"


def _slim(r: dict) -> dict:
    """A result without the long ROC arrays (they go to the plot)."""
    return {k: v for k, v in r.items() if k != "roc"}


def write_report_json(rows: list[dict], path: Path, meta: dict | None = None) -> None:
    """``{"meta": ..., "results": [...]}``: every result without its ROC arrays."""
    payload = {"meta": meta or {}, "results": [_slim(r) for r in rows]}
    write_text(path, json.dumps(payload, indent=2) + "\n")


def write_report_markdown(rows: list[dict], path: Path, title: str,
                          meta: dict | None = None) -> None:
    """A Markdown table of the results, with each pack's sha256 and the protocols used."""
    lines = [f"# {title}", ""]
    for k, v in (meta or {}).items():
        lines.append(f"- {k}: {v}")
    lines += ["", "| model | pack | accuracy (%) | VAL@FAR=1e-3 (%) | TAR@FAR=1e-4 (%) | pairs | "
              "sha256 |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        val = r.get("val_at_far_1e-3")
        pairs = f"{r['pairs']}" + ("" if not r.get("subset") else f" of {r['total_pairs']}")
        lines.append(
            f"| {r.get('model', '')} | {r['pack']} | {100 * r['accuracy']:.2f} +- "
            f"{100 * r['std']:.2f} | {'-' if val is None else f'{100 * val:.2f}'} | "
            f"{100 * r['tar_at_far']['1e-04']:.2f} | {pairs} | `{r.get('sha256', '')[:16]}` |")
    lines += ["", "Protocols:", ""]
    lines += [f"- {p}" for p in sorted({r["protocol_description"] for r in rows})]
    write_text(path, "\n".join(lines) + "\n")


def plot_roc(rows: list[dict], path: Path, title: str = "ROC") -> None:
    """TPR against FPR (log scale) for every (model, pack) result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for r in rows:
        fpr, tpr = np.asarray(r["roc"]["fpr"]), np.asarray(r["roc"]["tpr"])
        keep = fpr > 0
        label = f"{r.get('model', '')} {r['pack']} ({100 * r['accuracy']:.1f}%)".strip()
        ax.plot(fpr[keep], tpr[keep], label=label, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    try:
        write_with(path, fig.savefig)
    finally:
        plt.close(fig)
