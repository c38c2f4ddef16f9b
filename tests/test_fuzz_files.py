"""Property-based fuzzing of the files binface loads: ``.bfp`` models, checkpoints, configs.

Random mutations of small valid files must give either a correct result or a
``BinfaceError`` whose message is one line, never another exception, a crash or
more than a bounded amount of memory and time:

- ``.bfp``: byte flips and truncations of a small exported model (they must hit
  the checksum or the parser), and edits of its graph JSON and tensor table
  (integers replaced by big, negative, huge or wrong-type values, lists cut or
  grown, names swapped, nodes dropped, duplicated or moved, keys deleted) with the
  digest recomputed, so that they reach the validation; each file is loaded AND
  run on a valid input. A file whose content is unchanged must give the
  reference output exactly;
- checkpoints: a small valid checkpoint dict with its model name, ``model_kwargs``,
  version, keys and ``state_dict`` mutated, saved with ``torch.save`` and loaded
  with ``binface.models.loading.load_model``;
- configs: random YAML documents, non-UTF-8 bytes and a valid config with mutated
  values, loaded with ``binface.train.config.load_config``.

Bounds (as ``tests/test_fuzz_data.py``): the properties run in a child process
whose address space is capped with ``RLIMIT_AS`` at its size after imports plus
512 MiB, so a loader that tries to allocate more fails with ``MemoryError``; each
example must finish within 2 s (hypothesis' deadline); a crash of the child (a
signal such as SIGSEGV) fails the test, naming the last example it started.
Examples are derandomized (fixed seed); ``benchmarks/fuzz_files.py`` runs the same
properties with more examples.

Run directly: ``python tests/test_fuzz_files.py --examples 200``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_fuzz_data import MUTATIONS, limit_memory, mutate, one_line  # noqa: E402

EXAMPLES = 30  # per property in the test run
DEADLINE_MS = 2000
LAST = "FUZZ_FILES_LAST"  # env: where the child writes the example it is running

# ----------------------------------------------------------------------------- .bfp files
BAD_INTS = [0, -1, 1, 2, 3, 7, 63, 64, 65, 400, 1 << 20, 2**31, 2**32 + 1, 2**40, 2**62,
            2**63, 2**64 + 3, 10**30, -(2**63), 1.5, float("nan"), "3", None, True, [], {},
            [1, 2], [[1, 0]]]


def fuzz_model():
    """A small model whose export has every binary op and the common float ones."""
    import torch
    from torch import nn

    from binface.nn import BinaryConv2d, BinaryDepthwiseConv2d

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.PReLU(8),
        BinaryConv2d(8, 16, 3, padding="same", pad_values=0.0), nn.BatchNorm2d(16),
        nn.MaxPool2d(2), BinaryConv2d(16, 64, 3, padding="same", pad_values=1.0),
        BinaryDepthwiseConv2d(64, 3, padding="same", pad_values=1.0), BinaryConv2d(64, 64, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()


def split_bfp(blob: bytes) -> tuple[dict, dict, bytes]:
    """(metadata, tensor table, data section) of a ``.bfp`` file's bytes."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__")
    return meta, header, blob[8 + n:]


def join_bfp(meta: dict, table: dict, body: bytes, graph=None, redigest: bool = True) -> bytes:
    """A ``.bfp`` file from its parts; ``graph`` (any JSON) replaces the metadata's graph."""
    from binface.runtime.bfp import digest

    meta = dict(meta)
    if graph is not None:
        meta["graph"] = json.dumps(graph)
    if redigest:
        meta["sha256"] = digest(meta["graph"], table, body)
    raw = json.dumps({**table, "__metadata__": meta}).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _containers(obj, out: list) -> list:
    """Every dict and list inside ``obj`` (depth first), for picking an edit site."""
    if isinstance(obj, dict):
        out.append(obj)
        for v in obj.values():
            _containers(v, out)
    elif isinstance(obj, list):
        out.append(obj)
        for v in obj:
            _containers(v, out)
    return out


