"""Seed Table 1 reproduced: our params and MACs against the published figures.

The published figures and their conventions are typed in here independently of
binface.profile.float_table, and the deviations recomputed from our raw counts.
"""

import json

import pytest

from binface.cli import main
from binface.profile.float_table import float_table_rows, render_float_table

# model -> (params, FLOPs, MAC multiplier, attention matmuls included, tolerance %)
SEED_TABLE1 = {
    "vargfacenet": (4.9e6, 1.02e9, 2, False, 10),
    "mobilefacenet_1_5": (2.0e6, 933.3e6, 2, False, 10),
    "shufflefacenet_1_5": (2.6e6, 577.5e6, 2, False, 10),
    "shufflefacenet_2_0": (4.5e6, 1.05e9, 2, False, 10),
    "ghostfacenetv2": (6.88e6, 272.25e6, 1, False, 10),
    "edgeface_xs": (1.77e6, 153.99e6, 2, True, 10),
    "mobilefaceformer": (1.38e6, 130.08e6, 2, True, 10),
}
REFERENCES = {
    "mobilefacenet": (0.99e6, 221e6, 1, False, 5),  # MobileFaceNet paper
    "mbf": (2.06e6, 0.44e9, 1, False, 5),  # insightface arcface_torch
    "edgeface_s": (3.65e6, 306e6, 2, True, 10),  # EdgeFace paper
}


@pytest.fixture(scope="module")
def rows():
    return {r["model"]: r for r in float_table_rows()}


def deviation(ours, theirs):
    return 100.0 * (ours - theirs) / theirs


@pytest.mark.parametrize("name", list(SEED_TABLE1) + list(REFERENCES))
def test_params_and_flops_within_tolerance(rows, name):
    params, flops, factor, matmul, tol = {**SEED_TABLE1, **REFERENCES}[name]
    r = rows[name]
    ours_flops = factor * (r["ours_macs"] + (r["ours_matmul_macs"] if matmul else 0))
    assert r["ours_in_convention"] == ours_flops
    assert abs(deviation(r["ours_params"], params)) <= tol, r
    assert abs(deviation(ours_flops, flops)) <= tol, r
    assert r["within_tolerance"]
    assert r["dev_flops_pct"] == pytest.approx(deviation(ours_flops, flops))
    assert r["convention"].startswith("MACs" if factor == 1 else "2 x MACs")
    assert ("matmul" in r["convention"]) == matmul


def test_seed_rows_and_conventions(rows):
    seed = [m for m, r in rows.items() if r["source"] == "seed"]
    assert seed == list(SEED_TABLE1)
    # the CNNs have no attention products, every hybrid has some
    for name in ("vargfacenet", "mobilefacenet_1_5", "shufflefacenet_2_0", "ghostfacenetv2"):
        assert rows[name]["ours_matmul_macs"] == 0
    for name in ("edgeface_xs", "mobilefaceformer", "vit_t_face"):
        assert rows[name]["ours_matmul_macs"] > 0
    # the ViT teacher: insightface's 1.5 GFLOPs are MACs plus its extra_gflops (2 N^2 C)
    assert rows["vit_t_face"]["ours_matmul_macs"] == 12 * 2 * 144 * 144 * 256


def test_table_float_cli(capsys):
    assert main(["profile", "--table", "float", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in data][: len(SEED_TABLE1)] == list(SEED_TABLE1)
    assert all(r["within_tolerance"] for r in data)
    assert main(["profile", "--table", "float"]) == 0
    text = capsys.readouterr().out
    for label in ("VarGFaceNet", "MobileFaceNet-1.5", "ShuffleFaceNet-2.0", "GhostFaceNetV2-1",
                  "EdgeFace", "MobileFaceFormer"):
        assert label in text
    assert "2 x MACs + matmul" in text and "OUT OF TOLERANCE" not in text


def test_render_flags_a_deviation(rows):
    bad = dict(rows["mbf"], within_tolerance=False, dev_flops_pct=42.0)
    text = render_float_table(rows=[bad])
    assert "OUT OF TOLERANCE" in text and "+42.0%" in text and text.endswith("\n")
    assert json.loads(render_float_table(as_json=True, rows=[bad]))[0]["dev_flops_pct"] == 42.0
