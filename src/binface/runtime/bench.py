"""``binface bench``: latency of one model in several runtimes, side by side.

Each runtime runs in its own worker process (``python -m binface.runtime.bench``)
with its thread count fixed through the environment before numpy, torch or
onnxruntime load, so that its peak RSS is its own (the packed worker never
imports torch: that is its deployment footprint). After warm-up the parent asks
the workers for their timed runs in turns, round after round, so that a burst
of load from another process hits every runtime alike.

:func:`time_jobs` does this for any list of (runtime, artifact) jobs: one worker
per runtime hosts all of that runtime's models, and every round visits every job
(``binface compare`` times many models this way; :func:`run_bench` is one model).
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

RUNTIMES = ("torch", "onnx", "onnx-int8", "packed", "lce")
FILE_RUNTIMES = {".bfp": "packed", ".onnx": "onnx", ".tflite": "lce"}
NOTES = {
    "torch": "PyTorch eager, oneDNN (binary weights quantized ahead of time)",
    "onnx": "ONNX Runtime CPU (binary layers, if any, as float convs)",
    "onnx-int8": "ONNX Runtime CPU, static int8 QDQ from ONNX Runtime's quantiser (per-channel "
                 "U8S8; float models only)",
    "packed": "binface packed engine, numba (binary layers as xor + popcount)",
    "lce": "Larq Compute Engine 0.16 interpreter (LceBconv2d where LCE can; x86: portable C++)",
}


def check_runtimes(names: list[str], installed: bool = True) -> list[str]:
    """Validate runtime names; unknown names (and, with ``installed``, a missing ``lce``)
    are one-line errors."""
    out = []
    for r in names:
        r = r.strip().lower()
        if not r:
            continue
        if r not in RUNTIMES:
            raise RuntimeUnavailableError(f"unknown runtime {r!r}; known: {', '.join(RUNTIMES)}")
        if r == "lce" and installed:
            from binface.runtime.lce import import_lce

            import_lce()  # a one-line error saying how to install the extra
        if r not in out:
            out.append(r)
    if not out:
        raise RuntimeUnavailableError(f"no runtime given (choose from {', '.join(RUNTIMES)})")
    return out


# ---------------------------------------------------------------- artifacts
@dataclass
class Artifacts:
    """What each runtime needs: the model spec for torch, a .bfp, an .onnx, a .tflite."""

    name: str
    spec: str | None  # registered name or checkpoint (torch); None for a bare file
    packed: str | None = None
    onnx: str | None = None
    onnx_int8: str | None = None
    lce: str | None = None
    input_size: tuple[int, int] = (112, 112)

    def path(self, runtime: str) -> str | None:
        """What ``runtime`` loads: the spec for torch, else the exported file (None if none)."""
        return self.spec if runtime == "torch" else getattr(self, runtime.replace("-", "_"))


SUFFIXES = {"packed": ".bfp", "onnx": ".onnx", "onnx-int8": ".int8.onnx", "lce": ".tflite"}
# images an int8 export calibrates on when timing without --calibrate (the latency of an
# int8 graph does not depend on its scales, so noise serves for timing)
TIMING_CALIBRATION_IMAGES = 8


def _export(runtime: str, model, path: Path, input_size: tuple[int, int],
            calibrate: str | None = None) -> None:
    if runtime == "onnx-int8":
        from binface.nn.qat import is_qat
        from binface.runtime.int8 import export_onnx_int8

        data = calibrate
        if data is None and not is_qat(model):
            data = np.random.default_rng(0).integers(
                0, 256, (TIMING_CALIBRATION_IMAGES, *input_size, 3), dtype=np.uint8)
        export_onnx_int8(model, path, calibrate=data, input_size=input_size)
    elif runtime == "packed":
        from binface.runtime.export import export_packed

        export_packed(model, path, input_size)
    elif runtime == "onnx":
        from binface.runtime.onnx_rt import export_onnx

        export_onnx(model, path, input_size)
    else:
        from binface.runtime.lce import export_lce

        export_lce(model, path, input_size)


def first_line(exc: BaseException) -> str:
    """An exception as one short line (its message's first line, else its type)."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def prepare(spec: str, runtimes: list[str], workdir: str | os.PathLike,
            input_size: tuple[int, int] | None = None, *, loaded=None,
            errors: dict[str, str] | None = None, calibrate: str | None = None) -> Artifacts:
    """Export what the runtimes need into ``workdir`` (unless ``spec`` is already that file).

    ``loaded``: the :class:`~binface.models.loading.LoadedModel` of ``spec`` when the
    caller has it already. With an ``errors`` dict, a runtime that cannot run the
    model (another runtime's file, an export that fails) is noted there as one line
    and left out, instead of raising: one model's gap does not stop a comparison.
    ``calibrate``: data for ``onnx-int8`` (a .rec, image folder or pack); without it a
    float model is calibrated on noise, which is enough to time it (not to score it).
    """
    p = Path(spec)
    runtime = FILE_RUNTIMES.get(p.suffix)
    if runtime is not None:  # an exported file: only its own runtime can run it
        bad = [r for r in runtimes if r != runtime]
        if bad and errors is None:
            article = "an" if p.suffix == ".onnx" else "a"
            raise RuntimeUnavailableError(f"runtime {bad[0]} cannot run {article} {p.suffix} "
                                          "file; give a model name or checkpoint")
        for r in bad:
            errors[r] = f"a {p.suffix} file runs in {runtime} only"
        if runtime == "packed":  # read_bfp names a missing or corrupt file itself
            from binface.runtime.bfp import read_bfp

            graph, _ = read_bfp(p)
            return Artifacts(graph.get("model", p.stem), None, packed=str(p),
                             input_size=tuple(graph.get("input_size", (112, 112))))
        if not p.is_file():
            raise BinfaceError(f"{p}: no such file")
        return Artifacts(p.stem, None, input_size=input_size or (112, 112), **{runtime: str(p)})
    if loaded is None:
        from binface.models.loading import load_model

        loaded = load_model(spec, input_size)
    lm = loaded
    art = Artifacts(lm.name, spec, input_size=lm.input_size)
    work = Path(workdir)
    for r in ("packed", "onnx", "onnx-int8", "lce"):
        if r not in runtimes:
            continue
        path = work / f"{lm.name}{SUFFIXES[r]}"
        try:
            _export(r, lm.model, path, lm.input_size, calibrate)
        except Exception as exc:  # noqa: BLE001 - exporters raise many types; noted per runtime
            if errors is None:
                raise
            errors[r] = f"export failed: {first_line(exc)}"
            continue
        setattr(art, r.replace("-", "_"), str(path))
    return art


