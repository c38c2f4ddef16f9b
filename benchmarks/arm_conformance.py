"""The packed engine on arm64 against x86: helpers of ``benchmarks/arm_conformance.sh``.

Three modes:

- ``export`` (x86, torch): every binary zoo model (``list_models("binary")``) with
  non-trivial BatchNorm statistics -> ``DATA/models/NAME.bfp``, and the x86 engine's
  results on one fixed random batch -> ``DATA/ref/NAME.npz`` (the input, the
  embeddings, and each traced binary layer's integer dot products ``acc``) plus
  ``DATA/reference.json``.
- ``check`` (arm64, under qemu-aarch64 user mode; numpy and numba only, no torch):
  loads each ``.bfp``, runs the same input with ``trace=True`` and compares: integer
  sums bit for bit, embeddings within ``--tol`` of the largest |value| of the x86
  embeddings. Also records the versions and what numba's LLVM targets (CPU name,
  features, and whether the compiled popcount loop uses NEON's CNT). Writes
  ``DATA/arm_result.json`` after every model.
- ``report`` (x86): ``docs/results/arm.json`` and ``docs/results/arm.md``.

Timings under emulation mean nothing: none are written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SEED = 0
TOL = 1e-5  # embedding deviation, relative to the largest |value| of the x86 embeddings


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions() -> dict:
    import numba
    import numpy

    out = {"python": platform.python_version(), "numpy": numpy.__version__,
           "numba": numba.__version__, "machine": platform.machine()}
    try:
        import llvmlite

        out["llvmlite"] = llvmlite.__version__
    except ImportError:  # pragma: no cover - numba needs it
        pass
    return out


def _log(msg: str) -> None:
    print(f"[arm_conformance {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- export (x86)
FIRST = ("quicknet_small", "binaryfacenet")  # checked first, should time run out


def _order(names: list[str]) -> list[str]:
    return [n for n in FIRST if n in names] + [n for n in names if n not in FIRST]


def export(args) -> None:
    import torch

    from binface.models import create_model, list_models
    from binface.nn import randomize_statistics
    from binface.runtime import export_packed, load_packed

    torch.manual_seed(SEED)
    data = Path(args.data)
    (data / "models").mkdir(parents=True, exist_ok=True)
    (data / "ref").mkdir(parents=True, exist_ok=True)
    binary = list_models("binary")
    names = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else binary
    for n in names:
        if n not in binary:
            raise SystemExit(f"{n} is not a model of family 'binary' ({', '.join(binary)})")
    models = []
    for name in _order(names):
        t0 = time.perf_counter()
        model = randomize_statistics(create_model(name), SEED)
        path = data / "models" / f"{name}.bfp"
        info = export_packed(model, path, name=name)
        eng = load_packed(path)
        size = tuple(int(s) for s in eng.graph.get("input_size", (112, 112)))
        # one fixed batch per input size: the same seed for every model
        x = np.random.default_rng(SEED).standard_normal((args.batch, 3, *size), dtype=np.float32)
        y, recs = eng.run(x, trace=True)
        arrays = {"x": x, "y": np.asarray(y, np.float32)}
        layers = []
        for i, r in enumerate(recs):
            arrays[f"acc{i}"] = np.asarray(r["acc"])
            layers.append({"node": r["node"], "op": r["op"], "source": r["source"],
                           "shape": list(np.shape(r["acc"])), "dtype": str(r["acc"].dtype),
                           "sum": int(np.asarray(r["acc"], np.int64).sum())})
        np.savez_compressed(data / "ref" / f"{name}.npz", **arrays)
        models.append({"model": name, "file": f"models/{name}.bfp", "sha256": _sha256(path),
                       "bytes": path.stat().st_size, "binary_layers": info["binary_layers"],
                       "nodes": info["nodes"], "records": len(layers),
                       "batch_dynamic": eng.batch_dynamic, "input_shape": list(x.shape),
                       "binary_macs": eng.summary()["binary_macs"],
                       "layers": layers})
        _log(f"{name}: exported, {info['binary_layers']} binary layers, {len(layers)} trace "
             f"records ({time.perf_counter() - t0:.0f} s)")
    import llvmlite.binding as llvm

    x86 = {**_versions(), "torch": torch.__version__, "cpu": llvm.get_host_cpu_name()}
    ref = {"seed": SEED, "batch": args.batch, "x86": x86, "models": models}
    (data / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")


# ---------------------------------------------------------------- check (arm64)
_NEON_CNT = re.compile(r"\bcnt\s+v\d+\.(8b|16b)\b", re.IGNORECASE)
_NEON_REG = re.compile(r"\bv\d+\.(8b|16b|4h|8h|2s|4s|1d|2d)\b", re.IGNORECASE)


def _asm_neon(asm: str) -> dict:
    return {"cnt_vector": len(_NEON_CNT.findall(asm)),
            "vector_register_operands": len(_NEON_REG.findall(asm))}


def target_info() -> dict:
    """What numba's LLVM compiles for here, and whether the popcount loop uses NEON."""
    import llvmlite.binding as llvm
    import numba
    from numba import njit

    from binface.runtime.kernels import popcount64

    out: dict = {"triple": llvm.get_process_triple(), "host_cpu_name": llvm.get_host_cpu_name()}
    try:
        feats = llvm.get_host_cpu_features()
        on = sorted(k for k, v in feats.items() if v)
        out["host_cpu_features"] = on
    except RuntimeError as exc:  # LLVM cannot read them (e.g. no /proc/cpuinfo Features)
        out["host_cpu_features"] = None
        out["host_cpu_features_error"] = str(exc)
    out["numba_config_cpu_name"] = numba.config.CPU_NAME
    out["numba_config_cpu_features"] = numba.config.CPU_FEATURES
    try:
        from numba.core.registry import cpu_target

        cg = cpu_target.target_context.codegen()
        out["numba_target_cpu"] = cg._get_host_cpu_name()
        out["numba_target_features"] = cg._get_host_cpu_features()
    except (AttributeError, RuntimeError) as exc:  # private API: best effort
        out["numba_target_error"] = f"{type(exc).__name__}: {exc}"

    # the engine's inner loop (xor a packed input word with a row of weight words,
    # popcount, accumulate), compiled here, uncached; its assembly says which
    # instructions the target gets
    @njit(cache=False, boundscheck=False)
    def xor_pop_row(x, w, acc):  # pragma: no cover - compiled
        for i in range(w.shape[0]):
            acc[i] += popcount64(x ^ w[i])

    w = np.arange(64, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    acc = np.zeros(64, np.uint64)
    xor_pop_row(np.uint64(0xDEADBEEF), w, acc)
    ref = np.array([bin(int(np.uint64(0xDEADBEEF) ^ v)).count("1") for v in w], np.uint64)
    asm = xor_pop_row.inspect_asm(xor_pop_row.signatures[0])
    out["probe"] = {"function": "acc[i] += popcount64(x ^ w[i]) (the bconv inner loop)",
                    "correct": bool(np.array_equal(acc, ref)), **_asm_neon(asm)}
    out["neon"] = out["probe"]["cnt_vector"] > 0
    try:
        out["cpuinfo_head"] = Path("/proc/cpuinfo").read_text()[:400].splitlines()[:8]
    except OSError:
        out["cpuinfo_head"] = None
    return out


def _engine_kernels_neon() -> dict:
    """CNT in the engine's own compiled kernels (those loaded from cache may have no asm)."""
    from binface.runtime import kernels

    out = {}
    for name in ("bconv", "bconv_win", "bdwconv"):
        fn = getattr(kernels, name)
        n, seen = 0, 0
        for sig in fn.signatures:
            try:
                n += _asm_neon(fn.inspect_asm(sig))["cnt_vector"]
                seen += 1
            except Exception:  # noqa: BLE001 - a cache-loaded overload keeps no assembly
                pass
        out[name] = {"signatures": len(fn.signatures), "with_asm": seen, "cnt_vector": n}
    return out


def check(args) -> None:
    import importlib.util

    from binface.runtime.engine import load_packed

    data = Path(args.data)
    ref = json.loads((data / "reference.json").read_text())
    names = [m.strip() for m in args.models.split(",")] if args.models else None
    result = {"versions": _versions(), "torch_installed": importlib.util.find_spec("torch")
              is not None, "target": target_info(), "tolerance": args.tol,
              "deviation": "max |y_arm - y_x86| / max |y_x86| over the batch's embeddings",
              "seed": ref["seed"], "batch": ref["batch"], "models": []}
    _log(f"{result['versions']}, cpu {result['target']['host_cpu_name']}, "
         f"neon {result['target']['neon']}")
    out_path = data / "arm_result.json"
    todo = sorted(ref["models"], key=lambda m: (m["model"] not in FIRST, m["binary_macs"]))
    for m in todo:
        if names and m["model"] not in names:
            continue
        t0 = time.perf_counter()
        path = data / m["file"]
        entry = {"model": m["model"], "sha256_ok": _sha256(path) == m["sha256"]}
        r = np.load(data / "ref" / f"{m['model']}.npz")
        eng = load_packed(path)
        y, recs = eng.run(r["x"], trace=True)
        y = np.asarray(y, np.float32)
        yr = r["y"]
        diffs, mismatched = [], 0
        same_layers = len(recs) == len(m["layers"])
        for i, (rec, lay) in enumerate(zip(recs, m["layers"], strict=False)):
            a, b = np.asarray(rec["acc"]), r[f"acc{i}"]
            ok = rec["node"] == lay["node"] and a.shape == b.shape and np.array_equal(a, b)
            if not ok:
                mismatched += 1
                nd = int((a != b).sum()) if a.shape == b.shape else -1
                diffs.append({"node": lay["node"], "source": lay["source"], "differing": nd})
        absdev = float(np.abs(y - yr).max()) if y.shape == yr.shape else float("inf")
        scale = float(np.abs(yr).max())
        entry.update({
            "layers": len(m["layers"]), "records_arm": len(recs),
            "integer_elements": int(sum(int(np.prod(lay["shape"])) for lay in m["layers"])),
            "integer_sums_exact": same_layers and mismatched == 0,
            "layers_differing": diffs,
            "max_embedding_deviation": absdev / max(scale, 1e-30),
            "max_embedding_abs_deviation": absdev, "max_abs_embedding": scale,
            "embedding_shape": list(yr.shape),
        })
        # the engine's own path (no trace): per-op kernels, then the flat replay, whose
        # float ops (attention, concatenation copies) are row kernels the trace skips
        xr = np.array(r["x"])
        for _ in range(3):
            yp = np.asarray(eng.run(xr), np.float32)
        pdev = float(np.abs(yp - yr).max()) if yp.shape == yr.shape else float("inf")
        entry["max_replay_deviation"] = pdev / max(scale, 1e-30)
        entry["embedding_within_tol"] = max(entry["max_embedding_deviation"],
                                            entry["max_replay_deviation"]) <= args.tol
        result["models"].append(entry)
        _log(f"{m['model']}: {len(recs)} layers, exact {entry['integer_sums_exact']}, "
             f"deviation {entry['max_embedding_deviation']:.3g}, replayed "
             f"{entry['max_replay_deviation']:.3g} "
             f"({time.perf_counter() - t0:.0f} s with compilation)")
        result["engine_kernels"] = _engine_kernels_neon()
        result["torch_imported"] = "torch" in sys.modules
        out_path.write_text(json.dumps(result, indent=1) + "\n")
    result["engine_kernels"] = _engine_kernels_neon()
    result["torch_imported"] = "torch" in sys.modules
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    bad = [e["model"] for e in result["models"]
           if not (e["integer_sums_exact"] and e["embedding_within_tol"] and e["sha256_ok"])]
    if bad:
        raise SystemExit(f"not conformant on arm64: {', '.join(bad)}")


# ---------------------------------------------------------------- report (x86)
def _git(repo: Path, *a: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *a], capture_output=True, text=True,
                          check=True).stdout.strip()


