"""Embedding images and scoring verification packs (flip test, batches, subsets).

Preprocessing, flip test and pair subsets are described in docs/protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from binface.errors import BinfaceError
from binface.eval.verification import verification_from_pack_embeddings
from binface.progress import progress as progress_bar


@dataclass
class Pack:
    """A loaded verification pack: uint8 images (2N, 112, 112, 3) RGB and N labels."""

    path: Path
    name: str
    images: np.ndarray
    issame: np.ndarray
    sha256: str
    total_pairs: int  # pairs in the file, before any subset

    @property
    def pairs(self) -> int:
        return len(self.issame)


def subset_pairs(n: int, keep: int, nfolds: int = 10) -> np.ndarray:
    """Indices of ``keep`` pairs, ``keep // nfolds`` evenly spaced within each fold.

    Real packs (and ours) lay each fold out as its genuine pairs, then its impostor
    pairs; spacing the picks over the whole fold keeps the 10-fold layout and the
    genuine/impostor balance of every fold, whatever the order inside it.
    """
    if keep >= n:
        return np.arange(n)
    if keep < nfolds:
        raise BinfaceError(f"a subset needs at least {nfolds} pairs (one per fold), got {keep}")
    per = keep // nfolds
    bounds = np.linspace(0, n, nfolds + 1).astype(int)
    picks = []
    for i in range(nfolds):
        size = bounds[i + 1] - bounds[i]
        offsets = np.floor((np.arange(per) + 0.5) * size / per).astype(int)
        picks.append(bounds[i] + np.unique(np.minimum(offsets, size - 1)))
    return np.concatenate(picks)


def load_eval_pack(path: str | Path, max_pairs: int | None = None) -> Pack:
    """Load a pack (safe unpickler) and optionally keep a fold-balanced subset of pairs."""
    from binface.data.verification import load_pack, sha256

    path = Path(path)
    images, issame = load_pack(path)
    total = len(issame)
    if max_pairs is not None and max_pairs < total:
        keep = subset_pairs(total, max_pairs)
        img_idx = np.stack([2 * keep, 2 * keep + 1], axis=1).reshape(-1)
        images, issame = images[img_idx], issame[keep]
    return Pack(path, path.stem, images, np.asarray(issame, dtype=bool), sha256(path), total)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def embed_images(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 64,
    flip: bool = True,
    progress: bool | str = False,
    channels_last: bool = False,
) -> np.ndarray:
    """L2-normalised embeddings of uint8 (N, H, W, 3) RGB images, with the flip test.

    Preprocessing as insightface: (x - 127.5) / 127.5, NCHW; with ``flip`` the
    embedding is emb(image) + emb(mirrored image) before normalisation.
    """
    was_training = model.training
    model.eval()
    device = _device_of(model)
    out = []
    desc = progress if isinstance(progress, str) else "embedding"
    try:
        for start in progress_bar(range(0, len(images), batch_size), desc=desc,
                                  disable=not progress, unit="batch", leave=False):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
            x = chunk.to(device).permute(0, 3, 1, 2).float().sub_(127.5).div_(127.5)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            e = model(x).float()
            if flip:
                e = e + model(torch.flip(x, dims=[3])).float()
            out.append(e.reshape(e.shape[0], -1).cpu())
    finally:
        model.train(was_training)
    emb = torch.cat(out).numpy().astype(np.float64)
    if not np.isfinite(emb).all():
        raise BinfaceError("the model produced NaN or infinite embeddings")
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


class RunnerEmbedder(nn.Module):
    """Any runner with ``run(ndarray) -> ndarray`` (the packed engine, ONNX Runtime, LCE)
    behind the module interface ``embed_images`` uses: exported models are scored with the
    same preprocessing, flip test and protocol as PyTorch ones."""

    def __init__(self, runner) -> None:
        super().__init__()
        self.runner = runner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.runner.run(x.detach().cpu().numpy())))


class OnnxEmbedder(RunnerEmbedder):
    """An ``.onnx`` file (float or int8) as a module, for ``binface eval``."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        from binface.runtime.onnx_rt import OnnxRunner

        super().__init__(OnnxRunner(path, threads=threads))
        meta = self.runner.session.get_modelmeta().custom_metadata_map
        self.model_name = meta.get("binface.model", Path(path).stem)
        self.precision = meta.get("binface.precision", "float")


def evaluate_pack(model: nn.Module, pack: Pack, batch_size: int = 64, flip: bool = True,
                  protocol: str = "insightface", progress: bool | str = False) -> dict:
    """Verification result of ``model`` on a loaded pack, with the pack's identity."""
    emb = embed_images(model, pack.images, batch_size, flip, progress)
    res = verification_from_pack_embeddings(emb, pack.issame, protocol=protocol)
    res.update(pack=pack.name, path=str(pack.path), sha256=pack.sha256, pairs=pack.pairs,
               total_pairs=pack.total_pairs, subset=pack.pairs < pack.total_pairs, flip=flip)
    return res
