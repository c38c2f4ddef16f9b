"""``binface demo`` end to end on a micro plan (the real sizes are for people, not CI)."""

import json

import pytest

from binface.demo import Plan, check_demo_outputs, conclusions, demo_table, run_demo, synth_data
from binface.errors import BinfaceError
from binface.eval.paired import describe, paired_difference

MICRO = Plan(identities=12, images_per_identity=4, pack_pairs=20, eval_pairs=20, batch_size=8,
             teacher_steps=2, student_steps=2)
LABELS = ["edgeface_xs (teacher)", "binaryfacenet (scratch)", "binaryfaceformer_sep (scratch)",
          "binaryfacenet (distilled)", "binaryfaceformer_sep (distilled)"]


def test_demo_runs_and_writes_its_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("BINFACE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    result = run_demo(out, plan=MICRO, repeats=2)
    rows = result["rows"]
    assert [r["model"] for r in rows] == LABELS
    assert [r["scored_in"] for r in rows] == ["onnx"] + ["packed"] * 4
    for r in rows:
        assert set(r["packs"]) == {"synth_lfw", "synth_cfp_fp", "synth_agedb_30"}
        assert all(0.0 <= v["accuracy"] <= 1.0 and len(v["fold_accuracies"]) == 10
                   for v in r["packs"].values())
        assert set(r["latency_ms"]) == {"torch", "onnx", "packed"}
    assert rows[1]["macs_1bit"] > 0 and rows[0]["macs_1bit"] == 0
    for name in ("table.txt", "report.json", "report.md", "demo.json", "compare.md",
                 "compare.json"):
        assert (out / name).stat().st_size > 0
    for name in ("roc.png", "accuracy_vs_macs.png", "compare.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    text = (out / "table.txt").read_text()
    assert "20 fold-balanced pairs" in text and "conclusions" in text
    # 5 comparisons x 3 packs, each a verdict computed from the folds
    assert sum(" on synth_" in c for c in result["conclusions"]) == 15
    cmp = json.loads((out / "compare.json").read_text())
    assert cmp["meta"]["scored_by"].startswith("the packed engine")
    assert all(r["accuracy"]["synth_lfw"]["pairs"] == 20 for r in cmp["rows"])
    assert json.loads((out / "demo.json").read_text())["meta"]["eval pairs per pack"] == 20
    # the benchmark is cached, and a second run refuses to replace the first
    assert (synth_data(MICRO, 0) / "COMPLETE").is_file()
    before = (out / "table.txt").read_bytes()
    with pytest.raises(BinfaceError, match="--overwrite"):
        run_demo(out, plan=MICRO, repeats=2)
    assert (out / "table.txt").read_bytes() == before


def test_demo_refuses_old_runs_without_overwrite(tmp_path):
    (tmp_path / "binaryfacenet_scratch").mkdir()
    with pytest.raises(BinfaceError, match="binaryfacenet_scratch"):
        check_demo_outputs(tmp_path, overwrite=False)
    check_demo_outputs(tmp_path, overwrite=True)


def test_paired_difference_calls_only_what_exceeds_the_noise():
    base = [0.70, 0.72, 0.68, 0.71, 0.69, 0.70, 0.73, 0.67, 0.70, 0.70]
    better = [a + 0.05 + 0.005 * (-1) ** i for i, a in enumerate(base)]
    noisy = [a + 0.04 * (-1) ** i for i, a in enumerate(base)]
    c = paired_difference(better, base)
    assert c["verdict"] == "better" and c["difference"] == pytest.approx(5.0)
    assert paired_difference(base, better)["verdict"] == "worse"
    n = paired_difference(noisy, base)
    assert n["verdict"] == "within noise" and n["se"] > 1.0
    assert "within noise" in describe("A", "B", "P", n) and "beats B on P" in describe(
        "A", "B", "P", c)
    with pytest.raises(BinfaceError):
        paired_difference([0.5], [0.5])
    with pytest.raises(BinfaceError):
        paired_difference([0.5, float("nan")], [0.5, 0.5])


def test_demo_table_and_conclusions_come_from_the_numbers():
    folds = [0.60 + 0.01 * i for i in range(10)]
    row = {"family": "binary", "macs_1bit": 1e6, "macs_32bit": 2e6, "memory_kib": 3.0}
    rows = [dict(row, model="binaryfacenet (scratch)", latency_ms={"torch": 17.5, "packed": 4.0},
                 packs={"a": {"accuracy": 0.645, "std": 0.03, "fold_accuracies": folds}}),
            dict(row, model="binaryfaceformer_sep (scratch)",
                 latency_ms={"torch": 17.5, "packed": 3.25},
                 packs={"a": {"accuracy": 0.745, "std": 0.03,
                              "fold_accuracies": [f + 0.1 + 0.001 * (i % 2)
                                                  for i, f in enumerate(folds)]}})]
    concl = conclusions(rows)
    assert any("binaryfaceformer_sep (scratch) beats binaryfacenet (scratch) on a" in c
               for c in concl)
    assert any("0.81x" in c for c in concl)
    text = demo_table(rows, MICRO, concl)
    assert "74.50" in text and "3.25" in text and "packed ms" in text and "beats" in text
