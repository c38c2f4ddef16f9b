"""The op table agrees with the capture, the lowering, the engine, the LCE builder and the docs.

The lists are read independently of the table where possible: the ops the capture
and the lowering can emit are the string literals of their ``emit("op", ...)`` and
``Node("op", ...)`` calls, read from the source. None of this needs TensorFlow.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from binface.runtime.capture import capture
from binface.runtime.engine import OPS, PackedEngine
from binface.runtime.lce.build import TFBuilder
from binface.runtime.lower import lower
from binface.runtime.ops import aten
from binface.runtime.ops.functions import BINARY, REDUCE, UNARY
from binface.runtime.ops.table import OPDEFS, OpDef

RUNTIME = Path(__file__).resolve().parents[1] / "src" / "binface" / "runtime"
DOC = Path(__file__).resolve().parents[1] / "docs" / "packed-format.md"


def _literal_calls(path: Path, func: str) -> set[str]:
    """First string arguments of every call to ``func`` (a name or an attribute) in a file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
        a = node.args[0]
        if name == func and isinstance(a, ast.Constant) and isinstance(a.value, str):
            found.add(a.value)
    return found


def _op_renames(path: Path) -> set[str]:
    """String constants assigned to an ``.op`` attribute (a node changing its op)."""
    return {n.value.value for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
            and any(isinstance(t, ast.Attribute) and t.attr == "op" for t in n.targets)}


CAPTURED = _literal_calls(RUNTIME / "capture.py", "emit") | _literal_calls(
    RUNTIME / "ops" / "aten.py", "emit")
LOWERED = _literal_calls(RUNTIME / "lower.py", "Node") | _op_renames(RUNTIME / "lower.py")


def problems(defs: dict[str, OpDef], engine: dict, captured: set[str], lowered: set[str],
             builder: type) -> list[str]:
    """Every disagreement between the table and the code that uses it (empty: all agree)."""
    out = []
    for op in sorted(captured):
        d = defs.get(op)
        if d is None or d.source != "capture":
            out.append(f"capture emits {op!r}, which the table does not declare as captured")
            continue
        if d.engine is None:
            missing = [o for o in d.lowered_to if o not in engine]
            if not d.lowered_to or missing:
                out.append(f"{op!r}: not run by the engine, lowered to unknown ops {missing}")
        elif op not in engine:
            out.append(f"{op!r}: the engine does not implement it")
        if d.lce is not None and d.lce_refusal:
            out.append(f"{op!r}: both translated and refused by LCE")
        elif d.lce is not None and not callable(getattr(builder, d.lce, None)):
            out.append(f"{op!r}: LCE translation {d.lce!r} is not a TFBuilder method")
        elif d.lce is None and not d.lce_refusal:
            out.append(f"{op!r}: neither translated nor refused by LCE")
    for op in sorted(lowered - set(engine)):
        out.append(f"the lowering emits {op!r}, which the engine does not implement")
    for name, d in defs.items():
        if d.source not in ("capture", "lowering"):
            out.append(f"{name!r}: unknown source {d.source!r}")
        if d.source == "capture" and name not in captured:
            out.append(f"{name!r} is declared captured but nothing in the capture emits it")
        if d.source == "lowering" and name not in lowered:
            out.append(f"{name!r} is declared as made by the lowering, which never emits it")
    translations = {m for m in vars(builder) if m.startswith("op_")}
    for m in sorted(translations - {d.lce for d in defs.values()}):
        out.append(f"TFBuilder.{m} translates no op of the table")
    return out


def test_table_agrees_with_capture_lowering_engine_and_lce():
    assert problems(OPDEFS, OPS, CAPTURED, LOWERED, TFBuilder) == []
    # the AST scan found the real lists (a scan that found nothing would agree vacuously)
    assert {"qlayer", "quant", "conv", "unary", "split"} <= CAPTURED
    assert {"pack", "bconv", "bdwconv", "bmaxpool", "ewise"} <= LOWERED


def test_the_check_fails_when_the_code_disagrees():
    engine = dict(OPS)
    del engine["softmax"]
    assert problems(OPDEFS, engine, CAPTURED, LOWERED, TFBuilder) == [
        "'softmax': the engine does not implement it"]
    defs = dict(OPDEFS)
    defs["matmul"] = OpDef("matmul", OPS["matmul"])  # no LCE translation, no refusal
    assert problems(defs, OPS, CAPTURED, LOWERED, TFBuilder) == [
        "'matmul': neither translated nor refused by LCE",
        "TFBuilder.op_matmul translates no op of the table"]
    defs["matmul"] = OpDef("matmul", OPS["matmul"], lce_refusal="LCE has no batched matmul")
    assert problems(defs, OPS, CAPTURED, LOWERED, TFBuilder) == [
        "TFBuilder.op_matmul translates no op of the table"]
    assert problems(OPDEFS, OPS, CAPTURED | {"gather"}, LOWERED, TFBuilder) == [
        "capture emits 'gather', which the table does not declare as captured"]
    assert problems(OPDEFS, OPS, CAPTURED, LOWERED | {"bgemm"}, TFBuilder) == [
        "the lowering emits 'bgemm', which the engine does not implement"]


