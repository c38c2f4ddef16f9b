"""``binface demo`` end to end on a micro plan (the real sizes are for people, not CI)."""

import json

from binface.demo import Plan, demo_table, run_demo, synth_data

MICRO = Plan(identities=12, images_per_identity=4, pack_pairs=20, eval_pairs=20, batch_size=8,
             teacher_steps=2, student_steps=2)


def test_demo_runs_and_writes_its_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("BINFACE_CACHE", str(tmp_path / "cache"))
    result = run_demo(tmp_path / "out", plan=MICRO, latency=False)
    rows = result["rows"]
    assert [r["model"] for r in rows] == ["mobilefacenet (teacher)", "binaryfacenet (scratch)",
                                          "binaryfacenet (distilled)"]
    for r in rows:
        assert set(r["packs"]) == {"synth_lfw", "synth_cfp_fp", "synth_agedb_30"}
        assert all(0.0 <= v["accuracy"] <= 1.0 for v in r["packs"].values())
    assert rows[1]["macs_1bit"] == 184_992_256 and rows[0]["macs_1bit"] == 0
    out = tmp_path / "out"
    for name in ("table.txt", "report.json", "report.md", "demo.json"):
        assert (out / name).stat().st_size > 0
    for name in ("roc.png", "accuracy_vs_macs.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    text = (out / "table.txt").read_text()
    assert "20 fold-balanced pairs" in text and "distillation beat training from scratch" in text
    assert json.loads((out / "demo.json").read_text())["meta"]["eval pairs per pack"] == 20
    # the benchmark is cached: a second call reuses it
    data = synth_data(MICRO, 0)
    assert (data / "COMPLETE").is_file()


def test_demo_table_names_the_subset_and_the_winner():
    row = {"family": "binary", "macs_1bit": 1e6, "macs_32bit": 2e6, "memory_kib": 3.0,
           "latency_ms": {"torch": 17.5, "packed": 3.25}}
    rows = [dict(row, model="binaryfacenet (scratch)",
                 packs={"a": {"accuracy": 0.6, "std": 0.1}, "b": {"accuracy": 0.7, "std": 0.1}}),
            dict(row, model="binaryfacenet (distilled)",
                 packs={"a": {"accuracy": 0.65, "std": 0.1}, "b": {"accuracy": 0.6, "std": 0.1}})]
    text = demo_table(rows, MICRO)
    assert "beat training from scratch on 1 of 2 packs: a" in text
    assert "65.00" in text and "3.25" in text and "packed ms" in text
