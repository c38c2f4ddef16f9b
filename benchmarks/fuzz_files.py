"""Fuzz the .bfp, checkpoint and config loaders with many examples (the test run uses 30).

    python benchmarks/fuzz_files.py                  # 1000 examples per property
    python benchmarks/fuzz_files.py --examples 10000 --only bfp

Runs the properties of ``tests/test_fuzz_files.py`` (random mutations of a small
exported model, checkpoint and config must load, and the model run, to a correct
result or a one-line ``BinfaceError``) in a child process whose address space is
capped at its size after imports plus 512 MiB, with a 2 s deadline per example; a
crash of the child names the example it was running. Prints the time taken.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from test_fuzz_files import run_child  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=1000, help="examples per property")
    ap.add_argument("--only", default="", help="properties whose name holds this "
                    "(bfp_bytes, bfp_graph, checkpoint, config)")
    args = ap.parse_args()
    start = time.perf_counter()
    proc = run_child(args.examples, args.only, timeout=24 * 3600)
    print(proc.stdout, end="")
    if proc.returncode != 0:
        print(proc.stderr[-8000:], file=sys.stderr)
        sys.exit(1)
    print(f"{proc.stdout.count(': ok')} properties x {args.examples} examples in "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