# ---------------------------------------------------------------- workers
def _worker_env(threads: int, runtime: str) -> dict:
    """Thread counts fixed before the worker's libraries load.

    The packed engine runs its row kernels on numba's (OpenMP) threads, so its BLAS
    stays on one (BLAS threads spinning beside them would oversubscribe the cores).
    """
    env = dict(os.environ)
    blas = 1 if runtime == "packed" else threads
    for k in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        env[k] = str(blas)
    for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[k] = str(threads)
    return env


@dataclass
class Job:
    """One (model, runtime) to time: what that runtime loads, at the model's input size."""

    runtime: str
    artifact: str  # a name or checkpoint (torch), a .bfp, .onnx or .tflite file
    input_size: tuple[int, int] = (112, 112)
    threads: int | None = None  # None: time_jobs' own
    batch: int | None = None
    # a source tree (its ``src`` folder) the worker imports binface from instead: the
    # engine as an older commit had it, timed beside today's in the same run
    src: str | None = None


class _WorkerDied(BinfaceError):
    """A worker process that stopped answering: every model it hosts is lost."""


class _Worker:
    """One runtime's worker process; it hosts any number of models, each under an id."""

    def __init__(self, runtime: str, threads: int, batch: int, src: str | None = None) -> None:
        self.runtime = runtime
        cmd = [sys.executable, "-m", "binface.runtime.bench", "--worker", runtime,
               str(threads), str(batch)]
        env = _worker_env(threads, runtime)
        if src is not None:
            if not (Path(src) / "binface" / "runtime").is_dir():
                raise BinfaceError(f"{src}: not a binface source folder (no binface/runtime)")
            env["PYTHONPATH"] = os.pathsep.join([str(Path(src).resolve())] + [
                p for p in [env.get("PYTHONPATH")] if p])
        # stderr to a file: a chatty worker must never block on a full pipe
        self.err = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, env=env)

    def send(self, msg: dict) -> None:
        assert self.proc.stdin
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # it died: recv() says why

    def recv(self) -> dict:
        """The next reply; ``{"error": ...}`` replies are returned, a dead worker raises."""
        assert self.proc.stdout
        line = self.proc.stdout.readline()
        if not line:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.err.seek(0)
            err = self.err.read().strip().splitlines()
            last = err[-1] if err else "no output"
            raise _WorkerDied(f"the {self.runtime} worker failed: {last}")
        return json.loads(line)

    def ask(self, msg: dict) -> dict:
        self.send(msg)
        reply = self.recv()
        if "error" in reply:
            raise BinfaceError(f"{self.runtime}: {reply['error']}")
        return reply

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send({"cmd": "quit"})
        except (BinfaceError, BrokenPipeError, ValueError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            if f:
                f.close()
        self.err.close()


def _stats(runtime: str, times: list[float], batch: int, rss_mb: float) -> dict:
    t = np.asarray(times) * 1e3
    med = float(np.median(t))
    return {"runtime": runtime, "median_ms": round(med, 4),
            "p90_ms": round(float(np.percentile(t, 90)), 4),
            "fps": round(batch * 1e3 / med, 2), "peak_rss_mb": round(rss_mb, 1),
            "runs": len(times)}


ROUND_WARMUP = 3  # untimed runs that open each round of a job


def time_jobs(jobs: list[Job], threads: int = 1, batch: int = 1, repeats: int = 50,
              warmup: int = 5, rounds: int = 5, progress: str | None = None,
              strict: bool = True) -> list[dict]:
    """Time every job side by side: one worker per runtime (and per threads and batch,
    where a job sets its own), rounds visiting every job.

    Each round of a job opens with ROUND_WARMUP untimed runs: the worker before it has
    filled the caches and its threads have gone to sleep, and a run takes about three
    to be back at its steady speed (QuickNet, packed, batch 1: 1.16, 1.06, 1.01, then
    0.96 ms on one thread; 0.86, 0.67, 0.62, then 0.60 ms on two). Left in, those runs
    weighed on every figure, most on the fastest jobs and on thread counts above one.

    Returns one :func:`_stats` dict per job, in order (``peak_rss_mb`` is that of the
    job's worker, all its models loaded). A job that fails (its model does not load
    or run, its worker dies) raises with ``strict``; otherwise its entry is
    ``{"runtime", "error"}`` (one line) and the other jobs go on.
    ``progress``: the description of a bar over the rounds, or None for no bar.
    """
    keys = [(j.runtime, threads if j.threads is None else j.threads,
             batch if j.batch is None else j.batch, j.src) for j in jobs]
    if any(t < 1 or b < 1 for _, t, b, _ in keys) or threads < 1 or batch < 1 \
            or repeats < 1 or warmup < 0:
        raise BinfaceError("threads, batch and repeats must be positive")
    rounds = max(1, min(rounds, repeats))
    errors: list[str | None] = [None] * len(jobs)
    times: list[list[float]] = [[] for _ in jobs]
    workers: dict[tuple, _Worker] = {}
    dead: dict[tuple, str] = {}

    def fail(i: int, msg: str) -> None:
        if strict:
            raise BinfaceError(msg)
        errors[i] = msg

    def answer(i: int) -> dict | None:
        """Job ``i``'s reply from its worker, or None once the job has failed."""
        key = keys[i]
        if key in dead:
            fail(i, dead[key])
            return None
        try:
            reply = workers[key].recv()
        except _WorkerDied as exc:
            if strict:
                raise
            dead[key] = str(exc)
            fail(i, dead[key])
            return None
        if "error" in reply:
            fail(i, f"{key[0]}: {reply['error']}")
            return None
        return reply

    def each(msg_of) -> list[dict | None]:
        """Send every live job its message, then collect: the workers work in parallel."""
        live = [i for i in range(len(jobs)) if errors[i] is None]
        for i in live:
            workers[keys[i]].send(msg_of(i))
        return [answer(i) for i in live]

    try:
        for key in keys:
            if key not in workers:
                workers[key] = _Worker(*key)
        each(lambda i: {"cmd": "load", "id": i, "artifact": jobs[i].artifact,
                        "size": list(jobs[i].input_size)})
        each(lambda i: {"cmd": "warmup", "id": i, "n": warmup})
        per_round = [repeats // rounds + (1 if k < repeats % rounds else 0)
                     for k in range(rounds)]
        it = range(rounds)
        if progress:
            from binface.progress import progress as progress_bar

            it = progress_bar(it, desc=progress, unit="round", leave=False)
        for k in it:
            for i in range(len(jobs)):  # one job at a time: timed runs never overlap
                if errors[i] is None:
                    workers[keys[i]].send({"cmd": "time", "id": i, "n": per_round[k],
                                           "warm": ROUND_WARMUP})
                    reply = answer(i)
                    if reply is not None:
                        times[i] += reply["times"]
        rss = {}
        for key, w in workers.items():
            if key not in dead:
                try:
                    rss[key] = w.ask({"cmd": "rss"})["rss_mb"]
                except BinfaceError:
                    rss[key] = float("nan")
    finally:
        for w in workers.values():
            w.close()
    return [{"runtime": job.runtime, "error": errors[i]} if errors[i] is not None
            else _stats(job.runtime, times[i], keys[i][2], rss.get(keys[i], float("nan")))
            for i, job in enumerate(jobs)]


def run_bench(spec: str, runtimes: list[str], threads: int = 1, batch: int = 1,
              repeats: int = 50, warmup: int = 5, rounds: int = 5,
              input_size: tuple[int, int] | None = None, progress: bool = False,
              calibrate: str | None = None) -> dict:
    """Benchmark ``spec`` (name, checkpoint, .bfp, .onnx, .tflite) in each runtime, side by side."""
    runtimes = check_runtimes(runtimes)
    if threads < 1 or batch < 1 or repeats < 1:
        raise BinfaceError("threads, batch and repeats must be positive")
    with tempfile.TemporaryDirectory(prefix="binface-bench-") as tmp:
        art = prepare(spec, runtimes, tmp, input_size, calibrate=calibrate)
        jobs = [Job(r, str(art.path(r)), art.input_size) for r in runtimes]
        results = time_jobs(jobs, threads, batch, repeats, warmup, rounds,
                            progress=f"bench {art.name}" if progress else None)
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
             f"{'runtime':<9} {'median ms':>10} {'p90 ms':>9} {'img/s':>9} {'peak RSS MB':>12} "
             f"{'vs torch':>9}  note"]
    base = next((r["median_ms"] for r in rows if r["runtime"] == "torch"), None)
    for r in rows:
        speed = f"{base / r['median_ms']:.2f}x" if base else "-"
        lines.append(f"{r['runtime']:<9} {r['median_ms']:>10.3f} {r['p90_ms']:>9.3f} "
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
    if runtime in ("onnx", "onnx-int8"):
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
    """Serve one runtime: load models by id, then warm them up and time them on request.

    Every request gets one JSON line back; a model that fails to load or run gets
    ``{"error": one line}`` and the worker goes on serving the others.
    """
    runtime, threads, batch = argv[0], int(argv[1]), int(argv[2])
    models: dict[int, tuple] = {}  # id -> (run function, input batch)
    out = sys.stdout
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.get("cmd")
        if cmd == "quit":
            break
        try:
            if cmd == "load":
                h, w = msg["size"]
                fn, shape = _load_runner(runtime, msg["artifact"], threads, (3, int(h), int(w)))
                x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
                models[int(msg["id"])] = (fn, x)
                reply: dict = {"ok": True}
            elif cmd == "warmup":
                fn, x = models[int(msg["id"])]
                for _ in range(int(msg.get("n", 5))):
                    fn(x)
                reply = {"ok": True}
            elif cmd == "time":
                fn, x = models[int(msg["id"])]
                for _ in range(int(msg.get("warm", 0))):
                    fn(x)
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
        except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
            reply = {"error": first_line(exc)}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2:]))


