"""insightface verification packs (``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``).

A pack is a pickle of ``(bins, issame_list)``: ``2N`` encoded images (``bytes``,
or numpy uint8 arrays in some files) and ``N`` bools; pair ``k`` is images
``2k`` and ``2k+1``. A pickle can run code when loaded, so packs are read
through an unpickler that admits only the few types these files hold.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import pickletools
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from binface.data.files import read_bytes
from binface.data.images import FACE_SIZE, MAX_PIXELS, decode_image, encode_jpeg, resize
from binface.errors import BinfaceError
from binface.fileio import atomic_write

PACK_PROTOCOL = 4  # insightface loads packs with pickle.load(f, encoding="bytes")
_SAFE_DTYPES = frozenset({"b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8"})
# Every image of a pack is stored in at least this many bytes (a 1x1 PNG takes 67, a
# 112x112 JPEG 800+): more images than file_size / 64 means the pickle repeats shared
# references, a memory bomb (2M references to one JPEG would decode to 75 GB).
MIN_ENTRY_BYTES = 64


class _RefusedGlobal(Exception):
    pass


class _Bomb(Exception):
    pass


class _Budget:
    """Bytes the unpickler may allocate for arrays and byte strings: about the file size.

    A real pack's arrays and byte strings hold data that is in the file; a pickle
    that rebuilds the same shared buffer again and again would not.
    """

    def __init__(self, file_size: int) -> None:
        self.left = 2 * file_size + (1 << 20)

    def spend(self, n: int, what: str) -> None:
        self.left -= n
        if self.left < 0:
            raise _Bomb(f"{what} would take more memory than the file could hold")


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` in a pack: accepted by ``_reconstruct``, not callable."""


class _PackArray(np.ndarray):
    """An array under reconstruction whose ``__setstate__`` is checked and budgeted."""

    def __setstate__(self, state):  # type: ignore[override]
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Bomb("a numpy array with a malformed state")
        shape, dtype = state[-4], state[-3]
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise _RefusedGlobal(f"numpy array of dtype {dtype!r}")
        size = _shape_size(shape)
        budget = self.__dict__.get("_budget")
        if budget is not None:
            budget.spend(size * dtype.itemsize, f"a numpy array of shape {shape}")
        super().__setstate__(state)  # checks that the data matches the shape


def _shape_size(shape: object) -> int:
    if not isinstance(shape, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ) or len(shape) > 32:
        raise _Bomb(f"a numpy array with shape {shape!r}")
    return math.prod(shape)


def _dtype_text(spec: object) -> str:
    text = spec.decode("latin1") if isinstance(spec, bytes) else str(spec)
    if text not in _SAFE_DTYPES and not re.fullmatch(r"[SV][0-9]{0,9}", text):
        raise _RefusedGlobal(f"numpy dtype {text[:40]!r}")
    return text


def _safe_dtype(spec: bytes | str, align: bool = False, copy: bool = False) -> np.dtype:
    """``numpy.dtype`` for simple numeric and byte types (never object arrays)."""
    return np.dtype(_dtype_text(spec), align=bool(align), copy=bool(copy))


def _safe_codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    """How protocol-2 pickles written by Python 3 store ``bytes``: latin-1 text."""
    if (not isinstance(text, str) or not isinstance(encoding, str)
            or encoding.lower().replace("-", "") != "latin1"):
        raise _RefusedGlobal(f"_codecs.encode with encoding {encoding!r}"[:80])
    return text.encode("latin1")


