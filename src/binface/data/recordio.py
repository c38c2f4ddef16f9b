"""MXNet RecordIO (``.rec`` + ``.idx``) in pure Python, insightface layout included.

insightface's training sets (MS1M-V3, faces_emore, Glint360K) ship as RecordIO
files that used to need mxnet; mxnet no longer installs beside modern numpy, so
binface reads and writes the format itself.

Layout (little endian): every chunk is ``uint32 magic``, ``uint32 lrec`` (top 3
bits ``cflag``, low 29 bits the length), the payload and zero padding to a
4-byte boundary. A record whose payload holds the magic at a 4-byte-aligned
offset is split there into parts (cflag 1 start, 2 middle, 3 end) and the magic
is dropped; the reader puts it back. A record payload starts with the ``IfQQ``
header (flag, label, id, id2); ``flag > 0`` means ``flag`` float32 labels follow.
insightface adds record 0 with labels ``(id_start, id_end)``: images are keys
``1 .. id_start-1`` and keys ``id_start .. id_end-1`` hold one record per
identity whose labels are its image key range.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from binface.data.files import read_bytes
from binface.errors import BinfaceError
from binface.fileio import atomic_write, write_text

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
HEADER = struct.Struct("<IfQQ")
_CHUNK = struct.Struct("<II")
_LENGTH_MASK = (1 << 29) - 1
MAX_RECORD = 1 << 29
_INT64_MAX = (1 << 63) - 1
MAX_LABEL = 1 << 31  # a class index never reaches this (Partial FC would need 2^31 rows)


class IRHeader(NamedTuple):
    """The 24-byte header at the start of every record payload."""

    flag: int
    label: float
    id: int
    id2: int


@dataclass(frozen=True)
class Record:
    """One decoded record: its header, its labels and the rest of the payload."""

    header: IRHeader
    labels: np.ndarray  # float32; a scalar label is stored as one value
    data: bytes

    @property
    def label(self) -> float | np.ndarray:
        """The scalar label, or the label array when the record has several."""
        return self.labels if self.header.flag > 0 else float(self.labels[0])


# ----------------------------------------------------------------------------- payloads
def pack_record(
    label: float | Sequence[float] | np.ndarray, data: bytes = b"", id: int = 0, id2: int = 0
) -> bytes:
    """Record payload for ``label`` (scalar, or an array stored after the header)."""
    arr = np.asarray(label, dtype=np.float32)
    if arr.ndim == 0:
        return HEADER.pack(0, float(arr), id, id2) + bytes(data)
    arr = arr.ravel()
    if arr.size == 0:
        raise ValueError("an array label needs at least one value")
    return HEADER.pack(arr.size, 0.0, id, id2) + arr.astype("<f4").tobytes() + bytes(data)


def unpack_record(payload: bytes, where: str = "record") -> Record:
    """Split a payload into header, labels and data; ``where`` names it in errors."""
    if len(payload) < HEADER.size:
        raise BinfaceError(
            f"{where}: payload is {len(payload)} bytes, shorter than the 24-byte record header"
        )
    header = IRHeader(*HEADER.unpack_from(payload, 0))
    if header.flag > 0:
        end = HEADER.size + 4 * header.flag
        if end > len(payload):
            raise BinfaceError(
                f"{where}: header says {header.flag} labels but the payload has room for "
                f"{(len(payload) - HEADER.size) // 4}"
            )
        labels = np.frombuffer(payload, dtype="<f4", count=header.flag, offset=HEADER.size)
        return Record(header, labels.astype(np.float32), bytes(payload[end:]))
    labels = np.array([header.label], dtype=np.float32)
    return Record(header, labels, bytes(payload[HEADER.size:]))


def encode_chunks(payload: bytes) -> bytes:
    """The chunks that store ``payload``: split at every aligned magic, then padded."""
    if len(payload) >= MAX_RECORD:
        raise ValueError(f"a RecordIO record must be under 2**29 bytes, got {len(payload)}")
    view = memoryview(payload)
    words = np.frombuffer(view[: len(payload) // 4 * 4], dtype="<u4")
    cuts = (np.flatnonzero(words == MAGIC) * 4).tolist()
    out = bytearray()
    start = 0
    for cut in cuts:  # every part but the last is a multiple of 4 bytes: no padding
        out += _CHUNK.pack(MAGIC, (1 if start == 0 else 2) << 29 | (cut - start))
        out += view[start:cut]
        start = cut + 4
    tail = len(payload) - start
    out += _CHUNK.pack(MAGIC, (3 if cuts else 0) << 29 | tail)
    out += view[start:]
    out += b"\0" * (-len(payload) % 4)
    return bytes(out)


# ----------------------------------------------------------------------------- writer
class RecordWriter:
    """Write records and their ``.idx`` lines (``key<TAB>offset``) as mxnet does.

    Both files are written to temporaries beside the targets (``binface.fileio``)
    and renamed over them by ``close``; ``abort`` (or an exception inside a
    ``with`` block) removes the temporaries and leaves any previous files as they were.
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        self._stack = contextlib.ExitStack()
        try:
            self._rec = self._stack.enter_context(atomic_write(self.rec_path, "wb"))
            self._idx = self._stack.enter_context(atomic_write(self.idx_path, "w"))
        except BaseException:
            self._stack.close()
            raise
        self._keys: set[int] = set()
        self._done = False

    def write(self, key: int, payload: bytes) -> int:
        """Append one record under ``key``; return its byte offset."""
        key = int(key)
        if key in self._keys:
            raise ValueError(f"{self.rec_path}: key {key} is written twice")
        self._keys.add(key)
        offset = self._rec.tell()
        self._rec.write(encode_chunks(payload))
        self._idx.write(f"{key}\t{offset}\n")
        return offset

    def tell(self) -> int:
        return self._rec.tell()

    @property
    def closed(self) -> bool:
        return self._done

    def close(self) -> None:
        """Finish both files and move them into place."""
        if not self._done:
            self._done = True
            self._stack.close()

    def abort(self) -> None:
        """Drop the temporaries; the target paths keep what they held before."""
        if not self._done:
            self._done = True
            err = BinfaceError(f"{self.rec_path}: write aborted")
            self._stack.__exit__(BinfaceError, err, None)

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ----------------------------------------------------------------------------- reader
def rec_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``train``, ``train.rec`` or ``train.idx`` -> (``train.rec``, ``train.idx``)."""
    p = Path(path)
    if p.suffix in (".rec", ".idx"):
        return p.with_suffix(".rec"), p.with_suffix(".idx")
    return p.with_name(p.name + ".rec"), p.with_name(p.name + ".idx")


def read_index(idx_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Parse an ``.idx`` file into (keys, offsets) int64 arrays, in file order."""
    idx_path = Path(idx_path)
    text = read_bytes(idx_path, "index file not found (a .rec needs its .idx)")
    tokens = text.split()
    try:  # fast path: the whole file at once
        if len(tokens) % 2:
            raise ValueError
        pairs = np.array(tokens, dtype=np.bytes_).astype(np.int64).reshape(-1, 2)
        keys, offsets = pairs[:, 0].copy(), pairs[:, 1].copy()
        if sum(1 for line in text.splitlines() if line.strip()) != len(keys):
            raise ValueError  # some line does not hold exactly two tokens
    except (ValueError, OverflowError):
        keys, offsets = _read_index_lines(idx_path, text)
    bad = np.flatnonzero(offsets < 0)
    if len(bad):
        raise BinfaceError(f"{idx_path}: key {keys[bad[0]]} has negative offset {offsets[bad[0]]}")
    ordered = np.sort(keys)
    dup = ordered[1:][ordered[1:] == ordered[:-1]]
    if len(dup):
        raise BinfaceError(f"{idx_path}: key {dup[0]} appears more than once")
    return keys, offsets


