"""This core's xor + popcount peak: the ceiling every binary layer is measured against.

    python benchmarks/popcount_peak.py

Two operands of N 64-bit words (L1-resident up to 2 x 2,048 words = 32 KiB) are
xor-ed and popcounted in a loop with no stores (``kernels.xor_popcount_peak``), on
one thread; one word is 64 binary MACs. The figure is what numba's LLVM makes of the
engine's inner loop on this CPU (VPOPCNTQ on AVX-512 VPOPCNTDQ, CNT on NEON), not a
datasheet number: ``binface bench --runtime packed --per-layer`` measures it again and
shows each binary layer as a share of it.
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="time per size")
    args = ap.parse_args()
    from binface.runtime.bench import popcount_peak

    print(f"xor + popcount peak, one thread ({os.cpu_count()} cores here)")
    print(f"{'words':>6} {'KiB':>6} {'G binary MAC/s':>15} {'G words/s':>10}")
    for words in (256, 512, 1024, 2048, 8192, 65536):
        g = popcount_peak(words, args.seconds) / 1e9
        print(f"{words:>6} {2 * words * 8 / 1024:>6.0f} {g:>15.1f} {g / 64:>10.2f}")


if __name__ == "__main__":
    main()