def _int_sites(obj) -> list[tuple]:
    return [(c, k) for c in _containers(obj, [])
            for k in (c if isinstance(c, dict) else range(len(c)))
            if isinstance(c[k], int) and not isinstance(c[k], bool)]


def _str_sites(obj) -> list[tuple]:
    return [(c, k) for c in _containers(obj, [])
            for k in (c if isinstance(c, dict) else range(len(c))) if isinstance(c[k], str)]


GRAPH_EDITS = st.lists(st.one_of(
    st.tuples(st.just("int"), st.integers(0, 10**4), st.sampled_from(BAD_INTS)),
    st.tuples(st.just("list"), st.integers(0, 10**4), st.integers(-3, 2)),
    st.tuples(st.just("swap"), st.integers(0, 10**4), st.integers(0, 10**4)),
    st.tuples(st.just("drop"), st.integers(0, 100)),
    st.tuples(st.just("dup"), st.integers(0, 100)),
    st.tuples(st.just("move"), st.integers(0, 100), st.integers(0, 100)),
    st.tuples(st.just("key"), st.integers(0, 10**4)),
    st.tuples(st.just("table"), st.integers(0, 100), st.sampled_from(["dtype", "shape",
                                                                      "data_offsets"]),
              st.sampled_from(BAD_INTS + ["F64", "I32", "U8", [2**62, 4], [3037000500] * 2,
                                          [-1, 8], [0, 1 << 40], [2**70]])),
    st.tuples(st.just("top"), st.sampled_from(["nodes", "outputs", "input_shape", "consts",
                                               "shapes", "input"]),
              st.sampled_from([None, [], {}, 3, "x", [[1, 0], 3, 8, 8], ["linear"]])),
), min_size=1, max_size=3)


def edit_graph(graph: dict, table: dict, edits: list[tuple]):
    """Apply JSON edits to a copy of (graph, tensor table); returns the new pair."""
    graph, table = copy.deepcopy(graph), copy.deepcopy(table)
    for op in edits:
        kind, nodes = op[0], graph.get("nodes") if isinstance(graph, dict) else None
        if kind == "int":
            sites = _int_sites(graph)
            if sites:
                c, k = sites[op[1] % len(sites)]
                c[k] = copy.deepcopy(op[2])
        elif kind == "list":
            lists = [c for c in _containers(graph, []) if isinstance(c, list) and c]
            if lists:
                lst = lists[op[1] % len(lists)]
                if op[2] < 0:
                    del lst[op[2]:]
                else:
                    lst.extend(copy.deepcopy(lst[:op[2] + 1]))
        elif kind == "swap":
            sites = _str_sites(graph)
            if len(sites) > 1:
                (c1, k1), (c2, k2) = sites[op[1] % len(sites)], sites[op[2] % len(sites)]
                c1[k1], c2[k2] = c2[k2], c1[k1]
        elif kind in ("drop", "dup", "move") and isinstance(nodes, list) and nodes:
            i = op[1] % len(nodes)
            if kind == "drop":
                del nodes[i]
            elif kind == "dup":
                nodes.insert(i, copy.deepcopy(nodes[i]))
            else:
                nodes.insert(op[2] % len(nodes), nodes.pop(i))
        elif kind == "key":
            dicts = [c for c in _containers(graph, []) if isinstance(c, dict) and c]
            if dicts:
                d = dicts[op[1] % len(dicts)]
                del d[sorted(d)[op[1] % len(d)]]
        elif kind == "table" and table:
            name = sorted(table)[op[1] % len(table)]
            table[name][op[2]] = copy.deepcopy(op[3])
        elif kind == "top" and isinstance(graph, dict):
            graph[op[1]] = copy.deepcopy(op[2])
    return graph, table


