"""Training data: a set from a path (``.rec`` or image folder) and its resumable batches.

The data order and the flips are drawn from generators seeded by (seed, epoch),
and flips are applied by the sampler's (index, flip) items rather than inside the
workers, so a resumed run reads exactly the batches the uninterrupted run would.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset

from binface.data.files import read_bytes
from binface.errors import BinfaceError


class FolderDataset(Dataset):
    """An aligned image folder (one subfolder per identity) as normalised tensors.

    Labels follow the sorted subfolder names; images that are not 112x112 are
    resized. With ``skip_bad`` an unreadable image is replaced by the next one,
    with a warning that names it.
    """

    def __init__(self, folder: str | os.PathLike, skip_bad: bool = False) -> None:
        from binface.data.folder import scan_folder

        self.folder = Path(folder)
        self.classes = scan_folder(self.folder)
        self.items = [(p, label) for label, (_, files) in enumerate(self.classes) for p in files]
        self.skip_bad = skip_bad
        self.flip = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int) -> tuple[torch.Tensor, int]:
        from binface.data.images import FACE_SIZE, decode_image, normalize, resize

        path, label = self.items[index]
        data = read_bytes(path, "image file not found")
        image = resize(decode_image(data, str(path)), FACE_SIZE)
        return torch.from_numpy(normalize(image)), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        for attempt in range(min(len(self), 1000)):
            i = (index + attempt) % len(self)
            try:
                return self._load(i)
            except BinfaceError as exc:
                if not self.skip_bad:
                    raise
                warnings.warn(f"{exc}; skipped (skip_bad)", stacklevel=2)
        raise BinfaceError(f"{self.folder}: no readable image near item {index}")


def open_train_dataset(path: str | os.PathLike, skip_bad: bool = False) -> Dataset:
    """A ``.rec`` (with its ``.idx``) or an image folder, without random flips.

    The trainer draws flips itself so that they are reproducible on resume.
    """
    p = Path(path)
    if not p.exists() and not p.with_suffix(".rec").is_file():
        raise BinfaceError(f"training data not found: {p}")
    if p.is_dir():
        return FolderDataset(p, skip_bad=skip_bad)
    if p.suffix == ".rec" or p.with_suffix(".rec").is_file():
        from binface.data.dataset import RecordDataset

        return RecordDataset(p if p.suffix == ".rec" else p.with_suffix(".rec"), train=False,
                             skip_bad=skip_bad)
    raise BinfaceError(f"training data {p} is neither a .rec file nor an image folder")


class FlipIndexed(Dataset):
    """Items addressed as (index, flip): flips come from the sampler, not the worker.

    That makes augmentation a function of (seed, epoch) and so resumable exactly.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base
        if hasattr(base, "flip"):
            base.flip = False

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, bool]):
        index, flip = item
        x, y = self.base[int(index)]
        return (x.flip(-1) if flip else x), int(y)


class EpochBatches:
    """Per-process batches of (index, flip) for one epoch, from micro-batch ``start``.

    Rank ``r`` of ``world`` takes every ``world``-th slice of ``batch`` images of one
    permutation, so the processes together read the same images as one process
    with a ``world`` times larger batch.
    """

    def __init__(self, n: int, batch: int, rank: int, world: int, seed: int, epoch: int,
                 start: int = 0) -> None:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        self.perm = torch.randperm(n, generator=g)
        self.flips = torch.rand(n, generator=g) < 0.5
        self.batch, self.rank, self.world, self.start = batch, rank, world, start
        self.count = n // (batch * world)  # micro-batches per epoch (last partial dropped)

    def __len__(self) -> int:
        return self.count - self.start

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        for b in range(self.start, self.count):
            lo = (b * self.world + self.rank) * self.batch
            idx = self.perm[lo:lo + self.batch]
            yield [(int(i), bool(self.flips[i])) for i in idx]
