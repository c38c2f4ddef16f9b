"""insightface verification packs (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``).

A pack is a pickle of ``(bins, issame_list)``: ``2N`` encoded images (``bytes``,
or numpy uint8 arrays in some files) and ``N`` bools; pair ``k`` is images
``2k`` and ``2k+1``. A pickle can run code when loaded, so packs are read
through an unpickler that admits only the few types these files hold.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from binface.data.files import read_bytes
from binface.data.images import FACE_SIZE, decode_image, encode_jpeg, resize
from binface.errors import BinfaceError

PACK_PROTOCOL = 4  # insightface loads packs with pickle.load(f, encoding="bytes")
_SAFE_DTYPES = frozenset({"b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8"})


class _RefusedGlobal(Exception):
    pass


def _safe_reconstruct(cls: type, shape: tuple, dtype_code: bytes | str) -> np.ndarray:
    """numpy's ``_reconstruct``, for plain ndarrays only."""
    if cls is not np.ndarray:
        raise _RefusedGlobal(f"numpy array subclass {cls!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _safe_dtype(spec: bytes | str, align: bool = False, copy: bool = False) -> np.dtype:
    """``numpy.dtype`` for simple numeric and byte types (never object arrays)."""
    text = spec.decode("latin1") if isinstance(spec, bytes) else str(spec)
    if text not in _SAFE_DTYPES and not re.fullmatch(r"[SV][0-9]*", text):
        raise _RefusedGlobal(f"numpy dtype {text!r}")
    return np.dtype(text, align=bool(align), copy=bool(copy))


def _safe_frombuffer(buf: bytes, dtype: np.dtype, shape: tuple, order: str) -> np.ndarray:
    """numpy's protocol-5 array rebuild, for safe dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise _RefusedGlobal(f"numpy buffer of dtype {dtype!r}")
    arr = np.frombuffer(bytes(buf), dtype=dtype)
    return arr.reshape(shape, order="F" if order == "F" else "C").copy()


def _safe_codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """How protocol-2 pickles written by Python 3 store ``bytes``: latin-1 text."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise _RefusedGlobal(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("_codecs", "encode"): _safe_codecs_encode,
}


class _PackUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy arrays and latin-1 bytes, nothing callable."""

    def find_class(self, module: str, name: str):  # type: ignore[override]
        found = _ALLOWED.get((module, name))
        if found is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return found


def _unpickle(data: bytes, where: str):
    try:
        return _PackUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _RefusedGlobal as exc:
        raise BinfaceError(
            f"{where}: refused to load: the pickle asks for {exc}, which a verification pack "
            "never holds (possibly malicious; nothing was run)"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, OverflowError, UnicodeError) as exc:
        raise BinfaceError(f"{where}: not a verification pack pickle ({exc})") from None


def _entry_image(entry: object, where: str) -> np.ndarray:
    """One pack entry (JPEG bytes, a uint8 buffer or a decoded image) -> RGB array."""
    if isinstance(entry, str):  # Python 2 str read with latin-1
        entry = entry.encode("latin1")
    if isinstance(entry, (bytes, bytearray)):
        return decode_image(bytes(entry), where)
    if isinstance(entry, np.ndarray):
        if entry.dtype == np.uint8 and entry.ndim == 1:
            return decode_image(entry.tobytes(), where)
        if entry.dtype == np.uint8 and entry.ndim == 3 and entry.shape[2] == 3:
            return entry
        raise BinfaceError(f"{where}: numpy entry of dtype {entry.dtype} and shape "
                           f"{entry.shape} is neither an encoded buffer nor an HxWx3 image")
    raise BinfaceError(f"{where}: entry of type {type(entry).__name__}, expected bytes")


def read_pack_raw(path: str | os.PathLike) -> tuple[list, np.ndarray]:
    """The pack's raw ``bins`` list and ``issame`` bool array, checked but not decoded."""
    path = Path(path)
    data = read_bytes(path, "verification pack not found")
    obj = _unpickle(data, str(path))
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinfaceError(f"{path}: expected a pickled (bins, issame_list) pair, got "
                           f"{type(obj).__name__}")
    bins, issame = obj
    if isinstance(bins, np.ndarray) and bins.dtype == np.uint8 and bins.ndim == 4:
        bins = list(bins)
    if not isinstance(bins, (list, tuple)):
        raise BinfaceError(f"{path}: bins is a {type(bins).__name__}, expected a list of images")
    if len(bins) % 2:
        raise BinfaceError(f"{path}: odd number of images ({len(bins)}); pairs need 2 each, "
                           f"entry {len(bins) - 1} has no partner")
    if not isinstance(issame, (list, tuple, np.ndarray)) or any(
        not isinstance(v, (bool, int, np.bool_, np.integer)) for v in issame
    ):
        raise BinfaceError(f"{path}: issame_list must be a list of bools")
    same = np.array([bool(v) for v in issame], dtype=bool)
    if len(same) != len(bins) // 2:
        raise BinfaceError(f"{path}: {len(bins)} images make {len(bins) // 2} pairs but the "
                           f"label list has {len(same)} entries")
    return list(bins), same


def load_pack(
    path: str | os.PathLike, image_size: tuple[int, int] = FACE_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """``(images (2N, H, W, 3) uint8 RGB, issame (N,) bool)`` of a pack, safely."""
    bins, same = read_pack_raw(path)
    images = np.empty((len(bins), image_size[0], image_size[1], 3), dtype=np.uint8)
    for i, entry in enumerate(bins):
        images[i] = resize(_entry_image(entry, f"{path}: entry {i} (pair {i // 2})"), image_size)
    return images, same


def write_pack(
    path: str | os.PathLike,
    images: np.ndarray | Sequence[bytes],
    issame: Sequence[bool] | np.ndarray,
    quality: int = 95,
) -> None:
    """Write a pack insightface's loader reads: list of JPEG bytes, list of bools."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be (2N, H, W, 3) uint8, got {images.dtype} "
                             f"{images.shape}")
        bins = [encode_jpeg(img, quality) for img in images]
    else:
        bins = [bytes(b) for b in images]
    same = [bool(v) for v in issame]
    if len(bins) != 2 * len(same):
        raise ValueError(f"{len(bins)} images need {len(bins) // 2} labels, got {len(same)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        pickle.dump((bins, same), f, protocol=PACK_PROTOCOL)
    os.replace(tmp, path)


def sha256(path: str | os.PathLike) -> str:
    """The file's sha256, recorded beside every result (lfw.bin has two variants)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
