"""Training speed on a CPU: images/s of a plain forward/backward/step loop per model.

    python benchmarks/train_speed.py                       # binaryfacenet, mobilefacenet,
                                                           # quicknet_small; 2 threads, batch 32
    python benchmarks/train_speed.py --models binaryfacenet --steps 5
    python benchmarks/train_speed.py --channels-last       # models and inputs channels-last
    python benchmarks/train_speed.py --profile binaryfacenet   # torch.profiler op table
    python benchmarks/train_speed.py --models binaryfacenet,mobilefacenet \
        --train-data DIR/train.rec                 # through binface train, 80 steps each
    python benchmarks/train_speed.py --models binaryfacenet,mobilefacenet \
        --without squeeze-input,se-output      # lower bounds: quantizers that cost nothing
    PYTHONPATH=/work/main/src python benchmarks/train_speed.py   # time another checkout

The loop is what a user writes over ``create_model(name)``: random 112x112 inputs,
loss = the sum of the embeddings (no margin head: the head is the same float
matmul for every model and would only dilute the backbone difference), SGD step,
then ``apply_weight_clip`` (what ``binface train`` does after each step). Models
are timed side by side in interleaved rounds (one step of each model per round,
after warm-up; each model in its own worker process, as a training run has it), so
load from other processes on a shared machine hits them alike;
the median step time over the rounds is reported (and the median CPU time of
this process, less sensitive to other processes' load), with the BinaryFaceNet /
MobileFaceNet step-time ratio against the 1.3x target (issue 13).

Two process-level switches are worth comparing on a given machine: ``--channels-last``
(``train.channels_last`` in ``binface train``; faster grouped/depthwise convolutions
in oneDNN, slightly different float rounding) and PyTorch's own
``THP_MEM_ALLOC_ENABLE=1`` environment variable (huge pages for large tensors: fewer
page faults on the many fresh activation-sized buffers of a training step).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from binface.models import create_model
from binface.nn.layers import apply_weight_clip

TARGET_RATIO = 1.3
DEFAULT_MODELS = ("binaryfacenet", "mobilefacenet", "quicknet_small")


ABLATIONS = ("squeeze-input", "se-output", "dorefa")


def ablate(model: torch.nn.Module, what: set[str]) -> None:
    """BinaryFaceNet with some quantizer work removed, to bound what fusing it could
    gain (a lower bound: the removed work costs nothing). ``squeeze-input``: no DoReFa
    on the SE squeeze's input (the stem's 112x112 output); ``se-output``: the SE's
    output is its input (no channel scale) and the next conv quantizes nothing;
    ``dorefa``: every DoReFa is the identity (a float BinaryFaceNet)."""
    from binface.nn import DoReFa

    bb = model.backbone
    if "squeeze-input" in what:
        bb[1].squeeze[0][0].input_quantizer = None
    if "se-output" in what:
        se = bb[1]
        # keep the excite branch in the graph (its cost stays), drop only x * s; the
        # fused training path would not call this forward, so it is turned off
        se.forward = lambda x: x + 0.0 * se.excite(se.squeeze(x)).sum()
        se.takes_signs = lambda: False
        bb[2][0].input_quantizer = None
    if "dorefa" in what:
        for m in model.modules():
            if isinstance(m, DoReFa):
                m.forward = lambda x: x


class Bench:
    """One model, its optimiser and a fixed input batch."""

    def __init__(self, name: str, batch: int, channels_last: bool, seed: int = 0,
                 without: set[str] | None = None) -> None:
        torch.manual_seed(seed)
        self.name = name
        self.model = create_model(name).train()
        if without and name == "binaryfacenet":
            ablate(self.model, without)
        h, w = getattr(self.model, "input_size", None) or (112, 112)
        self.x = torch.randn(batch, 3, h, w)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.times: list[float] = []
        self.cpu: list[float] = []

    def step(self) -> tuple[float, float]:
        """One forward/backward/step; its wall time and this process's CPU time in seconds."""
        t0, c0 = time.perf_counter(), time.process_time()
        self.opt.zero_grad(set_to_none=True)
        loss = self.model(self.x).sum()
        loss.backward()
        self.opt.step()
        apply_weight_clip(self.model)
        return time.perf_counter() - t0, time.process_time() - c0


def _serve(conn, name: str, batch: int, channels_last: bool, without: set[str],
           threads: int) -> None:
    """A worker process: one model, one step per request (None ends it)."""
    torch.set_num_threads(threads)
    bench = Bench(name, batch, channels_last, without=without)
    while conn.recv() is not None:
        conn.send(bench.step())


