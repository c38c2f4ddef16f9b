"""The seed paper's Table 2 (binary networks) beside binface's own count.

The seed's Table 2 columns are ``larq.models.summary`` output, printed rounded in
the paper (431.7M, 2.21 MB...); the exact figures below (backbone only, 112x112x3,
larq convention) are listed in docs/counting.md. binface's figures come from
walking the real forward pass (:func:`binface.profile.profile`).
"""

from __future__ import annotations

from binface.models import create_model
from binface.profile.counter import profile

TABLE2_METRICS = (
    ("macs_1bit", "1-bit MACs"),
    ("macs_32bit", "32-bit MACs"),
    ("params_1bit", "1-bit params"),
    ("params_32bit", "32-bit params"),
    ("memory_kib", "memory (KiB)"),
)

# model -> (1-bit MACs, 32-bit MACs, 1-bit params, 32-bit params, memory KiB)
SEED_TABLE2: dict[str, tuple[int, int, int, int, float]] = {
    "quicknet": (431_751_168, 6_851_456, 12_533_760, 187_328, 2261.75),
    "quicknet_small": (258_342_912, 3_423_808, 11_980_800, 161_888, 2094.88),
    "binary_densenet28": (893_251_584, 49_997_824, 4_202_496, 352_000, 1888.00),
    "binary_densenet37": (1_122_029_568, 48_975_872, 7_593_984, 467_264, 2752.25),
    "binary_densenet45": (1_599_971_328, 59_717_632, 12_349_440, 739_072, 4394.50),
    "binaryfacenet": (184_992_256, 3_850_752, 165_248, 340_744, 1351.20),
}


# Seed Table 2's other columns, as printed: time per image (s) and images per second on
# one ARM core of an Nvidia Jetson Nano (LCE), and verification accuracy (%) on LFW,
# CFP-FP and AgeDB-30 (trained on MS1M-V3).
SEED_TABLE2_PUBLISHED: dict[str, tuple[float, float, tuple[float, float, float]]] = {
    "quicknet": (1.8, 0.55, (98.97, 92.00, 89.00)),
    "quicknet_small": (1.1, 0.86, (98.55, 90.65, 88.00)),
    "binary_densenet28": (3.7, 0.27, (99.17, 92.11, 90.72)),
    "binary_densenet37": (4.4, 0.22, (99.17, 92.59, 90.72)),
    "binary_densenet45": (6.2, 0.16, (99.28, 92.88, 91.03)),
    "binaryfacenet": (0.16, 6.25, (95.07, 77.93, 75.12)),
}


def binary_table_rows(input_size: tuple[int, int] = (112, 112)) -> list[dict]:
    """One dict per model: for each metric our figure, the seed's and the deviation."""
    rows = []
    for name, seed in SEED_TABLE2.items():
        totals = profile(create_model(name, backbone_only=True), input_size).totals
        row: dict = {"model": name, "macs_runtime_binary": totals["macs_runtime_binary"]}
        for (key, _label), theirs in zip(TABLE2_METRICS, seed, strict=True):
            ours = totals[key]
            dev = ours - theirs
            row[key] = {
                "binface": round(ours, 2) if key == "memory_kib" else int(ours),
                "seed": theirs,
                "deviation": round(dev, 3) if key == "memory_kib" else int(dev),
                "deviation_pct": 100.0 * dev / theirs if theirs else 0.0,
            }
        rows.append(row)
    return rows


def _fmt(key: str, value: float) -> str:
    return f"{value:,.2f}" if key == "memory_kib" else f"{int(value):,}"


def render_binary_table(rows: list[dict]) -> str:
    """Long-format text table: model, metric, binface, seed, deviation."""
    lines = [
        "Seed Table 2 (binary networks): backbone only, 112x112x3, larq convention (MACs, "
        "not FLOPs).",
        "Seed figures are the exact larq.models.summary values the paper prints rounded; "
        "memory to 0.01 KiB.",
        "",
        f"{'model':<18} {'metric':<14} {'binface':>15} {'seed':>15} {'deviation':>16}",
        "-" * 82,
    ]
    for row in rows:
        for i, (key, label) in enumerate(TABLE2_METRICS):
            cell = row[key]
            dev = cell["deviation"]
            dev_txt = f"{dev:,.3f}" if key == "memory_kib" else f"{int(dev):,}"
            dev_s = f"{dev_txt} ({cell['deviation_pct']:+.2f}%)"
            lines.append(
                f"{row['model'] if i == 0 else '':<18} {label:<14} "
                f"{_fmt(key, cell['binface']):>15} {_fmt(key, cell['seed']):>15} {dev_s:>16}"
            )
        rb = row["macs_runtime_binary"]
        note = "" if rb == row["macs_1bit"]["binface"] else "  (not all 1-bit MACs run binary)"
        lines.append(f"{'':<18} {'runtime-binary':<14} {rb:>15,} {'-':>15}{note}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