def test_every_aten_name_converts_to_its_op_once():
    names = [a for d in OPDEFS.values() for a in d.aten]
    assert len(names) == len(set(names)), "an ATen op is declared for two IR ops"
    assert not set(names) & set(aten.PASSTHROUGH)
    for d in OPDEFS.values():
        for a in d.aten:
            assert a in aten.CONVERTERS, a
            emitted = _literal_calls_of(aten.CONVERTERS[a])
            assert emitted <= {d.name}, (a, d.name, emitted)
    assert set(aten.CONVERTERS) == set(names) | set(aten.PASSTHROUGH)


_ATEN_FUNCS = {n.name: n for n in ast.parse(Path(aten.__file__).read_text()).body
               if isinstance(n, ast.FunctionDef)}


def _literal_calls_of(fn) -> set[str]:
    """The ops a converter function (and the helpers it calls by name) emits."""
    funcs = _ATEN_FUNCS
    seen, todo, ops = set(), [fn.__name__], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in funcs:
            continue
        seen.add(name)
        for node in ast.walk(funcs[name]):
            if isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name):
                    todo.append(f.id)
                elif (isinstance(f, ast.Attribute) and f.attr == "emit" and node.args
                      and isinstance(node.args[0], ast.Constant)):
                    ops.add(node.args[0].value)
    return ops


def test_every_engine_op_is_documented():
    text = DOC.read_text()
    missing = [op for op in OPS if f"`{op}`" not in text]
    assert missing == [], f"ops the engine runs but docs/packed-format.md does not name: {missing}"


@pytest.mark.parametrize("fn", sorted(UNARY))
def test_unary_function_matches_torch(fn):
    entry = UNARY[fn]
    assert callable(entry.tf) != bool(entry.lce_refusal)  # translated or refused by LCE
    x = np.linspace(-4, 4, 97, dtype=np.float32)
    x = x[x != 0]
    targets = entry.aten or ("gelu",)  # gelu_tanh is aten.gelu(approximate="tanh")
    kwargs = {"approximate": "tanh"} if fn == "gelu_tanh" else {}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = entry.np(x)
        for target in targets:
            want = getattr(torch.ops.aten, target)(torch.from_numpy(x), **kwargs).numpy()
            assert y.dtype == np.float32 and y.shape == x.shape
            np.testing.assert_allclose(y, want, rtol=2e-6, atol=2e-6, equal_nan=True)


class AllUnary(torch.nn.Module):
    """Every unary function of the table on one input in (0.5, 1.5), stacked on axis 1."""

    def forward(self, x):
        x = torch.sigmoid(x) + 0.5  # inside every function's domain
        ys = [torch.ops.aten.gelu(x, approximate="tanh") if fn == "gelu_tanh"
              else getattr(torch.ops.aten, UNARY[fn].aten[0])(x) for fn in sorted(UNARY)]
        return torch.stack(ys, 1)


def test_every_unary_function_runs_in_the_packed_engine():
    model = AllUnary().eval()
    ir = capture(model, (3, 2), channels=2)
    assert {n.attrs["fn"] for n in ir.nodes if n.op == "unary"} == set(UNARY)
    engine = PackedEngine(*lower(ir))
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 2)).astype(np.float32)
    got = engine.run(x)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    for i, fn in enumerate(sorted(UNARY)):
        np.testing.assert_allclose(got[:, i], want[:, i], rtol=2e-6, atol=2e-6, err_msg=fn)


@pytest.mark.parametrize("fn", sorted(BINARY))
def test_binary_function_matches_torch(fn):
    entry = BINARY[fn]
    assert callable(entry.tf)
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 2, (3, 4)).astype(np.float32)
    b = rng.uniform(0.5, 2, (4,)).astype(np.float32)
    y = entry.np(a, b)
    for target in entry.aten:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        # rsub(a, b) = b - a: the converter swaps the operands before emitting "sub"
        want = getattr(torch.ops.aten, target)(tb, ta) if target == "rsub" else getattr(
            torch.ops.aten, target)(ta, tb)
        np.testing.assert_allclose(y, want.numpy(), rtol=1e-6)


@pytest.mark.parametrize("fn", sorted(REDUCE))
def test_reduction_matches_torch(fn):
    entry = REDUCE[fn]
    assert callable(entry.tf)
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    y = entry.np(x, axis=(1, 2), keepdims=True)
    want = getattr(torch.ops.aten, entry.aten[0])(torch.from_numpy(x), [1, 2], True).numpy()
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)  # float32 summation order


def test_table_and_builder_import_neither_torch_nor_tensorflow():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['tensorflow'] = None\n"
            "import binface.runtime as rt\n"
            "from binface.runtime.ops import OPDEFS\n"
            "from binface.runtime.lce import lce_available\n"
            "from binface.runtime.lce.build import TFBuilder\n"
            "assert rt.load_packed and rt.lce_available and rt.export_lce and rt.LceRunner\n"
            "print(sorted(m for m in ('torch', 'tensorflow') if sys.modules.get(m) is not None))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_docs_point_at_the_table():
    text = DOC.read_text()
    assert "src/binface/runtime/ops/table.py" in text
    assert re.search(r"ops/functions\.py", text)
