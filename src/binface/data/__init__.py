"""Data: RecordIO, verification packs, image folders and synthetic faces.

The file formats are described in docs/formats.md. Importing this package does
not import torch (the synthetic renderer's worker processes stay light): the
readers and writers of the formats load at once, everything else on first use.

- RecordIO training sets: ``FaceRecordReader`` / ``FaceRecordWriter`` (insightface
  layout), ``RecordReader`` / ``RecordWriter`` (plain), ``write_face_rec``,
  ``read_property`` / ``write_property``; ``RecordDataset`` (a torch Dataset).
- Verification packs: ``load_pack`` (safe unpickler), ``read_pack_raw``, ``write_pack``.
- Image folders: ``pack_folder`` (identity subfolders -> ``.rec``), ``pairs_pack``
  (folder + LFW ``pairs.txt`` -> ``.bin``), ``scan_folder``, ``read_pairs``.
- Inspection: ``inspect_file``, ``summarize_rec``, ``summarize_pack``.
- The synthetic benchmark: ``generate_synth`` (``binface.data.synth.generate``),
  ``identity_sheet``, ``render_image``.
"""

from binface.data.recordio import (
    FaceRecordReader,
    FaceRecordWriter,
    RecordReader,
    RecordWriter,
    read_property,
    write_face_rec,
    write_property,
)
from binface.data.verification import load_pack, read_pack_raw, write_pack
from binface.lazy import lazy_exports

_LAZY = {  # public name -> (module, name there), imported on first use
    "RecordDataset": ("binface.data.dataset", "RecordDataset"),
    "PackResult": ("binface.data.folder", "PackResult"),
    "pack_folder": ("binface.data.folder", "pack_folder"),
    "pairs_pack": ("binface.data.folder", "pairs_pack"),
    "read_pairs": ("binface.data.folder", "read_pairs"),
    "scan_folder": ("binface.data.folder", "scan_folder"),
    "inspect_file": ("binface.data.summary", "inspect_file"),
    "summarize_pack": ("binface.data.summary", "summarize_pack"),
    "summarize_rec": ("binface.data.summary", "summarize_rec"),
    "generate_synth": ("binface.data.synth", "generate"),
    "identity_sheet": ("binface.data.synth", "identity_sheet"),
    "render_image": ("binface.data.synth", "render_image"),
}

__all__ = [
    "FaceRecordReader",
    "FaceRecordWriter",
    "PackResult",
    "RecordDataset",
    "RecordReader",
    "RecordWriter",
    "generate_synth",
    "identity_sheet",
    "inspect_file",
    "load_pack",
    "pack_folder",
    "pairs_pack",
    "read_pack_raw",
    "read_pairs",
    "read_property",
    "render_image",
    "scan_folder",
    "summarize_pack",
    "summarize_rec",
    "write_face_rec",
    "write_pack",
    "write_property",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
