"""Fuzz the RecordIO and pack parsers with many examples (the test run uses 40).

    python benchmarks/fuzz_data.py                  # 2000 examples per property
    python benchmarks/fuzz_data.py --examples 20000

Runs the properties of ``tests/test_fuzz_data.py`` (random mutations of small
valid .rec/.idx files and packs must give a well-formed result or a one-line
``BinfaceError``) in this process, with the address space capped at its size
after imports plus 512 MiB and a 2 s deadline per example; prints the time taken.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from test_fuzz_data import run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=2000, help="examples per property")
    args = ap.parse_args()
    start = time.perf_counter()
    run(args.examples)
    print(f"{3 * args.examples} examples in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