def load_and_run(data: bytes, x: np.ndarray, ref: np.ndarray | None) -> None:
    """Load and run; the reference output (when ``ref``), any output, or a one-line error."""
    from binface.errors import BinfaceError, InputShapeError
    from binface.runtime import load_packed

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.bfp"
        path.write_bytes(data)
        try:
            engine = load_packed(path)
        except BinfaceError as exc:
            one_line(exc, "m.bfp")
            return
        try:
            y = engine.run(x)
        except InputShapeError as exc:  # the file wants another input: names the model
            one_line(exc, "expects input")
            return
        except BinfaceError as exc:
            one_line(exc, "m.bfp")
            return
    outs = y if isinstance(y, tuple) else (y,)
    assert all(isinstance(o, np.ndarray) and o.dtype == np.float32 for o in outs)
    if ref is not None:
        assert np.array_equal(y, ref)


# ----------------------------------------------------------------------------- checkpoints
def valid_checkpoint() -> dict:
    import torch

    from binface.models import create_model

    torch.manual_seed(0)
    model = create_model("mbf", embedding_size=8)
    return {"format": "binface-checkpoint", "version": 1, "model": "mbf",
            "model_kwargs": {"embedding_size": 8}, "state_dict": model.state_dict()}


CKPT_VALUES = [None, 0, -1, 1, 2, 10**12, -(10**12), 2**63, 1.5, float("nan"), "abc", "",
               "mbf", "nonexistent", "mbf\x1b[31m", [1], {}, {"embedding_size": 8}, True]
CKPT_EDITS = st.lists(st.one_of(
    st.tuples(st.just("set"), st.sampled_from(["model", "version", "format", "model_kwargs",
                                               "state_dict"]), st.sampled_from(CKPT_VALUES)),
    st.tuples(st.just("kwarg"), st.sampled_from(["embedding_size", "width", "input_size",
                                                 "bogus"]), st.sampled_from(CKPT_VALUES)),
    st.tuples(st.just("del"), st.sampled_from(["model", "version", "format", "model_kwargs",
                                               "state_dict"])),
    st.tuples(st.just("tensor"), st.integers(0, 1000), st.sampled_from(
        ["drop", "shape", "dtype", "scalar", "text", "extra"])),
    st.tuples(st.just("whole"), st.sampled_from(["list", "tensor", "none"])),
), min_size=1, max_size=3)


def edit_checkpoint(ckpt: dict, edits: list[tuple]):
    import torch

    ckpt = dict(ckpt)
    ckpt["state_dict"] = dict(ckpt["state_dict"])
    ckpt["model_kwargs"] = dict(ckpt["model_kwargs"])
    for op in edits:
        if not isinstance(ckpt, dict):
            break
        if op[0] == "set":
            ckpt[op[1]] = op[2]
        elif op[0] == "kwarg" and isinstance(ckpt.get("model_kwargs"), dict):
            ckpt["model_kwargs"][op[1]] = op[2]
        elif op[0] == "del":
            ckpt.pop(op[1], None)
        elif op[0] == "tensor" and isinstance(ckpt.get("state_dict"), dict) and ckpt["state_dict"]:
            sd = ckpt["state_dict"]
            key = sorted(sd)[op[1] % len(sd)]
            if op[2] == "drop":
                del sd[key]
            elif op[2] == "shape":
                sd[key] = torch.zeros(tuple(sd[key].shape) + (2,))
            elif op[2] == "dtype":
                sd[key] = sd[key].to(torch.float64)
            elif op[2] == "scalar":
                sd[key] = 5
            elif op[2] == "text":
                sd[key] = "x"
            else:
                sd["bogus.weight"] = torch.zeros(3)
        elif op[0] == "whole":
            ckpt = {"list": [1, 2], "tensor": torch.zeros(2), "none": None}[op[1]]
    return ckpt


def load_ckpt(ckpt) -> None:
    import torch

    from binface.errors import BinfaceError
    from binface.models.loading import LoadedModel, load_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.pt"
        torch.save(ckpt, path)
        try:
            lm = load_model(path)
        except BinfaceError as exc:
            one_line(exc, "c.pt")
            assert "\x1b" not in str(exc)
            return
    assert isinstance(lm, LoadedModel) and isinstance(lm.model, torch.nn.Module)


# ----------------------------------------------------------------------------- configs
VALID_CONFIG = {"model": {"name": "mbf"}, "data": {"train": "data/train.rec"},
                "optim": {"lr": 0.1}, "train": {"epochs": 2, "batch_size": 64, "seed": 1},
                "output": "runs/x"}
