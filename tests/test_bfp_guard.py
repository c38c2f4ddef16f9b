"""Crafted ``.bfp`` files: each is one line ``PackedFormatError`` naming the file and node.

Each case edits a small valid export (and recomputes the digest, as an attacker
would, so that the edit reaches the engine's validation). The risky ones run in a
child process, so a kernel reading out of bounds fails the test (its exit status)
instead of killing pytest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from binface.nn import BinaryConv2d
from binface.runtime import export_packed, load_packed
from binface.runtime.engine import MAX_NODES
from binface.runtime.errors import PackedFormatError

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_fuzz_files import join_bfp, split_bfp  # noqa: E402

CHILD = """
import sys
import numpy as np
from binface.errors import BinfaceError
from binface.runtime import load_packed
try:
    e = load_packed(sys.argv[1])
    shape = [2] + [d if isinstance(d, int) else d[0] + d[1] for d in e.input_shape[1:]]
    e.run(np.ones(shape, np.float32))
    print("OK")
except BinfaceError as exc:
    print("ERR", type(exc).__name__, str(exc))
"""


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> tuple[dict, dict, bytes, dict]:
    """(metadata, tensor table, data, graph) of a two-layer binary net on 8 x 54 x 54."""
    path = tmp_path_factory.mktemp("guard") / "v.bfp"
    torch.manual_seed(0)
    model = nn.Sequential(BinaryConv2d(8, 8, 3, padding="same"), nn.BatchNorm2d(8),
                          BinaryConv2d(8, 70, 3, padding="same", pad_values=0.0)).eval()
    export_packed(model, path, input_size=(54, 54), channels=8)
    meta, table, body = split_bfp(path.read_bytes())
    return meta, table, body, json.loads(meta["graph"])


def crafted(tmp_path, valid, edit=None, table_edit=None, graph=None) -> Path:
    meta, table, body, g = valid
    g, table = copy.deepcopy(g if graph is None else graph), copy.deepcopy(table)
    if edit:
        edit(g)
    if table_edit:
        table_edit(table)
    path = tmp_path / "crafted.bfp"
    path.write_bytes(join_bfp(meta, table, body, graph=g))
    return path


def in_child(path: Path) -> str:
    """Load and run ``path`` in a child; its one output line (a crash fails here)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return lines[0]


def in_process(path: Path) -> str:
    """As :func:`in_child`, for files refused at load, before any kernel could run."""
    from binface.errors import BinfaceError

    try:
        e = load_packed(path)
        shape = [2] + [d if isinstance(d, int) else d[0] + d[1] for d in e.input_shape[1:]]
        e.run(np.ones(shape, np.float32))
        return "OK"
    except BinfaceError as exc:
        return f"ERR {type(exc).__name__} {exc}"


def refused(line: str, *words: str) -> None:
    assert line.startswith("ERR PackedFormatError crafted.bfp") or (
        line.startswith("ERR PackedFormatError ") and "crafted.bfp" in line), line
    for w in words:
        assert w in line, (w, line)


def bconv(g: dict, i: int = 0) -> dict:
    return [n for n in g["nodes"] if n["op"] == "bconv"][i]


def test_the_valid_file_runs(tmp_path, valid):
    assert in_child(crafted(tmp_path, valid)) == "OK"


def test_out_hw_edited(tmp_path, valid):
    """Was exit 139: the kernel wrote a 400 x 400 output from a 54 x 54 input."""
    def edit(g):
        bconv(g)["attrs"]["out_hw"] = [400, 400]
        bconv(g)["attrs"]["out_shape"] = [[1, 0], 8, 400, 400]
    name = bconv(valid[3])["name"]
    refused(in_child(crafted(tmp_path, valid, edit)), name, "out_hw [400, 400]")


@pytest.mark.parametrize("key,value", [("in_hw", [400, 400]), ("pads", [9, 9, 9, 9]),
                                       ("kernel", [9, 9]), ("stride", [0, 1]),
                                       ("groups", 2), ("cg", 70), ("og", 9), ("win", 64),
                                       ("dilation", [2, 2]), ("nres", 2)])
def test_kernel_attribute_edited(tmp_path, valid, key, value):
    def edit(g):
        bconv(g, 1)["attrs"][key] = value
    refused(in_child(crafted(tmp_path, valid, edit)), bconv(valid[3], 1)["name"])


def test_producer_and_consumer_disagree(tmp_path, valid):
    """Each node consistent alone, the packed halo wrong: refused where the kernel is called."""
    def edit(g):
        pk = bconv(g)["attrs"]["pack"]
        pk["pads"] = [0, 0, 0, 0]
    refused(in_child(crafted(tmp_path, valid, edit)), bconv(valid[3], 1)["name"], "imply")


