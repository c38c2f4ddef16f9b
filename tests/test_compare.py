"""``binface compare``: complexity, latency and accuracy side by side, gaps as one-line notes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from binface.cli import main
from binface.compare import pareto_front, seed_entries
from binface.data.verification import write_pack
from binface.models import create_model
from binface.models.loading import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from binface.nn import BinaryConv2d
from binface.runtime import export_packed

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = ["--repeats", "3", "--warmup", "1", "--rounds", "3"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A BinaryFaceNet checkpoint in the format ``binface train`` writes (random weights)."""
    torch.manual_seed(0)
    kwargs = {"embedding_size": 64}
    model = create_model("binaryfacenet", **kwargs)
    path = tmp_path_factory.mktemp("ckpt") / "bfn.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                "model": "binaryfacenet", "model_kwargs": kwargs,
                "state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """20 pairs; the genuine ones are the same image twice."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 112, 112, 3), dtype=np.uint8)
    issame = np.array([i % 2 == 0 for i in range(20)])
    images[0::2][issame] = images[1::2][issame]
    path = tmp_path_factory.mktemp("packs") / "tiny_pairs.bin"
    write_pack(path, images, issame)
    return path


@pytest.fixture(scope="module")
def tiny_bfp(tmp_path_factory):
    path = tmp_path_factory.mktemp("bfp") / "tiny.bfp"
    torch.manual_seed(0)
    export_packed(nn.Sequential(BinaryConv2d(8, 8, 3, padding="same")).eval(), path,
                  input_size=(6, 6), channels=8)
    return path


def _read(out):
    return json.loads((out / "compare.json").read_text()), (out / "compare.md").read_text()


def test_checkpoint_with_a_pack(checkpoint, pack, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", str(checkpoint), "--packs", str(pack), "--runtimes", "torch,packed",
            "--out", str(out), *FAST]
    assert main(argv) == 0
    res, md = _read(out)
    (row,) = res["rows"]
    assert row["kind"] == "checkpoint" and row["name"] == "binaryfacenet"
    acc = row["accuracy"]["tiny_pairs"]
    assert 0.5 <= acc["accuracy"] <= 1 and acc["pairs"] == 20 and not acc["subset"]
    assert row["complexity"]["macs_1bit"] > 0 and row["complexity"]["memory_kib"] > 0
    for rt in ("torch", "packed"):
        lat = row["latency"][rt]
        assert 0 < lat["median_ms"] <= lat["p90_ms"] and lat["runs"] == 3
    meta = res["meta"]
    assert meta["threads"] == 1 and meta["repeats"] == 3 and meta["binface"] and meta["cpu"]
    assert meta["command"].startswith("binface compare ") and meta["date"]
    assert "tiny_pairs acc." in md and "insightface protocol" in md
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out

    # (5) a second run never replaces the outputs without --overwrite
    before = (out / "compare.md").read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err and "--overwrite" in err
    assert (out / "compare.md").read_bytes() == before


def test_names_files_and_runtime_gaps(tiny_bfp, tmp_path, capsys, monkeypatch):
    """A zoo name, a .bfp and a broken .onnx; lce missing and an onnx export that fails."""
    from binface.runtime import bench
    from binface.runtime.lce import lce_available

    real_export = bench._export

    def export(runtime, *args):
        if runtime == "onnx":
            raise RuntimeError("ONNX export refused op Foo\nsecond line")
        real_export(runtime, *args)

    monkeypatch.setattr(bench, "_export", export)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model")
    out = tmp_path / "cmp"
    assert main(["compare", "quicknet_small", str(tiny_bfp), str(junk), "--runtimes",
                 "torch,onnx,packed,lce", "--out", str(out), *FAST]) == 0
    res, md = _read(out)
    name, bfp, onnx = res["rows"]

    assert name["complexity"]["macs_1bit"] == 258_342_912  # a float head: Table 2's 1-bit MACs
    assert name["complexity"]["macs_runtime_binary"] == name["complexity"]["macs_1bit"]
    assert name["accuracy"] is None and "random weights" in name["accuracy_note"]
    assert name["latency"]["torch"]["median_ms"] > 0 and name["latency"]["packed"]["runs"] == 3
    assert name["latency"]["onnx"] == {"error": "export failed: ONNX export refused op Foo"}

    assert bfp["complexity"] is None and "exported file" in bfp["complexity_note"]
    assert bfp["latency"]["packed"]["median_ms"] > 0
    assert bfp["latency"]["torch"]["error"] == "a .bfp file runs in packed only"
    assert "error" in onnx["latency"]["onnx"] and "\n" not in onnx["latency"]["onnx"]["error"]
    if not lce_available():
        for row in res["rows"]:
            note = row["latency"]["lce"]["error"]
            assert "pip install 'binface[lce]'" in note and "\n" not in note
    # every row is in the table, each on one line, with its notes in the cells
    lines = [ln for ln in md.splitlines() if ln.startswith("| `")]
    assert len(lines) == 3 and "random weights (a zoo name): no accuracy" in lines[0]
    assert "export failed: ONNX export refused op Foo" in lines[0]
    assert res["meta"]["worker_peak_rss_mb"]["packed"] > 0

    # an existing output folder is fine with --overwrite
    assert main(["compare", str(tiny_bfp), "--runtimes", "packed", "--out", str(out),
                 "--overwrite", *FAST]) == 0
    assert [r["model"] for r in _read(out)[0]["rows"]] == [str(tiny_bfp)]
    capsys.readouterr()


@pytest.mark.parametrize("argv, says", [
    (["quiknet"], "unknown model 'quiknet'"),
    (["quicknet", "missing.pt"], "missing.pt: no such file"),
    (["gone.bfp"], "gone.bfp: no such file"),
    (["quicknet", "--runtimes", "torch,tpu"], "unknown runtime 'tpu'"),
    (["quicknet", "--table", "seed"], "not both"),
    ([], "name at least one model"),
])
def test_errors_are_one_line(argv, says, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", *argv, "--out", str(tmp_path / "o"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("binface compare: error: ") and err.count("\n") == 1 and says in err
    assert not (tmp_path / "o").exists()


def test_missing_pack_is_one_line(checkpoint, tmp_path, capsys):
    assert main(["compare", str(checkpoint), "--packs", str(tmp_path / "none.bin"),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.bin: no such pack" in err


def test_pareto_front():
    pts = [(1.0, 90.0), (2.0, 95.0), (3.0, 94.0), (0.5, 80.0), (2.0, 93.0)]
    assert pareto_front(pts, higher_is_better=True) == [3, 0, 1]
    assert pareto_front(pts, higher_is_better=False) == [3]


def test_seed_rows_are_the_profile_tables():
    from binface.profile.float_table import FLOAT_REFERENCES, PUBLISHED_ACCURACY
    from binface.profile.tables import SEED_TABLE2, SEED_TABLE2_PUBLISHED

    names = [e.spec for e in seed_entries()]
    assert names == [r.model for r in FLOAT_REFERENCES] + list(SEED_TABLE2)
    assert set(PUBLISHED_ACCURACY) <= set(names) and set(SEED_TABLE2_PUBLISHED) == set(SEED_TABLE2)
    assert SEED_TABLE2_PUBLISHED["binaryfacenet"] == (0.16, 6.25, (95.07, 77.93, 75.12))
