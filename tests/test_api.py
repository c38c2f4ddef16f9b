"""The public API of each package: what ``__all__`` promises resolves, and the names a
user calls first are the functions, not modules of the same name."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "binface"
PACKAGES = sorted(p.parent.name for p in PKG.glob("*/__init__.py"))
# packages that must declare their public names (add "train" once it exports them)
REQUIRED = {"data", "eval", "models", "nn", "profile", "runtime", "train"}


def test_the_core_packages_are_found():
    assert set(PACKAGES) >= REQUIRED


@pytest.mark.parametrize("name", PACKAGES)
def test_every_name_in_all_resolves(name):
    mod = importlib.import_module(f"binface.{name}")
    public = getattr(mod, "__all__", None)
    if public is None:
        assert name not in REQUIRED, f"binface.{name} declares no __all__"
        return
    assert len(public) == len(set(public)), f"binface.{name}.__all__ repeats a name"
    missing = [n for n in public if not hasattr(mod, n)]
    assert not missing, f"binface.{name}.__all__ names missing attributes: {missing}"
    modules = [n for n in public if isinstance(getattr(mod, n), types.ModuleType)]
    assert not modules, f"binface.{name}.__all__ exports modules, not functions: {modules}"


def test_star_import_gives_the_public_names():
    ns: dict = {}
    exec("from binface.eval import *", ns)
    assert callable(ns["verification"]) and callable(ns["evaluate_pack"])


def _toy_pairs(n: int = 40, dim: int = 16, seed: int = 0):
    """Genuine pairs: one embedding plus small noise; impostors: two independent ones."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, dim))
    issame = np.tile([True, False], n // 2)
    b = np.where(issame[:, None], a + 0.01 * rng.normal(size=(n, dim)), rng.normal(size=(n, dim)))
    return a, b, issame


def test_eval_verification_is_the_protocol_function():
    from binface.eval import verification

    assert callable(verification) and not isinstance(verification, types.ModuleType)
    a, b, issame = _toy_pairs()
    res = verification(a, b, issame)
    assert res["protocol"] == "insightface" and res["folds"] == 10 and res["pairs"] == 40
    assert res["accuracy"] == 1.0 and res["std"] == 0.0
    # flipping every label makes the embeddings say the opposite: accuracy falls
    flipped = verification(a, b, ~issame)
    assert flipped["accuracy"] < 0.6


def test_the_verification_module_stays_importable():
    from binface.eval.verification import tar_at_far, verification

    module = sys.modules["binface.eval.verification"]
    assert isinstance(module, types.ModuleType) and module.verification is verification
    import binface.eval

    assert binface.eval.verification is verification
    scores = np.array([0.9, 0.8, 0.1, 0.2])
    assert tar_at_far(scores, np.array([True, True, False, False]), fars=(0.5,)) == {"5e-01": 1.0}


def test_evaluate_pack_and_embed_images_run_a_model(tmp_path):
    import torch

    from binface.data import write_pack
    from binface.eval import embed_images, evaluate_pack, load_eval_pack

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(20, 112, 112, 3), dtype=np.uint8)
    images[0::4] = images[1::4]  # genuine pairs (0, 1), (4, 5), ...: identical images
    write_pack(tmp_path / "toy.bin", images, [True, False] * 5)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())
    emb = embed_images(model, images[:4], batch_size=3)
    assert emb.shape == (4, 48) and np.allclose(np.linalg.norm(emb, axis=1), 1.0)
    pack = load_eval_pack(tmp_path / "toy.bin")
    res = evaluate_pack(model, pack, batch_size=8)
    assert res["pack"] == "toy" and res["pairs"] == 10 and len(res["sha256"]) == 64


def test_importing_eval_and_data_loads_no_torch():
    code = ("import sys, binface.eval, binface.data, binface.progress; "
            "from binface.eval import verification, PROTOCOLS; "
            "from binface.data import load_pack, pack_folder, generate_synth; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_profile_exports_the_counter_and_the_tables():
    import torch

    from binface.profile import Profile, binary_table_rows, profile, render_profile

    p = profile(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1, bias=False)), (8, 8))
    assert isinstance(p, Profile) and p.totals["macs_32bit"] == 3 * 4 * 8 * 8
    assert "32-bit MACs" in render_profile(p)
    assert callable(binary_table_rows)