def popcount_peak(words: int = 2048, seconds: float = 0.3) -> float:
    """This core's xor + popcount peak in binary MACs per second (64 per word xor-ed):
    the binary convs' register-blocked inner loop (``kernels.xor_popcount_peak``) on
    ``words`` weight words (16 KiB at 2048) and four pixels' input words, all in L1,
    timed for about ``seconds``."""
    from binface.runtime.kernels import BLOCK_CHANNELS, BLOCK_PIXELS, xor_popcount_peak

    rng = np.random.default_rng(0)
    nk = max(1, words // BLOCK_CHANNELS)
    w = rng.integers(0, 2**63, (nk, BLOCK_CHANNELS), dtype=np.uint64)
    xs = rng.integers(0, 2**63, BLOCK_PIXELS * nk, dtype=np.uint64)
    per_call = 64.0 * BLOCK_PIXELS * w.size
    xor_popcount_peak(xs, w, 10)  # compile / warm
    reps, best = 100, 0.0
    while True:
        t0 = time.perf_counter()
        xor_popcount_peak(xs, w, reps)
        dt = time.perf_counter() - t0
        best = max(best, per_call * reps / dt)
        if dt >= seconds / 3:
            break
        reps *= 4
    for _ in range(2):  # best of three at the final size
        t0 = time.perf_counter()
        xor_popcount_peak(xs, w, reps)
        best = max(best, per_call * reps / (time.perf_counter() - t0))
    return best


def _macs(op, env: dict, n: int) -> tuple[int, str]:
    """(MACs of the op on this batch, precision "1bit" | "32bit")."""
    from binface.runtime.ops.binary import BConvOp, BDwConvOp
    from binface.runtime.ops.floats import LinearOp, MatmulOp

    if isinstance(op, (BConvOp, BDwConvOp)):
        return int(op.macs_per_sample) * n, "1bit"
    if isinstance(op, LinearOp):  # rows x K x O; rows known only at run time
        x = env[op.inputs[0]]
        return int(np.prod(x.shape[:-1])) * int(op.w.shape[0]) * int(op.w.shape[1]), "32bit"
    if isinstance(op, MatmulOp):
        a, b = env[op.inputs[0]], env[op.inputs[1]]
        return int(np.prod(a.shape)) * int(b.shape[-1]), "32bit"
    return int(getattr(op, "macs_per_sample", 0)) * n, "32bit"


def layer_times(engine, x: np.ndarray, repeats: int = 20, peak: float | None = None
                ) -> list[dict]:
    """Median time of every op of a packed engine on ``x``: its module path, kind, MACs
    by precision, G MAC/s and, given ``peak`` (binary MACs/s), each binary op's share
    of it. Runs in this process, one op after another (meant for per-layer figures; the
    end-to-end latency is :func:`run_bench`'s)."""
    engine.run(x)
    samples: dict[int, list[float]] = {i: [] for i in range(len(engine.ops))}
    macs: dict[int, tuple[int, str]] = {}
    for _ in range(repeats):
        ctx = engine.context(x.shape[0])
        env = dict(engine.consts)
        env[engine.input_name] = engine.check_input(x)
        for i, op in enumerate(engine.ops):
            if i not in macs:
                macs[i] = _macs(op, env, x.shape[0])
            t0 = time.perf_counter()
            op(env, ctx)
            samples[i].append(time.perf_counter() - t0)
    rows = []
    for i, op in enumerate(engine.ops):
        med = float(np.median(samples[i]))
        m, prec = macs[i]
        rate = m / med if m and med > 0 else None
        rows.append({"name": op.name, "op": op.node["op"], "source": op.attrs.get("source"),
                     "kernel": op.attrs.get("kernel"), "ms": med * 1e3,
                     "macs_1bit": m if prec == "1bit" else 0,
                     "macs_32bit": m if prec == "32bit" else 0,
                     "gmacs_per_s": rate / 1e9 if rate else None,
                     "pct_of_peak": 100.0 * rate / peak if rate and peak and prec == "1bit"
                     else None})
    return rows


def per_layer(spec: str, threads: int = 1, batch: int = 1, repeats: int = 20,
              input_size: tuple[int, int] | None = None) -> dict:
    """``binface bench --per-layer``: the packed engine's op-by-op profile of ``spec``
    against this core's measured xor + popcount peak."""
    from binface.runtime.engine import load_packed

    with tempfile.TemporaryDirectory(prefix="binface-bench-") as tmp:
        art = prepare(spec, ["packed"], tmp, input_size)
        engine = load_packed(art.path("packed"), threads=threads)
        from binface.runtime.ops.layout import resolve

        shape = resolve(engine.input_shape, batch)
        h, w = shape[-2:]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        peak = popcount_peak()
        rows = layer_times(engine, x, repeats, peak)
    total = sum(r["ms"] for r in rows)
    return {"model": art.name, "runtime": "packed", "threads": threads, "batch": batch,
            "input_size": [h, w], "peak_gmacs_per_s": peak / 1e9, "total_ms": total,
            "layers": rows}


def render_layers(res: dict, top: int | None = None) -> str:
    """The per-layer table: slowest first when ``top`` is given, else in graph order."""
    rows = res["layers"]
    if top:
        rows = sorted(rows, key=lambda r: -r["ms"])[:top]
    lines = [f"{res['model']} (packed) at {res['input_size'][0]}x{res['input_size'][1]}, batch "
             f"{res['batch']}, {res['threads']} thread(s): {res['total_ms']:.3f} ms over "
             f"{len(res['layers'])} ops, each timed alone; this core's xor + popcount peak "
             f"{res['peak_gmacs_per_s']:.0f} G binary MAC/s",
             f"{'op':<12} {'ms':>8} {'share':>6} {'1-bit MACs':>12} {'32-bit MACs':>12} "
             f"{'G MAC/s':>8} {'% peak':>7}  module"]
    for r in rows:
        rate = f"{r['gmacs_per_s']:.1f}" if r["gmacs_per_s"] else "-"
        pct = f"{r['pct_of_peak']:.1f}" if r["pct_of_peak"] is not None else "-"
        lines.append(f"{r['op']:<12} {r['ms']:>8.3f} {100 * r['ms'] / res['total_ms']:>5.1f}% "
                     f"{r['macs_1bit']:>12,} {r['macs_32bit']:>12,} {rate:>8} {pct:>7}  "
                     f"{r['source'] or r['name']}")
    return "\n".join(lines) + "\n"
