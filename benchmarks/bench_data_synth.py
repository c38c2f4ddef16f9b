"""Synthetic benchmark generation speed: images/s and the time for the default size.

    python benchmarks/bench_data_synth.py            # default: 1000 x 20 + 3 packs
    python benchmarks/bench_data_synth.py --quick    # 200 x 10 + 600-pair packs

Prints the rendering rate of one process, then runs ``generate`` with the chosen
sizes and workers and prints the wall time, the images/s and the CPU time (wall
time on a shared machine also counts other people's processes; CPU time does not).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import numpy as np

from binface.data.synth import generate, render_image
from binface.data.synth.faces import to_jpeg


def single_process_rate(n: int = 300) -> float:
    """Images/s of render + JPEG in this process (no pool)."""
    render_image(0, 0, (9, 0), "train", 1.0)  # warm up
    start = time.process_time()
    for i in range(n):
        img, q = render_image(0, i % 50, (9, i), "train", 1.0)
        to_jpeg(img, q)
    return n / (time.process_time() - start)


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--identities", type=int, default=1000)
    ap.add_argument("--images-per-identity", type=int, default=20)
    ap.add_argument("--pairs", type=int, default=None, help="pairs per pack (default real sizes)")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="200 x 10 images, 600-pair packs")
    args = ap.parse_args()
    if args.quick:
        args.identities, args.images_per_identity, args.pairs = 200, 10, 600
    rate = single_process_rate()
    print(f"render + JPEG, one process: {rate:.0f} images/s ({1000 / rate:.2f} ms/image)")
    with tempfile.TemporaryDirectory() as out:
        cpu0 = cpu_seconds()
        res = generate(out, identities=args.identities,
                       images_per_identity=args.images_per_identity, pairs=args.pairs,
                       workers=args.workers, progress=False)
        cpu = cpu_seconds() - cpu0
        sizes = {p: os.path.getsize(os.path.join(out, p)) for p in os.listdir(out)}
    print(f"generate: {res.train_images} training images + {res.images - res.train_images} "
          f"pack images ({', '.join(f'{k} {v} pairs' for k, v in res.packs.items())})")
    print(f"workers {args.workers}: {res.seconds:.1f} s wall, {res.images / res.seconds:.0f} "
          f"images/s; {cpu:.1f} s CPU ({res.images / cpu:.0f} images per CPU-second, "
          f"{cpu / max(args.workers, 1):.1f} s per worker)")
    print(f"output: {sum(sizes.values()) / 1e6:.1f} MB, "
          f"mean JPEG {np.mean([sizes.get('train.rec', 0) / max(res.train_images, 1)]):.0f} B")


if __name__ == "__main__":
    main()
