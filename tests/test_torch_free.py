"""The deployment path on a board: the packed engine and ``binface run`` without torch.

.ci/run runs this module in a venv holding binface (installed with ``--no-deps``), numpy,
numba, Pillow and pytest only, on the files ``tests/torch_free_fixture.py`` wrote from
the main venv (``BINFACE_TORCH_FREE_DIR``). Elsewhere it is skipped.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

DIR = os.environ.get("BINFACE_TORCH_FREE_DIR")
pytestmark = pytest.mark.skipif(not DIR, reason="run by .ci/run in its torch-free venv")


@pytest.fixture()
def files():
    return Path(DIR)


def test_torch_is_not_installed():
    with pytest.raises(ImportError):
        import torch  # noqa: F401


def test_packed_engine_gives_the_main_venvs_embeddings(files):
    from binface.runtime import load_packed

    faces = np.load(files / "faces.npy")
    x = (faces.transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 127.5
    out = load_packed(files / "bfn.bfp").run(x)
    np.testing.assert_allclose(out, np.load(files / "ref.npy"), rtol=0, atol=1e-6)
    ref = np.load(files / "torch.npy")  # and PyTorch's, to the conformance tolerance
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_binface_run_embeds_images_and_arrays(files, tmp_path, capsys):
    from binface.cli import main

    out = tmp_path / "e.npy"
    assert main(["run", str(files / "bfn.bfp"), str(files / "face0.png"),
                 str(files / "faces.npy"), "--out", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert len(rep["faces"]) == 5 and rep["cosine"][0][1] == pytest.approx(1.0, abs=1e-6)
    ref = np.load(files / "ref.npy")
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(np.load(out)[1:], ref, atol=1e-6)
    # existing output: refused without --overwrite, left as it was
    before = out.read_bytes()
    assert main(["run", str(files / "bfn.bfp"), str(files / "face0.png"), "--out",
                 str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before


def test_binface_run_bad_input_is_one_line(files, tmp_path, capsys):
    from PIL import Image

    from binface.cli import main

    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((100, 90, 3), np.uint8)).save(small)
    floats = tmp_path / "floats.npy"
    np.save(floats, np.zeros((2, 112, 112, 3), np.float32))
    for args, words in [([str(files / "bfn.bfp"), str(small)], "90x100 image"),
                        ([str(files / "bfn.bfp"), str(floats)], "expected uint8 faces"),
                        ([str(files / "bfn.bfp"), str(files / "face0.png"), "--out",
                          str(tmp_path / "e.txt")], "written as a .npy file"),
                        ([str(files / "bfn.bfp"), str(tmp_path / "none.png")], "no such file"),
                        ([str(files / "face0.png"), str(small)], "packed model (.bfp")]:
        assert main(["run", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