CONFIG_VALUES = [".nan", "nan", float("nan"), float("inf"), 10**23, -1, 0, 1e11, 2**63, [1, 2],
                 ["a", "b"], {"a": 1}, None, True, "x", "", 5, "\x00", "é"]
yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                         st.floats(allow_nan=True), st.text(max_size=8))
yaml_docs = st.recursive(yaml_scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(st.sampled_from(
        ["model", "name", "data", "train", "optim", "lr", "epochs", "seed", "output", "teacher",
         "base", "x", "embedding_size"]), kids, max_size=3)), max_leaves=8)
CONFIG_EDITS = st.lists(st.tuples(st.integers(0, 100), st.sampled_from(CONFIG_VALUES)),
                        min_size=1, max_size=3)


def edit_config(edits: list[tuple]) -> dict:
    cfg = copy.deepcopy(VALID_CONFIG)
    leaves = [(d, k) for d in _containers(cfg, []) if isinstance(d, dict) for k in d
              if not isinstance(d[k], dict)]
    for i, value in edits:
        d, k = leaves[i % len(leaves)]
        d[k] = copy.deepcopy(value)
    return cfg


def load_cfg(text: bytes) -> None:
    from binface.errors import BinfaceError
    from binface.train.config import load_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_bytes(text)
        try:
            cfg = load_config(path)
        except BinfaceError as exc:
            text = str(exc)
            assert text and "\n" not in text and "\r" not in text, repr(text)
            return
    assert isinstance(cfg, dict) and isinstance(cfg["train"]["epochs"], (int, float))
    assert -(2**63) <= cfg["train"]["seed"] < 2**64  # what torch.manual_seed takes


FOUND_CONFIGS = [b"\xff\xfetrain: {epochs: 2}\n", b"output: caf\xe9\n",
                     b"train: {seed: 100000000000000000000000}\n"]


# ----------------------------------------------------------------------------- properties
def _note(example) -> None:
    """Record the example about to run: if the process dies, the parent names it."""
    where = os.environ.get(LAST)
    if where:
        Path(where).write_text(repr(example)[:4000])


def fixtures(folder: Path) -> dict:
    """The valid files and their reference results (made before the memory cap)."""
    import torch

    from binface.runtime import export_packed, load_packed

    export_packed(fuzz_model(), folder / "v.bfp", input_size=(8, 8), channels=3)
    blob = (folder / "v.bfp").read_bytes()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8), dtype=np.float32)
    ref = load_packed(folder / "v.bfp").run(x)
    with torch.no_grad():
        torch_ref = fuzz_model()(torch.from_numpy(x)).numpy()
    assert np.abs(ref - torch_ref).max() < 1e-4
    return {"bfp": blob, "x": x, "ref": ref, "ckpt": valid_checkpoint()}


def properties(examples: int, fx: dict) -> list:
    """The hypothesis-wrapped properties, each a callable that runs its search."""
    blob, x, ref = fx["bfp"], fx["x"], fx["ref"]
    meta, table, body = split_bfp(blob)
    graph = json.loads(meta["graph"])
    common = dict(max_examples=examples, derandomize=True, deadline=DEADLINE_MS,
                  database=None, suppress_health_check=list(HealthCheck), print_blob=True)

    @settings(**common)
    @given(MUTATIONS)
    def fuzz_bfp_bytes(ops):
        _note(("bfp_bytes", ops))
        data = mutate(blob, ops)
        load_and_run(data, x, ref if split_ok(data, blob) else None)

    @settings(**common)
    @given(GRAPH_EDITS)
    def fuzz_bfp_graph(edits):
        _note(("bfp_graph", edits))
        g, t = edit_graph(graph, table, edits)
        load_and_run(join_bfp(meta, t, body, graph=g), x, None)

    @settings(**common)
    @given(CKPT_EDITS)
    def fuzz_checkpoint(edits):
        _note(("checkpoint", edits))
        load_ckpt(edit_checkpoint(fx["ckpt"], edits))

    @settings(**common)
    @given(st.one_of(
        yaml_docs.map(lambda d: yaml.safe_dump(d).encode()),
        st.binary(max_size=40),
        CONFIG_EDITS.map(lambda e: yaml.safe_dump(edit_config(e)).encode()),
        CONFIG_EDITS.map(lambda e: b"\xff\xfe" + yaml.safe_dump(edit_config(e)).encode()),
    ))
    def fuzz_config(text):
        _note(("config", text))
        load_cfg(text)

    return [fuzz_bfp_bytes, fuzz_bfp_graph, fuzz_checkpoint, fuzz_config]