def _read_wheels(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            spec, plat, rc, files, last = (line.split("\t") + [""] * 5)[:5]
            rows.append({"spec": spec, "platform": plat, "found": rc == "0",
                         "files": files.split() if files else [], "pip_last_line": last,
                         "command": f"pip download --platform {plat} --only-binary=:all: "
                                    f"--no-deps {spec}"})
    return rows


def _read_phases(path: Path, root: Path) -> dict:
    phases: dict = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                phases[parts[0]] = int(parts[1])  # the latest run of each phase
    for key, marker in (("root_build", root / ".binface-root-ok"),
                        ("venv_build", root / "opt/binface-venv/.binface-venv-built")):
        if marker.is_file():
            m = re.search(r"in (\d+) s", marker.read_text())
            if m:
                phases[key] = int(m.group(1))
    return phases


def _root_method(root: Path) -> str:
    """How the arm64 root was made, from its stamp (the root phase writes it)."""
    marker = root / ".binface-root-ok"
    text = marker.read_text() if marker.is_file() else ""
    if "unpacked natively" in text:
        return ("debootstrap's first stage, every package unpacked natively with "
                "dpkg-deb, no maintainer scripts run")
    return "debootstrap, second stage under qemu"


def report(args) -> None:
    data = Path(args.data)
    repo = Path(__file__).resolve().parent.parent
    ref = json.loads((data / "reference.json").read_text())
    arm = json.loads((data / "arm_result.json").read_text())
    t = arm["target"]
    commit = _git(repo, "rev-parse", "HEAD")
    dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    models = [{k: e.get(k) for k in ("model", "layers", "integer_sums_exact",
                                 "max_embedding_deviation", "max_replay_deviation",
                                 "max_embedding_abs_deviation",
                                 "max_abs_embedding", "integer_elements", "embedding_shape",
                                 "layers_differing", "sha256_ok")} for e in arm["models"]]
    checked = {e["model"] for e in arm["models"]}
    not_checked = [m["model"] for m in ref["models"] if m["model"] not in checked]
    wheels = _read_wheels(Path(args.wheels))
    pip_log = Path(args.pip_log) if args.pip_log else None
    installed = sorted(set(re.findall(r"([\w.-]+\.whl)", pip_log.read_text()))) \
        if pip_log and pip_log.is_file() else []
    out = {
        "command": args.command, "commit": commit, "dirty": dirty,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "qemu": args.qemu, "python": arm["versions"]["python"],
        "numpy": arm["versions"]["numpy"], "numba": arm["versions"]["numba"],
        "llvmlite": arm["versions"].get("llvmlite"), "machine": arm["versions"]["machine"],
        "cpu": t["host_cpu_name"], "neon": t["neon"], "target": t,
        "engine_kernels_cnt": arm.get("engine_kernels"),
        "torch_installed_on_arm": arm["torch_installed"], "torch_imported_on_arm":
            arm["torch_imported"],
        "x86": ref["x86"], "seed": ref["seed"], "batch": ref["batch"],
        "tolerance": arm["tolerance"], "deviation": arm["deviation"],
        "models": models, "models_not_checked": not_checked,
        "all_exact": all(m["integer_sums_exact"] for m in models) and bool(models),
        "max_embedding_deviation": max((m["max_embedding_deviation"] for m in models),
                                       default=None),
        "max_replay_deviation": max((m["max_replay_deviation"] or 0 for m in models),
                                    default=None),
        "wheels_installed_on_arm": installed, "wheels": wheels,
        "phases_s": _read_phases(Path(args.phases), Path(args.root)),
        "root_method": _root_method(Path(args.root)),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    Path(args.md).write_text(_markdown(out))
    _log(f"wrote {args.json} and {args.md}")


def _markdown(d: dict) -> str:
    t = d["target"]
    rows = "\n".join(
        f"| {m['model']} | {m['layers']} | {m['integer_elements']:,} | "
        f"{'yes' if m['integer_sums_exact'] else 'NO'} | {m['max_embedding_deviation']:.2e} | "
        f"{m['max_embedding_abs_deviation']:.2e} |" for m in d["models"])
    lce = [w for w in d["wheels"] if w["spec"].startswith("larq-compute-engine")]
    others = [w for w in d["wheels"] if not w["spec"].startswith("larq-compute-engine")]

    def wline(w):
        got = ", ".join(w["files"]) if w["found"] else "nothing (" + w["pip_last_line"] + ")"
        return f"- `{w['command']}`: {got}"

    feats = t.get("host_cpu_features")
    x86 = d["x86"]
    ph = dict(d["phases_s"])
    built = [f"the root was built in {ph.pop('root_build')} s" if "root_build" in ph else "",
             f"the venv in {ph.pop('venv_build')} s" if "venv_build" in ph else ""]
    phases = (", ".join(f"{k} {v} s" for k, v in ph.items()) + "; "
              + ", ".join(b for b in built if b))
    method = d.get("root_method", "debootstrap, second stage under qemu")
    missing = (f"\nNot checked (time): {', '.join(d['models_not_checked'])}.\n"
               if d["models_not_checked"] else "")
    return f"""# The packed engine on arm64 (issue 17)

Run by `{d['command']}`
at commit `{d['commit'][:10]}`{' (with local changes)' if d['dirty'] else ''}, {d['date']}.

An arm64 Debian bookworm root ({method}), the aarch64
wheels of numpy and numba from PyPI installed inside it by pip, and a copy of binface's
source: its packed engine ran there in qemu-aarch64 user mode
(`{d['qemu']}`), with no torch installed (`import binface.runtime.engine`
needs numpy and numba only).

Every binary zoo model was exported on x86 (random weights, non-trivial BatchNorm
statistics, seed {d['seed']}) and run by the x86 engine on one random batch of
{d['batch']} images; the ARM engine ran the same files on the same batch. "Integer
sums" are every traced binary layer's integer dot products (`engine.run(x, trace=True)`,
each record's `acc`), compared element by element. The embedding deviation is
{d['deviation']} (tolerance {d['tolerance']:g}).

| model | binary layers | integer sums | all bit-exact | embedding dev. (rel.) | abs. |
|---|---|---|---|---|---|
{rows}
{missing}
All integer sums bit-exact: **{'yes' if d['all_exact'] else 'no'}**; largest embedding
deviation {d['max_embedding_deviation']:.2e}. The same batch run three more times
without tracing (the per-op path, then the flat replay, whose attention and
concatenation ops are numba row kernels a trace run does not use): largest deviation
from the x86 trace's embedding {d['max_replay_deviation']:.2e}.

## Versions and target

- ARM side: Python {d['python']}, numpy {d['numpy']}, numba {d['numba']}, llvmlite
  {d['llvmlite']} ({d['machine']}), `{d['qemu']}`.
- x86 side (reference): Python {x86['python']}, numpy {x86['numpy']}, numba {x86['numba']},
  torch {x86['torch']}, CPU `{x86['cpu']}`.
- numba's LLVM target on ARM: triple `{t['triple']}`, host CPU `{t['host_cpu_name']}`,
  features {'`' + ','.join(feats) + '`' if feats else 'none reported'}; numba's target
  features `{t.get('numba_target_features', '?')}`.
- NEON: **{'yes' if d['neon'] else 'no'}**. The engine's inner loop
  (`acc[i] += popcount64(x ^ w[i])`) compiled there has {t['probe']['cnt_vector']} vector
  `cnt` instructions (NEON's CNT on bytes) and {t['probe']['vector_register_operands']}
  NEON vector-register operands in its assembly. {_cpu_note(t)}

## Wheels on PyPI

pip inside the ARM root installed (`--only-binary=:all:`):
{', '.join('`' + w + '`' for w in d['wheels_installed_on_arm']) or 'see the venv phase log'}.

{chr(10).join(wline(w) for w in lce)}
{chr(10).join(wline(w) for w in others)}

LCE 0.16.0 publishes no Linux aarch64 wheel (PyPI's files for 0.16.0: Linux x86_64,
macOS x86_64 and arm64, Windows x86_64; its only arm64 wheel is the macOS one), while
numpy, numba and llvmlite do. The numpy and numba releases
used here tag theirs `manylinux_2_27` / `manylinux_2_28`, so
`--platform manylinux2014_aarch64` alone does not find them (older releases, such as
numba 0.60.0, the floor in `pyproject.toml`, are `manylinux2014`); Debian bookworm's
glibc 2.36 takes both.

## Phases

Wall time of each phase in this run: {phases} (the root and the venv are reused when
already built). These are build and run times under emulation on a 2-core x86 host;
no latency is measured here.
"""


def _cpu_note(t: dict) -> str:
    if t.get("host_cpu_name") == "generic":
        return ("qemu-user shows the host's /proc/cpuinfo, so LLVM sees no ARM CPU and "
                "compiles for `generic` AArch64, which includes NEON (Advanced SIMD is "
                "mandatory in ARMv8-A); on a real board numba targets that board's CPU.")
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    e = sub.add_parser("export", help="x86: .bfp files and the x86 engine's reference")
    e.add_argument("--data", required=True)
    e.add_argument("--batch", type=int, default=2)
    e.add_argument("--models", default="", help="comma-separated (default: family binary)")
    c = sub.add_parser("check", help="arm64: run the files and compare with the reference")
    c.add_argument("--data", required=True)
    c.add_argument("--models", default="")
    c.add_argument("--tol", type=float, default=TOL)
    r = sub.add_parser("report", help="x86: docs/results/arm.json and arm.md")
    for a in ("--data", "--json", "--md", "--command", "--qemu", "--root"):
        r.add_argument(a, required=True)
    r.add_argument("--wheels", default="")
    r.add_argument("--phases", default="")
    r.add_argument("--pip-log", default="")
    args = ap.parse_args(argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    {"export": export, "check": check, "report": report}[args.mode](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
