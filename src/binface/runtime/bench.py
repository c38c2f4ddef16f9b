"""``binface bench``: latency of one model in several runtimes, side by side.

Each runtime runs in its own worker process (``python -m binface.runtime.bench``)
with its thread count fixed through the environment before numpy, torch or
onnxruntime load, so that its peak RSS is its own (the packed worker never
imports torch: that is its deployment footprint). After warm-up the parent asks
the workers for their timed runs in turns, round after round, so that a burst
of load from another process hits every runtime alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from binface.errors import BinfaceError
from binface.runtime.errors import RuntimeUnavailableError

RUNTIMES = ("torch", "onnx", "packed", "lce")
FILE_RUNTIMES = {".bfp": "packed", ".onnx": "onnx", ".tflite": "lce"}
NOTES = {
    "torch": "PyTorch eager, oneDNN (binary weights quantized ahead of time)",
    "onnx": "ONNX Runtime CPU (binary layers, if any, as float convs)",
    "packed": "binface packed engine, numba (binary layers as xor + popcount)",
    "lce": "Larq Compute Engine 0.16 interpreter (LceBconv2d where LCE can; x86: portable C++)",
}


def check_runtimes(names: list[str]) -> list[str]:
    """Validate runtime names; ``lce`` and unknown names are one-line errors."""
    out = []
    for r in names:
        r = r.strip().lower()
        if not r:
            continue
        if r not in RUNTIMES:
            raise RuntimeUnavailableError(f"unknown runtime {r!r}; known: {', '.join(RUNTIMES)}")
        if r == "lce":
            from binface.runtime.lce import import_lce

            import_lce()  # a one-line error saying how to install the extra
        if r not in out:
            out.append(r)
    if not out:
        raise RuntimeUnavailableError("no runtime given (choose from torch, onnx, packed, lce)")
    return out


# ---------------------------------------------------------------- artifacts
@dataclass
class Artifacts:
    """What each runtime needs: the model spec for torch, a .bfp, an .onnx, a .tflite."""

    name: str
    spec: str | None  # registered name or checkpoint (torch); None for a bare file
    packed: str | None = None
    onnx: str | None = None
    lce: str | None = None
    input_size: tuple[int, int] = (112, 112)


def prepare(spec: str, runtimes: list[str], workdir: str | os.PathLike,
            input_size: tuple[int, int] | None = None) -> Artifacts:
    """Export what the runtimes need into ``workdir`` (unless ``spec`` is already that file)."""
    p = Path(spec)
    runtime = FILE_RUNTIMES.get(p.suffix)
    if runtime is not None:  # an exported file: only its own runtime can run it
        bad = [r for r in runtimes if r != runtime]
        if bad:
            article = "an" if p.suffix == ".onnx" else "a"
            raise RuntimeUnavailableError(f"runtime {bad[0]} cannot run {article} {p.suffix} "
                                          "file; give a model name or checkpoint")
        if runtime == "packed":  # read_bfp names a missing or corrupt file itself
            from binface.runtime.bfp import read_bfp

            graph, _ = read_bfp(p)
            return Artifacts(graph.get("model", p.stem), None, packed=str(p),
                             input_size=tuple(graph.get("input_size", (112, 112))))
        if not p.is_file():
            raise BinfaceError(f"{p}: no such file")
        return Artifacts(p.stem, None, input_size=input_size or (112, 112), **{runtime: str(p)})
    from binface.models.loading import load_model

    lm = load_model(spec, input_size)
    art = Artifacts(lm.name, spec, input_size=lm.input_size)
    work = Path(workdir)
    if "packed" in runtimes:
        from binface.runtime.export import export_packed

        art.packed = str(work / f"{lm.name}.bfp")
        export_packed(lm.model, art.packed, lm.input_size)
    if "onnx" in runtimes:
        from binface.runtime.onnx_rt import export_onnx

        art.onnx = str(work / f"{lm.name}.onnx")
        export_onnx(lm.model, art.onnx, lm.input_size)
    if "lce" in runtimes:
        from binface.runtime.lce import export_lce

        art.lce = str(work / f"{lm.name}.tflite")
        export_lce(lm.model, art.lce, lm.input_size)
    return art


# ---------------------------------------------------------------- workers
def _worker_env(threads: int, runtime: str) -> dict:
    """Thread counts fixed before the worker's libraries load.

    The packed engine splits a batch over its own threads, so its BLAS stays on one
    (a BLAS pool per engine thread would oversubscribe the cores several times over).
    """
    env = dict(os.environ)
    n = 1 if runtime == "packed" else threads
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS"):
        env[k] = str(n)
    return env


class _Worker:
    def __init__(self, runtime: str, artifact: str, threads: int, batch: int,
                 input_size: tuple[int, int]) -> None:
        self.runtime = runtime
        cmd = [sys.executable, "-m", "binface.runtime.bench", "--worker", runtime, artifact,
               str(threads), str(batch), str(input_size[0]), str(input_size[1])]
        # stderr to a file: a chatty worker must never block on a full pipe
        self.err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True,
                                     env=_worker_env(threads, runtime))
        self.times: list[float] = []

    def ask(self, msg: dict) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            self.err.seek(0)
            err = self.err.read().strip().splitlines()
            last = err[-1] if err else "no output"
            raise BinfaceError(f"the {self.runtime} worker failed: {last}")
        reply = json.loads(line)
        if "error" in reply:
            raise BinfaceError(f"{self.runtime}: {reply['error']}")
        return reply

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.ask({"cmd": "quit"})
        except (BinfaceError, BrokenPipeError, ValueError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.err.close()


def _stats(runtime: str, times: list[float], batch: int, rss_mb: float) -> dict:
    t = np.asarray(times) * 1e3
    med = float(np.median(t))
    return {"runtime": runtime, "median_ms": round(med, 4),
            "p90_ms": round(float(np.percentile(t, 90)), 4),
            "fps": round(batch * 1e3 / med, 2), "peak_rss_mb": round(rss_mb, 1),
            "runs": len(times)}


def run_bench(spec: str, runtimes: list[str], threads: int = 1, batch: int = 1,
              repeats: int = 50, warmup: int = 5, rounds: int = 5,
              input_size: tuple[int, int] | None = None, progress: bool = False) -> dict:
    """Benchmark ``spec`` (name, checkpoint, .bfp, .onnx, .tflite) in each runtime, side by side."""
    runtimes = check_runtimes(runtimes)
    if threads < 1 or batch < 1 or repeats < 1:
        raise BinfaceError("threads, batch and repeats must be positive")
    rounds = max(1, min(rounds, repeats))
    with tempfile.TemporaryDirectory(prefix="binface-bench-") as tmp:
        art = prepare(spec, runtimes, tmp, input_size)
        paths = {"torch": art.spec, "packed": art.packed, "onnx": art.onnx, "lce": art.lce}
        workers = [_Worker(r, str(paths[r]), threads, batch, art.input_size) for r in runtimes]
        try:
            for w in workers:
                w.ask({"cmd": "warmup", "n": warmup})
            per_round = [repeats // rounds + (1 if i < repeats % rounds else 0)
                         for i in range(rounds)]
            it = range(rounds)
            if progress:
                from binface.progress import progress as progress_bar

                it = progress_bar(it, desc=f"bench {art.name}", unit="round", leave=False)
            for i in it:
                for w in workers:
                    w.times += w.ask({"cmd": "time", "n": per_round[i]})["times"]
            results = [_stats(w.runtime, w.times, batch, w.ask({"cmd": "rss"})["rss_mb"])
                       for w in workers]
        finally:
            for w in workers:
                w.close()
    return {"model": art.name, "threads": threads, "batch": batch,
            "input_size": list(art.input_size), "results": results}


def measure(model_or_path, runtime: str, threads: int = 1, batch: int = 1,
            repeats: int = 50, warmup: int = 5) -> dict:
    """One runtime's latency: ``{"runtime", "median_ms", "p90_ms", "fps", "peak_rss_mb"}``.

    ``model_or_path``: a registered name, a checkpoint, a .bfp, an .onnx or a .tflite file.
    """
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise BinfaceError("measure() takes a model name or a file path")
    out = run_bench(str(model_or_path), [runtime], threads, batch, repeats, warmup, rounds=1)
    return out["results"][0]


def render(result: dict) -> str:
    """The side-by-side table of :func:`run_bench`."""
    rows = result["results"]
    h, w = result.get("input_size", (112, 112))
    lines = [f"{result['model']} at {h}x{w}, batch {result['batch']}, {result['threads']} "
             f"thread(s)",
             f"{'runtime':<8} {'median ms':>10} {'p90 ms':>9} {'img/s':>9} {'peak RSS MB':>12} "
             f"{'vs torch':>9}  note"]
    base = next((r["median_ms"] for r in rows if r["runtime"] == "torch"), None)
    for r in rows:
        speed = f"{base / r['median_ms']:.2f}x" if base else "-"
        lines.append(f"{r['runtime']:<8} {r['median_ms']:>10.3f} {r['p90_ms']:>9.3f} "
                     f"{r['fps']:>9.1f} {r['peak_rss_mb']:>12.1f} {speed:>9}  "
                     f"{NOTES.get(r['runtime'], '')}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- worker process
def _load_runner(runtime: str, artifact: str, threads: int, shape: tuple[int, ...]):
    """(run function, input shape without the batch) of one runtime."""
    if runtime == "packed":
        from binface.runtime.engine import load_packed, resolve

        eng = load_packed(artifact, threads=threads, limit_blas=False)  # env var does it
        return eng.run, resolve(eng.input_shape, 1)[1:]
    if runtime == "onnx":
        from binface.runtime.onnx_rt import OnnxRunner

        runner = OnnxRunner(artifact, threads)
        dims = runner.input_shape[1:]
        return runner.run, tuple(int(d) for d in dims) if all(
            isinstance(d, int) for d in dims) else shape
    if runtime == "lce":
        from binface.runtime.lce import LceRunner

        runner = LceRunner(artifact, threads)
        _, h, w, c = runner.input_shape
        return runner.run, (c, h, w)
    import torch

    from binface.models.loading import load_model
    from binface.runtime.capture import inference_copy

    torch.set_num_threads(threads)
    model = inference_copy(load_model(artifact).model)

    def run(x: np.ndarray):
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run, shape


def _peak_rss_mb() -> float:
    """Peak resident memory of this process since it started (VmHWM).

    Not ``ru_maxrss``: Linux carries that over ``exec`` from the parent, so every
    worker would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker_main(argv: list[str]) -> int:
    runtime, artifact, threads, batch, h, w = argv
    out = sys.stdout
    try:
        fn, shape = _load_runner(runtime, artifact, int(threads), (3, int(h), int(w)))
        x = np.random.default_rng(0).standard_normal((int(batch), *shape), dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fn, x = None, None
        load_error = msg
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.get("cmd")
        if cmd == "quit":
            break
        if fn is None:
            reply = {"error": load_error}
        elif cmd == "warmup":
            for _ in range(int(msg.get("n", 5))):
                fn(x)
            reply = {"ok": True}
        elif cmd == "time":
            times = []
            for _ in range(int(msg["n"])):
                t0 = time.perf_counter()
                fn(x)
                times.append(time.perf_counter() - t0)
            reply = {"times": times}
        elif cmd == "rss":
            reply = {"rss_mb": _peak_rss_mb(), "torch_loaded": "torch" in sys.modules}
        else:
            reply = {"error": f"unknown command {cmd!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2:]))


def layer_times(engine, x: np.ndarray, repeats: int = 20) -> list[dict]:
    """Median time of every op of a packed engine on ``x``, with binary MACs per second.

    Runs in this process (no worker): meant for per-layer figures, not end to end.
    """
    from binface.runtime.engine import RunContext

    engine.run(x)
    samples: dict[int, list[float]] = {i: [] for i in range(len(engine.ops))}
    for _ in range(repeats):
        ctx = RunContext(x.shape[0], False)
        env = dict(engine.consts)
        env[engine.input_name] = engine.check_input(x)
        for i, op in enumerate(engine.ops):
            t0 = time.perf_counter()
            op(env, ctx)
            samples[i].append(time.perf_counter() - t0)
    rows = []
    for i, op in enumerate(engine.ops):
        med = float(np.median(samples[i]))
        macs = int(getattr(op, "macs_per_sample", 0)) * x.shape[0]
        rows.append({"name": op.name, "op": op.node["op"], "source": op.attrs.get("source"),
                     "kernel": op.attrs.get("kernel"), "ms": med * 1e3, "binary_macs": macs,
                     "gmacs_per_s": macs / med / 1e9 if macs else None})
    return rows
