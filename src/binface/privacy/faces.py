"""Faces for the attacks: images and identity labels from a ``.rec``, as tensors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from binface.errors import BinfaceError


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) RGB -> float (N, 3, H, W) in [-1, 1], as every binface model takes."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise BinfaceError(f"faces must be uint8 (N, H, W, 3), got {images.dtype} "
                           f"{images.shape}")
    return torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) - 127.5) / 127.5


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    a = (x.detach().clamp(-1, 1).numpy().transpose(0, 2, 3, 1) * 127.5 + 127.5)
    return np.round(a).astype(np.uint8)


def read_faces(path: str | os.PathLike, count: int, seed: int = 0,
               labels: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` faces and their labels drawn from a training ``.rec`` (or a synthetic
    benchmark folder holding ``train.rec``): distinct identities while there are enough
    (``labels``: only those identities)."""
    from binface.data.dataset import RecordDataset

    p = Path(path)
    if p.is_dir():
        p = p / "train.rec"
    if not p.is_file() and not p.with_suffix(".rec").is_file():
        raise BinfaceError(f"{path}: no such .rec (or benchmark folder with train.rec)")
    ds = RecordDataset(p if p.suffix == ".rec" else p.with_suffix(".rec"), train=False)
    lab = np.array([ds.reader.image(int(k))[0] for k in ds.keys]) if len(ds) else np.array([])
    pool = np.arange(len(ds)) if labels is None else np.flatnonzero(np.isin(lab, labels))
    if len(pool) < count:
        raise BinfaceError(f"{p}: {len(pool)} faces, {count} asked for")
    rng = np.random.default_rng(seed)
    order = rng.permutation(pool)
    # one face per identity first, then the rest
    _, first = np.unique(lab[order], return_index=True)
    picks = list(order[np.sort(first)][:count])
    picks += [i for i in order if i not in set(picks)][:count - len(picks)]
    images = np.stack([ds.load(int(i))[0] for i in picks])
    return images, lab[picks].astype(np.int64)