class _PackUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy arrays and latin-1 bytes, nothing callable.

    numpy arrays are rebuilt only the way numpy pickles them (an empty
    ``_reconstruct`` filled by ``__setstate__`` with data of matching size), so a
    pickle cannot allocate an array without supplying its bytes; everything the
    resolved functions allocate is counted against a budget of about the file size.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.budget = _Budget(len(data))
        budget = self.budget

        def reconstruct(cls: object, shape: tuple, dtype_code: bytes | str) -> np.ndarray:
            if cls is not _NdarrayToken:
                raise _RefusedGlobal(f"numpy array subclass {cls!r}"[:80])
            if _shape_size(shape) != 0:
                raise _Bomb(f"a numpy array of shape {shape} built without its data")
            code = dtype_code.decode("latin1") if isinstance(dtype_code, bytes) else dtype_code
            arr = np.ndarray.__new__(_PackArray, shape, "b" if code == "b" else
                                     _dtype_text(dtype_code))
            arr._budget = budget
            return arr

        def frombuffer(buf: bytes, dtype: np.dtype, shape: tuple, order: str) -> np.ndarray:
            if not isinstance(dtype, np.dtype) or dtype.hasobject:
                raise _RefusedGlobal(f"numpy buffer of dtype {dtype!r}")
            budget.spend(2 * len(buf), "a numpy buffer")
            arr = np.frombuffer(bytes(buf), dtype=dtype)
            if _shape_size(shape) != arr.size:
                raise _Bomb(f"a numpy buffer of {arr.size} values for shape {shape}")
            return arr.reshape(shape, order="F" if order == "F" else "C").copy()

        def codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
            if isinstance(text, str):
                budget.spend(len(text), "a byte string")
            return _safe_codecs_encode(text, encoding)

        self._allowed = {
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy", "ndarray"): _NdarrayToken,
            ("numpy", "dtype"): _safe_dtype,
            ("numpy.core.numeric", "_frombuffer"): frombuffer,
            ("numpy._core.numeric", "_frombuffer"): frombuffer,
            ("_codecs", "encode"): codecs_encode,
        }

    def find_class(self, module: str, name: str):  # type: ignore[override]
        found = self._allowed.get((module, name))
        if found is None:
            raise _RefusedGlobal(f"{module}.{name}"[:120])
        return found

    def persistent_load(self, pid: object):  # type: ignore[override]
        raise _RefusedGlobal("a persistent id")


def _plain(obj: object) -> object:
    """Arrays rebuilt by the unpickler as plain ``numpy.ndarray`` views."""
    return obj.view(np.ndarray) if isinstance(obj, _PackArray) else obj


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _prescan(data: bytes) -> None:
    """Walk the opcodes once before loading: a malformed pickle fails here, cheaply.

    The C unpickler grows its memo table to any index a ``PUT`` names (a 10-byte
    pickle could make it zero 4 GB) and allocates a counted string before reading
    it; a real pickle numbers its memo entries from 0, so an index beyond the
    opcode's offset in the file is refused.
    """
    for opcode, arg, pos in pickletools.genops(data):
        if opcode.name in _MEMO_PUTS and isinstance(arg, int) and not 0 <= arg <= pos:
            raise _Bomb(f"a memo index {arg} at byte {pos}")


def _unpickle(data: bytes, where: str):
    try:
        _prescan(data)
        return _PackUnpickler(data).load()
    except _RefusedGlobal as exc:
        raise BinfaceError(
            f"{where}: refused to load: the pickle asks for {exc}, which a verification pack "
            "never holds (possibly malicious; nothing was run)"
        ) from None
    except _Bomb as exc:
        raise BinfaceError(f"{where}: refused to load: {exc} (a crafted or corrupt "
                           "pack)") from None
    except RecursionError:
        raise BinfaceError(f"{where}: not a verification pack pickle (nested too "
                           "deeply)") from None
    except Exception as exc:  # noqa: BLE001 - any failure of the parser on foreign bytes
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise BinfaceError(f"{where}: not a verification pack pickle ({reason})") from None


def entry_image(entry: object, where: str) -> np.ndarray:
    """One pack entry (JPEG bytes, a uint8 buffer or a decoded image) -> RGB array."""
    if isinstance(entry, str):  # Python 2 str read with latin-1
        try:
            entry = entry.encode("latin1")
        except UnicodeEncodeError:
            raise BinfaceError(f"{where}: entry is text, not image bytes") from None
    if isinstance(entry, (bytes, bytearray)):
        return decode_image(bytes(entry), where)
    if isinstance(entry, np.ndarray):
        if entry.dtype == np.uint8 and entry.ndim == 1:
            return decode_image(entry.tobytes(), where)
        if entry.dtype == np.uint8 and entry.ndim == 3 and entry.shape[2] == 3:
            h, w = entry.shape[:2]
            if h < 1 or w < 1 or h * w > MAX_PIXELS:
                raise BinfaceError(f"{where}: decoded image of {h}x{w} pixels is not a face "
                                   "image")
            return entry
        raise BinfaceError(f"{where}: numpy entry of dtype {entry.dtype} and shape "
                           f"{entry.shape} is neither an encoded buffer nor an HxWx3 image")
    raise BinfaceError(f"{where}: entry of type {type(entry).__name__}, expected bytes")


