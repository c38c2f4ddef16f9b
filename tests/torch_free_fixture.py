"""Write what tests/test_torch_free.py checks, from a venv with torch (.ci/run runs it).

    python tests/torch_free_fixture.py DIR

DIR gets ``bfn.bfp`` (BinaryFaceNet at a fixed initialisation, packed), ``faces.npy``
(uint8 synthetic faces), ``face0.png`` (the first as an image file) and ``ref.npy`` (the
packed engine's embeddings of the faces, computed here: the torch-free venv must get the
same numbers) and ``torch.npy`` (PyTorch's, for the conformance bound).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(out: Path) -> None:
    import torch
    from PIL import Image

    from binface.data.synth.faces import render, sample_identity, sample_nuisance
    from binface.models import create_model
    from binface.runtime import export_packed, load_packed

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model("binaryfacenet").eval()
    export_packed(model, out / "bfn.bfp")
    rng = np.random.default_rng(0)
    faces = []
    for _ in range(4):
        ident = sample_identity(rng)
        faces.append(render(ident, sample_nuisance(rng, ident), rng))
    faces = np.stack(faces)
    np.save(out / "faces.npy", faces)
    Image.fromarray(faces[0]).save(out / "face0.png")
    x = (faces.transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 127.5
    np.save(out / "ref.npy", load_packed(out / "bfn.bfp").run(x))
    with torch.no_grad():
        np.save(out / "torch.npy", model(torch.from_numpy(x)).numpy())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
