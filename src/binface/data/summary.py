"""``binface data inspect``: counts and a contact sheet for a ``.rec`` or a ``.bin``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from binface.data.images import decode_image, resize
from binface.data.recordio import FaceRecordReader
from binface.data.sheet import contact_sheet
from binface.data.verification import load_pack, sha256
from binface.errors import BinfaceError
from binface.progress import progress as progress_bar


def summarize_rec(path: str | os.PathLike, progress: bool = True) -> dict:
    """Images, classes and images per class of a RecordIO face set."""
    reader = FaceRecordReader(path)
    if reader.identity_ranges is not None:
        counts = np.diff(reader.identity_ranges, axis=1)[:, 0]
    else:  # im2rec style: read every label
        labels = np.empty(len(reader.image_keys), dtype=np.int64)
        for i, key in enumerate(progress_bar(reader.image_keys, desc="scan", unit="rec",
                                     disable=not progress)):
            labels[i] = reader.image(int(key))[0]
        _, counts = np.unique(labels, return_counts=True)
    reader.close()
    return {
        "file": str(reader.rec_path),
        "kind": "recordio",
        "layout": "insightface (header record 0)" if reader.has_header else "im2rec (no header)",
        "bytes": reader.size,
        "images": int(reader.num_images),
        "classes": int(len(counts)),
        "images_per_class": {
            "min": int(counts.min()) if len(counts) else 0,
            "median": float(np.median(counts)) if len(counts) else 0.0,
            "max": int(counts.max()) if len(counts) else 0,
        },
    }


def summarize_pack(path: str | os.PathLike) -> tuple[dict, np.ndarray, np.ndarray]:
    """Pairs, genuine share per fold and sha256 of a verification pack (+ its data)."""
    images, issame = load_pack(path)
    n = len(issame)
    folds = [int(f.sum()) for f in np.array_split(issame, 10)] if n >= 10 else []
    info = {
        "file": str(path),
        "kind": "verification pack",
        "bytes": Path(path).stat().st_size,
        "sha256": sha256(path),
        "pairs": n,
        "images": int(len(images)),
        "genuine": int(issame.sum()),
        "impostor": int(n - issame.sum()),
        "genuine_per_fold": folds,
        "image_shape": list(images.shape[1:]),
    }
    return info, images, issame


def rec_sheet(path: str | os.PathLike, out: str | os.PathLike, classes: int = 6,
              per_class: int = 8) -> Path:
    """A row of sample images for each of a few classes spread over the set."""
    reader = FaceRecordReader(path)
    rows, labels = [], []
    if reader.identity_ranges is not None:
        picks = np.linspace(0, len(reader.identity_ranges) - 1, min(classes, len(
            reader.identity_ranges))).astype(int)
        for c in picks:
            a, b = reader.identity_ranges[c]
            keys = range(int(a), min(int(b), int(a) + per_class))
            rows.append([_image(reader, k) for k in keys])
            labels.append(f"class {c}")
    else:
        keys = reader.image_keys[: classes * per_class]
        for i in range(0, len(keys), per_class):
            rows.append([_image(reader, int(k)) for k in keys[i: i + per_class]])
            labels.append(f"keys {int(keys[i])}..")
    reader.close()
    return contact_sheet(rows, out, row_labels=labels)


def _image(reader: FaceRecordReader, key: int) -> np.ndarray:
    _, data = reader.image(key)
    return resize(decode_image(data, f"{reader.rec_path}: record {key}"))


def pack_sheet(images: np.ndarray, issame: np.ndarray, out: str | os.PathLike,
               pairs: int = 8) -> Path:
    """Pairs side by side with their label: genuine and impostor pairs from several folds."""
    n = len(issame)
    gen, imp = np.flatnonzero(issame), np.flatnonzero(~issame)
    half = pairs // 2
    picks = list(gen[np.linspace(0, len(gen) - 1, min(half, len(gen))).astype(int)]) if len(
        gen) else []
    picks += list(imp[np.linspace(0, len(imp) - 1, min(pairs - len(picks), len(imp))).astype(
        int)]) if len(imp) else []
    rows, caps = [], []
    for i in range(0, len(picks), 2):
        row, cap = [], []
        for k in picks[i: i + 2]:
            row += [images[2 * k], images[2 * k + 1]]
            label = "same" if issame[k] else "different"
            cap += [f"pair {k}: {label}", f"fold {k * 10 // max(n, 1)}"]
        rows.append(row)
        caps.append(cap)
    return contact_sheet(rows, out, captions=caps)


def inspect_file(path: str | os.PathLike, sheet: str | os.PathLike | None,
                 progress: bool = True) -> dict:
    """Summary of ``path`` (``.rec``/``.idx`` or ``.bin``); write a sheet if asked."""
    path = Path(path)
    if path.suffix in (".rec", ".idx"):
        info = summarize_rec(path, progress)
        if sheet:
            info["sheet"] = str(rec_sheet(path, sheet))
    elif path.suffix == ".bin":
        info, images, issame = summarize_pack(path)
        if sheet:
            info["sheet"] = str(pack_sheet(images, issame, sheet))
    else:
        raise BinfaceError(f"{path}: cannot inspect a '{path.suffix}' file (expected .rec or .bin)")
    return info


def format_summary(info: dict) -> str:
    """The summary as aligned ``key: value`` lines."""
    lines = []
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in value.items())
        elif isinstance(value, list):
            value = " ".join(str(v) for v in value)
        lines.append(f"{key.replace('_', ' '):>17}: {value}")
    return "\n".join(lines)