def _read_index_lines(idx_path: Path, text: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Slow line-by-line parse that names the first bad line."""
    keys: list[int] = []
    offsets: list[int] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 2:
                raise ValueError
            key, offset = int(parts[0]), int(parts[1])
        except ValueError:
            shown = line[:60].decode("ascii", "replace")
            raise BinfaceError(
                f"{idx_path}: line {lineno} is not 'key<TAB>offset' with integers: {shown!r}"
            ) from None
        for what, value in (("key", key), ("offset", offset)):
            if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
                raise BinfaceError(f"{idx_path}: line {lineno}: {what} {str(value)[:30]} is "
                                   "beyond the 64-bit range of a RecordIO index")
        keys.append(key)
        offsets.append(offset)
    return np.array(keys, dtype=np.int64), np.array(offsets, dtype=np.int64)


class RecordReader:
    """Random access to the records of a ``.rec`` through its ``.idx``.

    The file is opened on first read, in the process that reads, and the handle
    is never pickled: a reader handed to ``DataLoader`` workers opens one file
    per worker.
    """

    def __init__(self, path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        rec, idx = rec_paths(path)
        self.rec_path = rec
        self.idx_path = Path(idx_path) if idx_path is not None else idx
        if not self.rec_path.is_file():
            raise BinfaceError(f"{self.rec_path}: record file not found")
        self.size = self.rec_path.stat().st_size
        self.keys, self.offsets = read_index(self.idx_path)
        self._pos = self._build_lookup()
        self._fh = None
        self._pid = -1

    def _build_lookup(self) -> np.ndarray | dict[int, int]:
        """Key -> row: an array when keys are small non-negative ints, else a dict."""
        if len(self.keys) and self.keys.min() >= 0 and self.keys.max() < 4 * len(self.keys) + 16:
            lut = np.full(int(self.keys.max()) + 1, -1, dtype=np.int64)
            lut[self.keys] = np.arange(len(self.keys))
            return lut
        return {int(k): i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: int) -> bool:
        return self._row(key) >= 0

    def _row(self, key: int) -> int:
        key = int(key)
        if isinstance(self._pos, dict):
            return self._pos.get(key, -1)
        return int(self._pos[key]) if 0 <= key < len(self._pos) else -1

    def offset(self, key: int) -> int:
        row = self._row(key)
        if row < 0:
            raise BinfaceError(f"{self.idx_path}: no record with key {key}")
        return int(self.offsets[row])

    def _file(self):
        if self._fh is None or self._pid != os.getpid():
            self._fh = open(self.rec_path, "rb")  # noqa: SIM115 - kept open for reads
            self._pid = os.getpid()
        return self._fh

    def read(self, key: int) -> bytes:
        """The payload of record ``key`` with multi-part records joined."""
        offset = self.offset(key)
        where = f"{self.rec_path}: record {key}"
        if offset >= self.size:
            raise BinfaceError(
                f"{self.idx_path}: record {key} has offset {offset}, past the end of "
                f"{self.rec_path.name} ({self.size} bytes)"
            )
        fh = self._file()
        parts: list[bytes] = []
        pos = offset
        while True:
            head = _read_at(fh, pos, 8)
            if len(head) < 8:
                raise BinfaceError(f"{where} at offset {pos}: file is truncated inside a chunk "
                                   f"header ({self.size} bytes)")
            magic, lrec = _CHUNK.unpack(head)
            if magic != MAGIC:
                raise BinfaceError(f"{where} at offset {pos}: bad magic 0x{magic:08X} (expected "
                                   f"0x{MAGIC:08X}; not RecordIO, or the .idx does not match)")
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            left = max(self.size - pos - 8, 0)
            if length > left:  # checked before reading: a buffered read allocates length
                raise BinfaceError(f"{where} at offset {pos}: file is truncated (chunk needs "
                                   f"{length} bytes, {left} left)")
            data = _read_at(fh, pos + 8, length)
            if len(data) < length:
                raise BinfaceError(f"{where} at offset {pos}: file is truncated (chunk needs "
                                   f"{length} bytes, {len(data)} left)")
            if not parts and cflag not in (0, 1):
                raise BinfaceError(f"{where} at offset {pos}: record starts with continuation "
                                   f"chunk (cflag {cflag})")
            if parts and cflag not in (2, 3):
                raise BinfaceError(f"{where} at offset {pos}: multi-part record is cut short "
                                   f"(cflag {cflag} where a middle or end part was expected)")
            parts.append(data)
            pos += 8 + length + (-length % 4)
            if cflag in (0, 3):
                break
        return MAGIC_BYTES.join(parts)

    def read_record(self, key: int) -> Record:
        """Record ``key`` split into header, labels and data."""
        return unpack_record(self.read(key), f"{self.rec_path}: record {key}")

    def read_header(self, key: int) -> IRHeader:
        """Only the 24-byte header of record ``key`` (fast, for scans)."""
        return self.read_record(key).header

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fh"] = None
        state["_pid"] = -1
        return state

    def __enter__(self) -> RecordReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        fh = self.__dict__.get("_fh")
        if fh is not None:
            fh.close()


def _read_at(fh, pos: int, n: int) -> bytes:
    fh.seek(pos)
    return fh.read(n)


# ----------------------------------------------------------------------------- face layout
class FaceRecordReader(RecordReader):
    """A RecordIO face set: insightface header record 0 if present, else every key.

    ``image_keys`` lists the image records; ``identity_ranges`` (``(C, 2)``,
    key ranges) is known when the header is there.
    """

    def __init__(self, path: str | os.PathLike, idx_path: str | os.PathLike | None = None):
        super().__init__(path, idx_path)
        self.has_header = False
        self.identity_ranges: np.ndarray | None = None
        self.image_keys = np.sort(self.keys)
        if len(self.keys) == 0:
            raise BinfaceError(f"{self.idx_path}: index is empty, no records")
        if 0 in self:
            rec0 = self.read_record(0)
            if rec0.header.flag >= 2 and not rec0.data:  # insightface header, not an image
                self._read_identities(rec0)
        self.close()

    def _read_identities(self, rec0: Record) -> None:
        where = f"{self.rec_path}: header record 0"
        id_start, id_end = (_key_label(v, where) for v in rec0.labels[:2])
        if not 1 <= id_start < id_end:
            raise BinfaceError(f"{where}: bad identity range ({id_start}, {id_end})"
                               + (": no identities" if id_start == id_end else ""))
        if id_start == 1:
            raise BinfaceError(f"{where}: the header lists no images (identity range "
                               f"({id_start}, {id_end}))")
        if id_end > len(self.keys):  # keys 0 .. id_end - 1 must all be there
            raise BinfaceError(f"{where}: identity range ({id_start}, {id_end}) needs "
                               f"{id_end} records but the .idx lists {len(self.keys)}")
        missing = [k for k in (id_start - 1, id_end - 1) if k > 0 and k not in self]
        if missing:
            raise BinfaceError(f"{where} points to record {missing[0]}, which the .idx lacks")
        ranges = np.empty((id_end - id_start, 2), dtype=np.int64)
        for i, key in enumerate(range(id_start, id_end)):
            rec = self.read_record(key)
            if rec.header.flag < 2:
                raise BinfaceError(f"{self.rec_path}: identity record {key} has no "
                                   "(first, end) image range")
            a, b = (_key_label(v, f"{self.rec_path}: identity record {key}")
                    for v in rec.labels[:2])
            if not 1 <= a <= b <= id_start:
                raise BinfaceError(f"{self.rec_path}: identity record {key} has image range "
                                   f"({a}, {b}) outside 1..{id_start - 1}")
            ranges[i] = (a, b)
        self.has_header = True
        self.identity_ranges = ranges
        self.image_keys = np.arange(1, id_start, dtype=np.int64)

    @property
    def num_images(self) -> int:
        return len(self.image_keys)

    @property
    def num_classes(self) -> int | None:
        """Classes from the header, else from the ``property`` file, else unknown.

        A ``property`` that claims more classes than there are images is refused:
        every class has an image, and the count sizes the classifier.
        """
        if self.identity_ranges is not None:
            return len(self.identity_ranges)
        if not hasattr(self, "_num_classes"):
            path = self.rec_path.parent / "property"
            prop = read_property(path)
            if prop and prop[0] > self.num_images:
                raise BinfaceError(f"{path}: claims {prop[0]} classes but {self.rec_path.name} "
                                   f"holds only {self.num_images} images")
            self._num_classes = prop[0] if prop else None
        return self._num_classes

    def image(self, key: int) -> tuple[int, bytes]:
        """(integer label, encoded image) of image record ``key``; a bad label is refused."""
        rec = self.read_record(key)
        value = float(rec.labels[0])
        classes = self.num_classes
        limit = classes if classes is not None else MAX_LABEL
        if not (math.isfinite(value) and value == int(value) and 0 <= value < limit):
            shown = f"{value:g}" if math.isfinite(value) else str(value)
            bound = (f"0..{classes - 1} ({classes} classes)" if classes is not None
                     else f"0..{MAX_LABEL - 1}")
            raise BinfaceError(f"{self.rec_path}: record {key} has label {shown}, expected an "
                               f"integer class in {bound}")
        return int(value), rec.data


def _key_label(value: float, where: str) -> int:
    """A record key stored as a float32 label: finite, integral, non-negative."""
    value = float(value)
    if not (math.isfinite(value) and value == int(value) and 0 <= value <= _INT64_MAX):
        raise BinfaceError(f"{where}: label {value} is not a record key (a non-negative "
                           "integer)")
    return int(value)


# ----------------------------------------------------------------------------- face writer
class FaceRecordWriter:
    """Write an insightface-style face set: header record 0, images, identity records.

    Images must arrive grouped by label in increasing order (label 0 first).
    Record 0 is written first as a fixed-size placeholder and filled in by
    ``close`` so that keys and offsets follow file order.
    """

    def __init__(self, prefix: str | os.PathLike, image_size: tuple[int, int] = (112, 112)):
        self.rec_path, self.idx_path = rec_paths(prefix)
        self.image_size = image_size
        self._w = RecordWriter(self.rec_path, self.idx_path)
        self._w.write(0, pack_record([0.0, 0.0], b"", id=0))
        self._key = 1
        self._label = -1
        self._firsts: list[int] = []  # first image key of every label

    def add(self, label: int, image: bytes) -> int:
        """Append one encoded image of identity ``label``; return its key."""
        label = int(label)
        if label < self._label:
            raise ValueError(f"images must be grouped by label: {label} after {self._label}")
        while self._label < label:
            self._label += 1
            self._firsts.append(self._key)
        key = self._key
        self._w.write(key, pack_record(float(label), image, id=key))
        self._key += 1
        return key

    @property
    def num_images(self) -> int:
        return self._key - 1

    @property
    def num_classes(self) -> int:
        return self._label + 1

    def close(self) -> None:
        """Write identity records and the real header record 0, then the ``property`` file."""
        if self._w.closed:
            return
        id_start = self._key
        ends = self._firsts[1:] + [id_start]
        for i, (a, b) in enumerate(zip(self._firsts, ends, strict=True)):
            self._w.write(id_start + i, pack_record([float(a), float(b)], b"", id=id_start + i))
        id_end = id_start + len(self._firsts)
        header = encode_chunks(pack_record([float(id_start), float(id_end)], b"", id=0))
        rec = self._w._rec
        end = rec.tell()
        rec.seek(0)
        rec.write(header)  # same size as the placeholder: two float32 labels
        rec.seek(end)
        self._w.close()
        write_property(self.rec_path.parent / "property", self.num_classes, self.image_size)

    def abort(self) -> None:
        """Drop the half-written files; files already at the paths stay as they were."""
        self._w.abort()

    def __enter__(self) -> FaceRecordWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:  # an error or an interrupt: leave no file that looks complete
            self.abort()


def write_face_rec(
    prefix: str | os.PathLike,
    items: Iterable[tuple[int, bytes]],
    image_size: tuple[int, int] = (112, 112),
) -> tuple[int, int]:
    """Write ``(label, encoded image)`` pairs; return (num_images, num_classes)."""
    with FaceRecordWriter(prefix, image_size) as w:
        for label, image in items:
            w.add(label, image)
    return w.num_images, w.num_classes


def write_property(path: str | os.PathLike, num_classes: int, size: tuple[int, int]) -> None:
    """insightface's ``property`` file: ``num_classes,H,W`` (written atomically)."""
    write_text(path, f"{num_classes},{size[0]},{size[1]}\n")


def read_property(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """(num_classes, H, W) from a ``property`` file, or None if there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    raw = read_bytes(path, "property file not found")
    text = raw[:200].decode("ascii", errors="replace").strip()
    try:
        if len(raw) > 200:
            raise ValueError
        n, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise BinfaceError(f"{path}: expected 'num_classes,H,W', got {text[:40]!r}") from None
    if n < 1 or not (1 <= h <= 1 << 16 and 1 <= w <= 1 << 16):
        raise BinfaceError(f"{path}: bad values in 'num_classes,H,W': {text[:40]!r}")
    return n, h, w
