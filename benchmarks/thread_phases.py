"""Why one image on 2 threads is sometimes 2x faster and sometimes not: the machine's
phases, measured beside the engine.

Per round, in one process: the round trip of a cache line between the two threads'
cores (two threads bouncing one word), then the packed engine's median on 1 thread and
on 2, and each thread's polls at the region's barriers (``Region.waits``: a thread that
polls far more than the other waited for it, so the other ran slower). The rounds are
then grouped by what the machine did:

- ``even``: trip as usual, both threads wait alike: the engine's own 2-thread speed-up;
- ``one slow``: one thread polls 4x the other's and more: the other's core ran slower
  (shared with other work on the host);
- ``far``: trip 2x the usual or more: the two cores share no cache (data crossing
  layers goes the long way);
- ``near``: trip well under the usual: the two vCPUs on one physical core (SMT
  siblings), so two threads share one core's units.

    python benchmarks/thread_phases.py binaryfacenet quicknet --seconds 60

The usual trip is this run's median. Timings on a shared machine are noisy; this
script is for reading the 2-thread figures of ``runtime.py --thread-scaling``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from numba import njit, prange
from tqdm import tqdm

from binface.runtime import export_packed, load_packed
from binface.runtime.region import Region, _atomic_load, _atomic_store


@njit(parallel=True, nogil=True)
def _bounce(flag, n):
    for ch in prange(2):
        for i in range(n):
            if ch == 0:
                _atomic_store(flag, 0, 2 * i + 1)
                while _atomic_load(flag, 0) != 2 * i + 2:
                    pass
            else:
                while _atomic_load(flag, 0) != 2 * i + 1:
                    pass
                _atomic_store(flag, 0, 2 * i + 2)


def trip_ns(n: int = 20000) -> float:
    """Nanoseconds per round trip of one cache line between the two threads."""
    flag = np.zeros(16, np.int64)
    t0 = time.perf_counter()
    _bounce(flag, n)
    return (time.perf_counter() - t0) / n * 1e9


def median_ms(engine, x, runs: int) -> float:
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        engine.run(x)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def phase(trip: float, usual: float, waits: np.ndarray) -> str:
    if trip >= 2 * usual:
        return "far"
    if trip <= 0.8 * usual:
        return "near"
    lo, hi = sorted(waits)[:2]
    return "one slow" if hi > 4 * max(lo, 1) and hi > 1e5 else "even"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", default=["binaryfacenet", "quicknet"])
    p.add_argument("--seconds", type=float, default=60.0, help="per model")
    p.add_argument("--runs", type=int, default=60, help="engine runs per round and thread "
                   "count")
    args = p.parse_args()
    x = np.random.default_rng(0).standard_normal((1, 3, 112, 112), dtype=np.float32)
    _bounce(np.zeros(16, np.int64), 10)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = Path(tmp) / f"{name}.bfp"
            export_packed(name, path)
            one, two = load_packed(path, threads=1), load_packed(path, threads=2)
            for _ in range(20):
                one.run(x)
                two.run(x)
            regions = [fn for fn, _ in (two.__dict__.get("_plan") or (0, []))[1]
                       if isinstance(fn, Region)]
            if len(regions) != 1:
                raise SystemExit(f"{name}: expected one parallel region on 2 threads, found "
                                 f"{len(regions)} (numba's OpenMP layer missing?)")
            region = regions[0]
            rounds = []
            end = time.time() + args.seconds
            with tqdm(desc=name, unit="round") as bar:
                while time.time() < end:
                    trip = trip_ns()
                    t1 = median_ms(one, x, args.runs)
                    region.waits(reset=True)
                    t2 = median_ms(two, x, args.runs)
                    rounds.append((trip, t1, t2, region.waits() / args.runs, region.chunks))
                    bar.update()
            usual = float(np.median([r[0] for r in rounds]))
            print(f"\n{name}: {len(rounds)} rounds of {args.runs} runs per thread count; "
                  f"usual round trip between the cores {usual:.0f} ns")
            print(f"{'phase':9s} {'rounds':>6s} {'trip ns':>8s} {'1 thread':>9s} "
                  f"{'2 threads':>9s} {'speed-up':>8s} {'polls/run t0, t1':>18s} "
                  f"{'4 chunks':>8s}")
            for ph in ("even", "one slow", "far", "near"):
                sel = [r for r in rounds if phase(r[0], usual, r[3]) == ph]
                if not sel:
                    continue
                a = np.array([r[:3] for r in sel])
                w = np.median([r[3] for r in sel], axis=0)
                print(f"{ph:9s} {len(sel):6d} {np.median(a[:, 0]):8.0f} "
                      f"{np.median(a[:, 1]):9.3f} {np.median(a[:, 2]):9.3f} "
                      f"{np.median(a[:, 1] / a[:, 2]):7.2f}x {w[0]:9.0f}, {w[1]:7.0f} "
                      f"{np.mean([r[4] == 4 for r in sel]):7.0%}")
            a = np.array([r[:3] for r in rounds])
            print(f"{'all':9s} {len(rounds):6d} {'':8s} {np.median(a[:, 1]):9.3f} "
                  f"{np.median(a[:, 2]):9.3f} {np.median(a[:, 1] / a[:, 2]):7.2f}x")


if __name__ == "__main__":
    main()
