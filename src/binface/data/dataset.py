"""A torch ``Dataset`` over an insightface-style ``.rec`` training set."""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch.utils.data import Dataset

from binface.data.images import FACE_SIZE, decode_image, normalize, resize
from binface.data.recordio import FaceRecordReader
from binface.errors import BinfaceError


class RecordDataset(Dataset):
    """Normalised ``(3, 112, 112)`` RGB tensors and integer labels from a ``.rec``.

    ``train=True`` flips images horizontally at random (torch's RNG, which
    ``DataLoader`` seeds per worker). The file is opened lazily in each worker.
    With ``skip_bad=True`` a record that cannot be read or decoded is replaced by
    the next good one and a warning names it; otherwise it raises.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        train: bool = True,
        flip: bool | None = None,
        skip_bad: bool = False,
        image_size: tuple[int, int] = FACE_SIZE,
    ) -> None:
        self.reader = FaceRecordReader(path)
        self.keys = self.reader.image_keys
        self.flip = train if flip is None else flip
        self.skip_bad = skip_bad
        self.image_size = tuple(image_size)
        self.bad_keys: set[int] = set()

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def num_classes(self) -> int | None:
        return self.reader.num_classes

    def load(self, index: int) -> tuple[np.ndarray, int]:
        """(uint8 RGB image, label) of item ``index``, no flip; raises on a bad record."""
        key = int(self.keys[index])
        label, data = self.reader.image(key)
        image = decode_image(data, f"{self.reader.rec_path}: record {key}")
        return resize(image, self.image_size), label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if index < 0:
            index += len(self)
        for attempt in range(min(len(self), 1000)):
            i = (index + attempt) % len(self)
            try:
                image, label = self.load(i)
                break
            except BinfaceError as exc:
                if not self.skip_bad:
                    raise
                key = int(self.keys[i])
                if key not in self.bad_keys:
                    self.bad_keys.add(key)
                    warnings.warn(f"{exc}; skipped (skip_bad=True)", stacklevel=2)
        else:
            raise BinfaceError(f"{self.reader.rec_path}: no readable record near index {index}")
        x = torch.from_numpy(normalize(image))
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, label
