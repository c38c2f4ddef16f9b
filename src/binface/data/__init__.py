"""Data: RecordIO, verification packs, image folders and synthetic faces.

Importing this package does not import torch (the synthetic renderer's worker
processes stay light); ``RecordDataset`` is loaded on first use.
"""

from binface.data.recordio import (
    FaceRecordReader,
    FaceRecordWriter,
    RecordReader,
    RecordWriter,
    write_face_rec,
)
from binface.data.verification import load_pack, write_pack

__all__ = [
    "FaceRecordReader",
    "FaceRecordWriter",
    "RecordDataset",
    "RecordReader",
    "RecordWriter",
    "load_pack",
    "write_face_rec",
    "write_pack",
]


def __getattr__(name: str):
    if name == "RecordDataset":
        from binface.data.dataset import RecordDataset

        return RecordDataset
    raise AttributeError(f"module 'binface.data' has no attribute {name!r}")