class Worker:
    """One model in its own process, stepped on request. A training run has its model
    alone in its process; two models interleaved in one process share glibc's heap,
    which then now and then faults a step's maps in again (binface.nn.memory)."""

    def __init__(self, name: str, batch: int, channels_last: bool, without: set[str],
                 threads: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, name, batch, channels_last,
                                                     without, threads), daemon=True)
        self.proc.start()
        self.times: list[float] = []
        self.cpu: list[float] = []

    def step(self) -> tuple[float, float]:
        self.conn.send(True)
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=30)


def via_train(models: list[str], data: str, batch: int, steps: int, threads: int) -> None:
    """Step time through ``binface train`` (data loading, margin head, optimiser and
    weight clip included), one model after another in its own process: the time per
    step between the last two logs (the log's images/s is cumulative from the start)."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    log_every = max(1, steps // 4)
    per = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            out = Path(tmp) / name
            cmd = [sys.executable, "-m", "binface", "train", f"model={name}",
                   f"data.train={data}", f"train.max_steps={steps}",
                   f"train.batch_size={batch}", f"train.log_every={log_every}",
                   f"output={out}"]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()
                    if '"images_per_s"' in line]
            t = [r["step"] * batch / r["images_per_s"] for r in rows]
            per[name] = (t[-1] - t[-2]) / (rows[-1]["step"] - rows[-2]["step"])
            print(f"{name:>16}: {per[name]:6.3f} s/step through binface train "
                  f"(steps {rows[-2]['step']}-{rows[-1]['step']} of {steps}, batch {batch})")
    if "binaryfacenet" in per and "mobilefacenet" in per:
        r = per["binaryfacenet"] / per["mobilefacenet"]
        print(f"binaryfacenet / mobilefacenet step time through binface train: {r:.2f}x "
              f"({'meets' if r <= TARGET_RATIO else 'misses'} the {TARGET_RATIO}x target)")


def profile(bench: Bench, rows: int) -> None:
    """A torch.profiler table of one step after a warm-up step (self CPU time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    bench.step()
    with tprofile(activities=[ProfilerActivity.CPU]) as prof:
        bench.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help="comma-separated model names (default %(default)s)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=4, help="untimed steps per model (glibc "
                    "needs three or four to settle on reusing freed maps: "
                    "binface.nn.memory)")
    ap.add_argument("--steps", type=int, default=7, help="timed rounds (median reported)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--without", default="", help="BinaryFaceNet without some quantizer "
                    f"work, comma-separated of {', '.join(ABLATIONS)} (lower bounds)")
    ap.add_argument("--train-data", metavar="REC", help="time the models through binface "
                    "train on this training set instead (e.g. the synthetic benchmark's "
                    "train.rec), --steps steps each (default 80 there)")
    ap.add_argument("--profile", metavar="MODEL", help="print a torch.profiler table instead")
    ap.add_argument("--rows", type=int, default=25, help="rows of the --profile table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.profile:
        profile(Bench(args.profile, args.batch, args.channels_last), args.rows)
        return
    if args.train_data:
        steps = args.steps if args.steps != ap.get_default("steps") else 80
        via_train([n.strip() for n in args.models.split(",")], args.train_data, args.batch,
                  steps, args.threads)
        return
    without = {w for w in args.without.split(",") if w}
    if without - set(ABLATIONS):
        raise SystemExit(f"--without: choose from {', '.join(ABLATIONS)}")
    names = [n.strip() for n in args.models.split(",")]
    benches = [Worker(n, args.batch, args.channels_last, without, args.threads)
               for n in names]
    try:
        for b in benches:
            for _ in range(args.warmup):
                b.step()
        for _ in range(args.steps):
            for b in benches:
                wall, cpu = b.step()
                b.times.append(wall)
                b.cpu.append(cpu)
    finally:
        for b in benches:
            b.close()
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"{args.steps} rounds, loss = sum of embeddings, SGD"
          f"{', channels-last' if args.channels_last else ''}"
          f"{', BinaryFaceNet without ' + args.without if without else ''}")
    med = {}
    for b in benches:
        med[b.name] = statistics.median(b.times)
        print(f"{b.name:>16}: {med[b.name]:6.3f} s/step (min {min(b.times):.3f}, "
              f"CPU {statistics.median(b.cpu):.3f} s)  {args.batch / med[b.name]:6.1f} img/s")
    if "binaryfacenet" in med and "mobilefacenet" in med:
        r = med["binaryfacenet"] / med["mobilefacenet"]
        fastest = {b.name: min(b.times) for b in benches}
        r_min = fastest["binaryfacenet"] / fastest["mobilefacenet"]
        verdict = "meets" if r <= TARGET_RATIO else "misses"
        print(f"binaryfacenet / mobilefacenet step time: {r:.2f}x ({verdict} the "
              f"{TARGET_RATIO}x target); fastest steps {r_min:.2f}x")


if __name__ == "__main__":
    main()
