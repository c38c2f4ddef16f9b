"""Params, MACs by precision and single-thread PyTorch latency of every registered model.

For each model of the registry (float and binary; binary ones appear as they are
added): parameters and MACs by precision from ``binface.profile.profile`` (larq
convention, plus the attention matmul MACs it leaves out), and the eager PyTorch
latency at batch 1 on one CPU thread (``torch.set_num_threads(1)``), after a
warm-up, as the median of timed runs.

    python benchmarks/bench_models.py                   # the whole zoo
    python benchmarks/bench_models.py --family hybrid --repeats 50
    python benchmarks/bench_models.py mobilefacenet edgeface_xs --json

Latency is of the eager float graph (binary layers run as float in PyTorch), so
it says nothing about xor + popcount speed; it ranks the float zoo and gives a
baseline for the packed runtime.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from binface.models import create_model, list_models, model_info
from binface.profile import profile


def latency_ms(model: torch.nn.Module, input_size: tuple[int, int], warmup: int,
               repeats: int) -> dict[str, float]:
    """Median (and min / max) milliseconds of one batch-1 eval forward pass."""
    model.eval()
    x = torch.randn(1, 3, *input_size)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def bench(name: str, backbone_only: bool, warmup: int, repeats: int) -> dict:
    model = create_model(name, backbone_only=backbone_only)
    size = getattr(model, "input_size", None) or (112, 112)
    t = profile(model, size).totals
    row = {
        "model": name,
        "family": model_info(name).family,
        "backbone_only": backbone_only,
        "params": int(t["params_total"]),
        "params_1bit": int(t["params_1bit"]),
        "params_32bit": int(t["params_32bit"]),
        "memory_kib": round(t["memory_kib"], 2),
        "macs_1bit": int(t["macs_1bit"]),
        "macs_kbit": int(t["macs_kbit"]),
        "macs_32bit": int(t["macs_32bit"]),
        "macs_matmul": int(t["macs_matmul"]),
        "macs_runtime_binary": int(t["macs_runtime_binary"]),
    }
    row.update(latency_ms(model, size, warmup, repeats))
    return row


def _m(v: int) -> str:
    return f"{v / 1e6:,.1f}M" if v else "-"


def render(rows: list[dict]) -> str:
    head = (f"{'model':<20} {'family':<6} {'params':>8} {'KiB':>9} {'1-bit MACs':>11} "
            f"{'k-bit MACs':>10} {'32-bit MACs':>11} {'matmul':>8} {'median ms':>9} "
            f"{'min ms':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<20} {r['family']:<6} {_m(r['params']):>8} {r['memory_kib']:>9,.1f} "
            f"{_m(r['macs_1bit']):>11} {_m(r['macs_kbit']):>10} {_m(r['macs_32bit']):>11} "
            f"{_m(r['macs_matmul']):>8} {r['median_ms']:>9.2f} {r['min_ms']:>7.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="model names (default: every registered one)")
    parser.add_argument("--family", choices=["cnn", "hybrid", "binary"], help="only this family")
    parser.add_argument("--backbone-only", action="store_true",
                        help="drop the embedding head (what the seed's Table 2 counts)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs (default 5)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")

    names = args.models or list_models(args.family)
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        parser.error(f"unknown model(s): {', '.join(unknown)} (see `binface models`)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in names:
        rows.append(bench(name, args.backbone_only, args.warmup, args.repeats))
        if not args.json:
            print(render(rows).splitlines()[-1] if len(rows) > 1 else render(rows), flush=True)
    if args.json:
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                          "machine": platform.machine(), "processor": platform.processor(),
                          "rows": rows}, indent=2))
    else:
        print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s), "
              f"{platform.machine()}; eager float PyTorch, batch 1, median of {args.repeats} "
              f"after {args.warmup} warm-up runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