def split_ok(data: bytes, blob: bytes) -> bool:
    """Whether mutated bytes still parse to the same header and data (e.g. padding edits)."""
    try:
        return split_bfp(data)[1:] == split_bfp(blob)[1:] and (
            split_bfp(data)[0] == split_bfp(blob)[0])
    except (ValueError, KeyError, struct.error, UnicodeDecodeError, TypeError):
        return False


def run(examples: int, only: str = "") -> None:
    """Check the loaders on the valid files, then run every property under the memory cap."""
    import torch

    import binface.models.loading  # noqa: F401
    import binface.train.config  # noqa: F401

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        fx = fixtures(Path(tmp))
        load_and_run(fx["bfp"], fx["x"], fx["ref"])  # warm: numba kernels, BLAS, torch.load
        load_ckpt(fx["ckpt"])
        load_cfg(yaml.safe_dump(VALID_CONFIG).encode())
        cap = limit_memory()
        print(f"address space capped at {cap >> 20} MiB; {examples} examples per property")
        for prop in properties(examples, fx):
            if only and only not in prop.__name__:
                continue
            prop()
            print(f"{prop.__name__}: ok", flush=True)


# ----------------------------------------------------------------------------- pytest
def run_child(examples: int, only: str = "", timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the properties in a child process; a crash names the example that caused it."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        last = Path(tmp) / "last"
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", **{LAST: str(last)}, PYTHONPATH=os.pathsep.join(
                       [str(root / "src"), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, __file__, "--examples", str(examples),
                               "--only", only], capture_output=True, text=True,
                              timeout=timeout, env=env)
        if proc.returncode < 0 and last.exists():  # killed by a signal
            proc.stderr += f"\nkilled by signal {-proc.returncode} running {last.read_text()}"
    return proc


def test_valid_files_give_the_right_result(tmp_path):
    from binface.runtime.bfp import parse_bfp

    fx = fixtures(tmp_path)
    load_and_run(fx["bfp"], fx["x"], fx["ref"])
    meta, table, body = split_bfp(fx["bfp"])
    graph = json.loads(meta["graph"])
    assert join_bfp(meta, table, body, graph) != fx["bfp"]  # re-serialised, same content
    assert parse_bfp(join_bfp(meta, table, body, graph))[0] == graph
    assert edit_graph(graph, table, []) == (graph, table)
    load_ckpt(fx["ckpt"])
    load_cfg(json.dumps(VALID_CONFIG).encode())
    assert edit_config([]) == VALID_CONFIG


@pytest.mark.parametrize("text", FOUND_CONFIGS)
def test_configs_the_harness_found(text, tmp_path):
    """Found by this harness (a non-UTF-8 file, a seed torch cannot take): one line now."""
    from binface.errors import BinfaceError
    from binface.train.config import load_config

    (tmp_path / "c.yaml").write_bytes(text)
    with pytest.raises(BinfaceError) as info:
        load_config(tmp_path / "c.yaml")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("prop", ["bfp_bytes", "bfp_graph", "checkpoint", "config"])
def test_fuzz_in_a_memory_capped_process(prop):
    proc = run_child(EXAMPLES, prop)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.stdout.count(": ok") == 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=EXAMPLES, help="examples per property")
    ap.add_argument("--only", default="", help="run the properties whose name holds this")
    args = ap.parse_args()
    run(args.examples, args.only)
