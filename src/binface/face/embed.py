"""A recognition model in one runtime, for aligned crops: what verify, enroll and
identify embed with.

Nothing here is a new way to run a model: the model comes from
:func:`binface.models.loading.load_model` (a zoo name, a checkpoint), the exported file
from :func:`binface.runtime.bench.prepare` (a ``.bfp`` for the packed engine, an
``.onnx`` for ONNX Runtime, as ``binface bench`` makes them), and the embeddings from
:func:`binface.eval.run.embed_images` (insightface's preprocessing, the flip test, L2
normalisation), so a photo is embedded exactly as a verification pack is scored.

The default runtime (``auto``) is how binface deploys: binary models in the packed
engine (xor + popcount), float ones in ONNX Runtime.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from binface.errors import BinfaceError

__all__ = ["EMBED_RUNTIMES", "Embedder", "load_embedder", "require_weights"]

EMBED_RUNTIMES = ("auto", "torch", "onnx", "packed")
_FILE_RUNTIMES = {".bfp": "packed", ".onnx": "onnx"}


@dataclass
class Embedder:
    """Unit embeddings of aligned 112x112 crops (``embed``), with the model's identity."""

    module: object  # an nn.Module: the torch model, or a RunnerEmbedder around a runner
    name: str
    family: str
    runtime: str
    spec: str
    sha256: str | None = None
    threads: int = 1
    size: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.size = int(self._raw(np.zeros((1, 112, 112, 3), np.uint8), flip=False).shape[1])

    @property
    def identity(self) -> dict:
        """What a gallery records about the model that made its embeddings."""
        return {"model": self.name, "spec": self.spec, "sha256": self.sha256,
                "family": self.family, "runtime": self.runtime, "embedding_size": self.size}

    def _raw(self, crops: np.ndarray, flip: bool) -> np.ndarray:
        import torch

        from binface.eval.run import embed_images

        old, want = torch.get_num_threads(), max(1, int(self.threads))
        if old != want:
            torch.set_num_threads(want)
        try:
            return embed_images(self.module, crops, batch_size=64, flip=flip)
        finally:
            if old != want:
                torch.set_num_threads(old)

    def embed(self, crops: np.ndarray, flip: bool = True) -> np.ndarray:
        """(N, D) unit float64 embeddings of (N, 112, 112, 3) uint8 RGB aligned crops."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (112, 112, 3) or crops.dtype != np.uint8:
            raise BinfaceError(f"expected aligned crops of shape (N, 112, 112, 3) uint8, got "
                               f"{crops.dtype} {crops.shape}")
        if len(crops) == 0:
            return np.zeros((0, self.size))
        return self._raw(crops, flip)


def require_weights(spec: str | os.PathLike, why: str = "a gallery made with it could "
                    "never be searched") -> None:
    """Refuse a zoo name where embeddings must be reproducible across runs."""
    p = Path(spec)
    if p.suffix in _FILE_RUNTIMES or p.is_file():
        return
    from binface.models.loading import is_checkpoint_path

    if not is_checkpoint_path(spec):
        raise BinfaceError(f"{spec} is a zoo name: it gets new random weights at every load, "
                           f"so {why}; give a trained checkpoint (.pt), .bfp or .onnx")


def _file_sha(path: Path) -> str | None:
    from binface.data.verification import sha256

    return sha256(path) if path.is_file() else None


def load_embedder(spec: str | os.PathLike, runtime: str = "auto", threads: int = 1
                  ) -> Embedder:
    """The model ``spec`` (zoo name, checkpoint, ``.bfp`` or ``.onnx``) ready to embed in
    ``runtime`` (``auto``: packed for binary models, ONNX Runtime for float ones)."""
    from binface.eval.run import RunnerEmbedder

    if runtime not in EMBED_RUNTIMES:
        raise BinfaceError(f"unknown runtime {runtime!r}; choose from {', '.join(EMBED_RUNTIMES)}")
    path = Path(spec)
    # a file is recorded by its absolute path, so a gallery works from any folder
    spec = str(path.resolve()) if path.is_file() else str(spec)
    file_runtime = _FILE_RUNTIMES.get(path.suffix)
    if file_runtime is not None:  # an exported file runs in its own runtime only
        if runtime not in ("auto", file_runtime):
            raise BinfaceError(f"{path}: a {path.suffix} file runs in the {file_runtime} "
                               f"runtime only, not {runtime}")
        if not path.is_file():
            raise BinfaceError(f"{path}: no such file")
        if file_runtime == "packed":
            from binface.runtime.bfp import read_bfp
            from binface.runtime.engine import load_packed

            graph, _ = read_bfp(path)
            return Embedder(RunnerEmbedder(load_packed(path, threads=threads)),
                            str(graph.get("model", path.stem)), "binary", "packed", spec,
                            _file_sha(path), threads)
        from binface.eval.run import OnnxEmbedder

        module = OnnxEmbedder(path, threads=threads)
        return Embedder(module, module.model_name, "cnn", "onnx", spec, _file_sha(path),
                        threads)

    from binface.models.loading import is_checkpoint_path, load_model

    lm = load_model(spec)
    sha = _file_sha(path) if is_checkpoint_path(spec) else None
    if runtime == "auto":
        runtime = "packed" if lm.family == "binary" else "onnx"
    if runtime == "torch":
        from binface.runtime.capture import inference_copy

        return Embedder(inference_copy(lm.model), lm.name, lm.family, "torch", spec, sha,
                        threads)
    from binface.runtime.bench import prepare

    with tempfile.TemporaryDirectory(prefix="binface-face-") as work:
        art = prepare(spec, [runtime], work, loaded=lm)
        if runtime == "packed":
            from binface.runtime.engine import load_packed

            runner = load_packed(art.packed, threads=threads)
        else:
            from binface.runtime.onnx_rt import OnnxRunner

            runner = OnnxRunner(art.onnx, threads=threads)
    return Embedder(RunnerEmbedder(runner), lm.name, lm.family, runtime, spec, sha, threads)
