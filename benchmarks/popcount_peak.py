"""This core's xor + popcount peak: the ceiling every binary layer is measured against.

    python benchmarks/popcount_peak.py

The binary convs' own inner block (``kernels.xor_popcount_peak``: 4 output pixels x
BLOCK_CHANNELS outputs, the sums held in registers over K weight words, each weight
vector loaded once for the four pixels) runs on operands that stay in L1 (K x
BLOCK_CHANNELS weight words: 16 KiB at 2,048), on one thread; one word xor-ed is 64
binary MACs. The figure is what this CPU retires on the engine's own loop (512-bit
VPOPCNTQ with AVX-512 VPOPCNTDQ, 256-bit elsewhere on x86, CNT on NEON), not a
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
    print(f"{'weight words':>12} {'KiB':>6} {'G binary MAC/s':>15} {'G words/s':>10}")
    for words in (256, 512, 1024, 2048, 4096, 16384, 65536):
        g = popcount_peak(words, args.seconds) / 1e9
        print(f"{words:>12} {words * 8 / 1024:>6.0f} {g:>15.1f} {g / 64:>10.2f}")


if __name__ == "__main__":
    main()
