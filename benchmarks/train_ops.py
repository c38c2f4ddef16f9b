"""Forward + backward time of the training fast paths against PyTorch's own ops.

    python benchmarks/train_ops.py [--repeats 8]

DoReFa (k = 1, weights mode) on 32x64x112x112 and 32x64x56x56 maps (channels-last,
as the zoo trains) with the numba kernels and with the PyTorch path, and squeeze-excite's
``x * s`` (``channel_scale``) against a plain broadcast product; 2 threads, side by side
in interleaved rounds, median of the rounds. Prints the figures and their ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import binface.nn.quantizers as q
from binface.nn import DoReFa
from binface.nn.channel_scale import channel_scale


def _time(fn, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cl = torch.channels_last
    for shape in ((32, 64, 112, 112), (32, 64, 56, 56)):
        x = torch.randn(shape).contiguous(memory_format=cl)
        g = torch.randn(shape).contiguous(memory_format=cl)
        s = torch.rand(shape[0], shape[1], 1, 1)

        def dorefa(fused: bool, x=x, g=g) -> None:
            q._FUSED_NUMEL = q._EXACT_TANH_NUMEL if fused else 1 << 62
            xa = x.detach().requires_grad_(True)
            DoReFa(1, "weights")(xa).backward(g)

        def scale(fused: bool, x=x, g=g, s=s) -> None:
            xa, sa = x.detach().requires_grad_(True), s.detach().requires_grad_(True)
            (channel_scale(xa, sa) if fused else xa * sa).backward(g)

        for name, fn in (("DoReFa k=1", dorefa), ("x * s (SE)", scale)):
            fast, plain = [], []
            for _ in range(3):  # interleaved rounds
                fast.append(_time(lambda fn=fn: fn(True), args.repeats))
                plain.append(_time(lambda fn=fn: fn(False), args.repeats))
            f, p = statistics.median(fast), statistics.median(plain)
            print(f"{name:11s} {'x'.join(map(str, shape))}: binface {f:6.1f} ms, PyTorch ops "
                  f"{p:6.1f} ms ({p / f:.2f}x), forward + backward, {args.threads} threads")
    q._FUSED_NUMEL = q._EXACT_TANH_NUMEL


if __name__ == "__main__":
    main()
