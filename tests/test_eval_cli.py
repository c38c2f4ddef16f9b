"""``binface eval``: a checkpoint on packs -> table, JSON/Markdown reports, ROC plot."""

import hashlib
import json

import numpy as np
import pytest

from binface.cli import main
from binface.data.verification import write_pack
from binface.eval.run import load_eval_pack, subset_pairs
from binface.train.config import load_config
from binface.train.loop import Trainer
from helpers import RandomFaces, register_test_models


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    register_test_models()
    out = tmp_path_factory.mktemp("run")
    cfg = load_config(None, [f"output={out}", "model=test_tiny", "train.batch_size=8",
                             "train.max_steps=2", "head.s=16"])
    Trainer(cfg, train_set=RandomFaces(), progress=False).fit()
    return out / "last.pt"


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 112, 112, 3), dtype=np.uint8)
    issame = np.array([i % 2 == 0 for i in range(20)])
    images[0::2][issame] = images[1::2][issame]  # genuine pairs: the same image twice
    path = tmp_path_factory.mktemp("packs") / "tiny_pairs.bin"
    write_pack(path, images, issame)
    return path


def test_eval_writes_reports_and_plot(checkpoint, pack, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["eval", str(checkpoint), "--pack", str(pack), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tiny_pairs" in text and "insightface 10-fold" in text and "flip test" in text
    report = json.loads((out / "report.json").read_text())
    r = report["results"][0]
    assert r["sha256"] == hashlib.sha256(pack.read_bytes()).hexdigest()
    assert r["protocol"] == "insightface" and r["pairs"] == 20
    assert r["accuracy"] >= 0.75  # identical genuine pairs are at distance 0
    assert "roc" not in r
    assert "| test_tiny | tiny_pairs |" in (out / "report.md").read_text()
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_subset_and_protocol(checkpoint, pack, tmp_path, capsys):
    assert main(["eval", str(checkpoint), "--pack", str(pack), "--max-pairs", "10",
                 "--protocol", "facexzoo", "--no-flip", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "report.json").read_text())["results"][0]
    assert r["pairs"] == 10 and r["total_pairs"] == 20 and r["subset"]
    assert r["protocol"] == "facexzoo" and r["flip"] is False
    assert "10/20" in capsys.readouterr().out


def test_subset_keeps_the_fold_layout(pack):
    keep = subset_pairs(6000, 600)
    assert len(keep) == 600 and len(set(keep.tolist())) == 600
    assert all(np.all((keep[i * 60:(i + 1) * 60] // 600) == i) for i in range(10))
    # each fold is 300 genuine then 300 impostor pairs: the subset keeps half of each
    genuine = (keep % 600) < 300
    assert all(genuine[i * 60:(i + 1) * 60].sum() == 30 for i in range(10))
    p = load_eval_pack(pack, 10)
    assert p.images.shape == (20, 112, 112, 3) and p.pairs == 10


def test_eval_errors_are_one_line(checkpoint, tmp_path, capsys):
    assert main(["eval", str(checkpoint), "--pack", str(tmp_path / "none.bin")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.bin" in err
    assert main(["eval", str(tmp_path / "no.pt"), "--pack", "x.bin"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
