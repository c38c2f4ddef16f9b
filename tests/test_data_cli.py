"""``binface data`` end to end: synth, inspect, pack, pairs and one-line errors."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from binface.cli import main


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_synth")
    sheet = out / "ids.png"
    code = main(["data", "synth", str(out), "--identities", "3", "--images-per-identity", "2",
                 "--pairs", "20", "--workers", "1", "--seed", "1", "--quiet",
                 "--contact-sheet", str(sheet)])
    assert code == 0
    return out


def test_synth_writes_everything(synth_dir, capsys):
    names = {p.name for p in synth_dir.iterdir()}
    assert {"train.rec", "train.idx", "property", "synth_lfw.bin", "synth_cfp_fp.bin",
            "synth_agedb_30.bin", "ids.png"} <= names


def test_inspect_rec_and_bin(synth_dir, capsys, tmp_path):
    assert main(["data", "inspect", str(synth_dir / "train.rec"), "--sheet",
                 str(tmp_path / "rec.png"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "images: 6" in out and "classes: 3" in out
    assert "images per class: min 2, median 2, max 2" in out
    assert Image.open(tmp_path / "rec.png").format == "PNG"
    assert main(["data", "inspect", str(synth_dir / "synth_cfp_fp.bin"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["pairs"] == 20 and info["genuine"] == 10 and info["images"] == 40
    assert info["genuine_per_fold"] == [1] * 10 and len(info["sha256"]) == 64
    assert Image.open(info["sheet"]).size[0] > 4 * 112  # default: next to the pack


def test_pack_and_pairs_commands(tmp_path, capsys):
    for name in ("Ann", "Bob"):
        (tmp_path / "f" / name).mkdir(parents=True)
        for i in (1, 2):
            Image.new("RGB", (120, 120), (i * 60, 9, 9)).save(
                tmp_path / "f" / name / f"{name}_{i:04d}.png")
    assert main(["data", "pack", str(tmp_path / "f"), str(tmp_path / "o" / "train"),
                 "--quiet"]) == 0
    assert "4 images, 2 classes; resized 4 image(s)" in capsys.readouterr().out
    (tmp_path / "pairs.txt").write_text("1 1\nAnn 1 2\nAnn 1 Bob 2\n")
    assert main(["data", "pairs", str(tmp_path / "f"), str(tmp_path / "pairs.txt"),
                 str(tmp_path / "p.bin"), "--quiet"]) == 0
    assert "2 pairs of 2 identities" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "x.txt").write_text("hi")
    assert main(["data", "inspect", str(tmp_path / "x.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.txt: cannot inspect" in err
    (tmp_path / "empty").mkdir()
    assert main(["data", "pack", str(tmp_path / "empty"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("binface data: error: ") and err.count("\n") == 1
    (tmp_path / "t.rec").write_bytes(b"\x0a\x23\xd7\xce\x10\x00\x00\x00short")
    (tmp_path / "t.idx").write_text("0\t0\n")
    assert main(["data", "inspect", str(tmp_path / "t.rec"), "--no-sheet"]) == 2
    err = capsys.readouterr().err
    assert "t.rec: record 0 at offset 0: file is truncated" in err and err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["data", "synth", str(tmp_path), "--identities", "0"])
    assert capsys.readouterr().err.count("\n") == 1