def test_54000_nodes(tmp_path, valid):
    """Was 11.8 GB: every node's buffers were made at load."""
    def edit(g):
        g["nodes"] += [{"op": "reshape", "in": [g["outputs"][0]], "out": [f"v{i}"],
                        "attrs": {"shape": [[1, 0], -1]}} for i in range(54_000)]
    assert MAX_NODES < 54_000
    refused(in_process(crafted(tmp_path, valid, edit)), "54003 nodes", "limit")
    # and a header beyond any real one (the zoo's largest is 118 kB) is refused unread
    meta, table, body, g = valid
    path = tmp_path / "crafted.bfp"
    path.write_bytes(join_bfp(dict(meta, pad="x" * (17 << 20)), table, body))
    refused(in_process(path), "beyond the limit")


@pytest.mark.parametrize("shape", [[2**70], [2**62, 4], [3037000500, 3037000500], [-1, 9]])
def test_tensor_shape_beyond_int64_or_wrapping(tmp_path, valid, shape):
    name = bconv(valid[3])["attrs"]["weight"]

    def table_edit(t):
        t[name]["shape"] = shape
    refused(in_process(crafted(tmp_path, valid, table_edit=table_edit)), name)


@pytest.mark.parametrize("dims", [[[1, 0], 8, 2**70, 54], [[1, 0], 8, 54, [2**62, 4]],
                                  [[1, 0], 8, 54, -54]])
def test_input_shape_beyond_limits(tmp_path, valid, dims):
    def edit(g):
        g["input_shape"] = dims
    refused(in_process(crafted(tmp_path, valid, edit)), "input_shape")


def test_graph_is_a_json_list(tmp_path, valid):
    refused(in_process(crafted(tmp_path, valid, graph=[valid[3]])), "JSON list")


@pytest.mark.parametrize("how", ["float64", "shape", "1-D", "int32"])
def test_wrong_ep_tensor(tmp_path, valid, how):
    """Was a numba typing error ("During: Pass nopython_type_inference")."""
    meta, table, body, g = valid
    ep = bconv(g, 1)["attrs"]["ep"]
    arr = np.zeros((6, 70), np.float32)
    bad = {"float64": arr.astype(np.float64), "shape": arr[:, :9].copy(),
           "1-D": arr.reshape(-1), "int32": arr.astype(np.int32)}[how]
    # append the bad tensor to the data section and point the table at it
    code = {"float64": "F64", "int32": "I32"}.get(how, "F32")
    table = copy.deepcopy(table)
    table[ep] = {"dtype": code, "shape": list(bad.shape),
                 "data_offsets": [len(body), len(body) + bad.nbytes]}
    path = tmp_path / "crafted.bfp"
    path.write_bytes(join_bfp(meta, table, body + bad.tobytes(), graph=g))
    refused(in_child(path), bconv(g, 1)["name"], "ep")


def test_undefined_input(tmp_path, valid):
    def edit(g):
        bconv(g, 1)["in"] = ["nowhere"]
    refused(in_process(crafted(tmp_path, valid, edit)), "'nowhere'", "not made")


@pytest.mark.parametrize("how", ["order", "output", "duplicate", "missing tensor"])
def test_graph_order_and_names(tmp_path, valid, how):
    def edit(g):
        if how == "order":
            g["nodes"].reverse()
        elif how == "output":
            g["outputs"] = ["never"]
        elif how == "duplicate":
            g["nodes"].append(copy.deepcopy(g["nodes"][-1]))
        else:
            bconv(g)["attrs"]["weight"] = "absent"
    refused(in_process(crafted(tmp_path, valid, edit)))


def test_version_1_file_is_refused(tmp_path, valid):
    """Version 1's digest covered the data only: refused, with the re-export advice."""
    meta, table, body, g = valid
    meta = dict(meta, version="1", sha256=hashlib.sha256(body).hexdigest())
    raw = json.dumps({**table, "__metadata__": meta}).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "crafted.bfp"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)
    with pytest.raises(PackedFormatError) as e:
        load_packed(path)
    msg = str(e.value)
    assert "\n" not in msg and "version 1" in msg and "re-export" in msg and "crafted.bfp" in msg


def test_graph_edit_without_new_digest_is_corrupt(tmp_path, valid):
    meta, table, body, g = valid
    g = copy.deepcopy(g)
    bconv(g)["attrs"]["out_hw"] = [400, 400]
    path = tmp_path / "crafted.bfp"
    path.write_bytes(join_bfp(meta, table, body, graph=g, redigest=False))
    with pytest.raises(PackedFormatError, match="checksum"):
        load_packed(path)