def _issame(issame: object, path: Path) -> np.ndarray:
    """The label list as bools; anything but booleans, 0 and 1 is refused."""
    if isinstance(issame, np.ndarray):
        if issame.ndim != 1 or issame.dtype.kind not in "biu":
            raise BinfaceError(f"{path}: issame_list is a {issame.dtype} array of shape "
                               f"{issame.shape}, expected booleans")
        values = issame.astype(np.int64) if issame.dtype.kind != "b" else issame
        bad = np.flatnonzero((values != 0) & (values != 1))
        if len(bad):
            raise BinfaceError(f"{path}: issame_list entry {bad[0]} is {issame[bad[0]]}, "
                               "expected a boolean (or 0/1)")
        return issame.astype(bool)
    if not isinstance(issame, (list, tuple)):
        raise BinfaceError(f"{path}: issame_list is a {type(issame).__name__}, expected a "
                           "list of bools")
    for i, v in enumerate(issame):
        if not isinstance(v, (bool, int, np.bool_, np.integer)) or v not in (0, 1):
            shown = repr(v)[:40] if isinstance(v, (int, float, str, bytes)) else type(v).__name__
            raise BinfaceError(f"{path}: issame_list entry {i} is {shown}, expected a boolean "
                               "(or 0/1)")
    return np.array([bool(v) for v in issame], dtype=bool)


def read_pack_raw(path: str | os.PathLike) -> tuple[list, np.ndarray]:
    """The pack's raw ``bins`` list and ``issame`` bool array, checked but not decoded."""
    path = Path(path)
    data = read_bytes(path, "verification pack not found")
    obj = _plain(_unpickle(data, str(path)))
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinfaceError(f"{path}: expected a pickled (bins, issame_list) pair, got "
                           f"{type(obj).__name__}")
    bins, issame = (_plain(v) for v in obj)
    if isinstance(bins, np.ndarray) and bins.dtype == np.uint8 and bins.ndim == 4:
        bins = list(bins)
    if not isinstance(bins, (list, tuple)):
        raise BinfaceError(f"{path}: bins is a {type(bins).__name__}, expected a list of images")
    if len(bins) > max(2, len(data) // MIN_ENTRY_BYTES):
        raise BinfaceError(f"{path}: {len(bins)} images in a {len(data)}-byte file, more than "
                           f"one per {MIN_ENTRY_BYTES} bytes (the pickle repeats shared "
                           "references; a crafted pack)")
    if len(bins) % 2:
        raise BinfaceError(f"{path}: odd number of images ({len(bins)}); pairs need 2 each, "
                           f"entry {len(bins) - 1} has no partner")
    same = _issame(issame, path)
    if len(same) != len(bins) // 2:
        raise BinfaceError(f"{path}: {len(bins)} images make {len(bins) // 2} pairs but the "
                           f"label list has {len(same)} entries")
    if len(same) == 0:
        raise BinfaceError(f"{path}: the pack holds no pairs")
    return [_plain(b) for b in bins], same


def load_pack(
    path: str | os.PathLike, image_size: tuple[int, int] = FACE_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """``(images (2N, H, W, 3) uint8 RGB, issame (N,) bool)`` of a pack, safely.

    An entry that is the same object as an earlier one (a pickle memo reference)
    is decoded once.
    """
    bins, same = read_pack_raw(path)
    images = np.empty((len(bins), image_size[0], image_size[1], 3), dtype=np.uint8)
    seen: dict[int, int] = {}
    for i, entry in enumerate(bins):
        first = seen.setdefault(id(entry), i)
        if first != i:
            images[i] = images[first]
            continue
        images[i] = resize(entry_image(entry, f"{path}: entry {i} (pair {i // 2})"), image_size)
    return images, same


def write_pack(
    path: str | os.PathLike,
    images: np.ndarray | Sequence[bytes],
    issame: Sequence[bool] | np.ndarray,
    quality: int = 95,
) -> None:
    """Write a pack insightface's loader reads: list of JPEG bytes, list of bools.

    The file is written atomically (``binface.fileio``): a failure leaves the
    previous file, or none.
    """
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
    with atomic_write(path, "wb") as f:
        pickle.dump((bins, same), f, protocol=PACK_PROTOCOL)


def sha256(path: str | os.PathLike) -> str:
    """The file's sha256, recorded beside every result (lfw.bin has two variants)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
