"""The packed model file (``.bfp``): a safetensors file whose metadata holds the graph.

Layout (format version 2), readable by any safetensors reader and, here, by numpy
alone so that deployment needs no torch:

- 8 bytes: little-endian uint64 ``L``, the length of the JSON header;
- ``L`` bytes: the JSON header, UTF-8, padded with spaces to a multiple of 8. It
  maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}``
  (byte offsets into the data section, back to back, no holes) and holds
  ``"__metadata__"``, a dict of strings:

  - ``"format"``: ``"binface-packed"``;
  - ``"version"``: ``"2"`` (a reader refuses any other version);
  - ``"graph"``: the graph as JSON (ops, attributes and tensor names; the op set
    is ``binface.runtime.ops.table``);
  - ``"sha256"``: hex digest (:func:`digest`) of the graph, the tensor table and
    the data section, so a corrupt file is refused (version 1 covered the data only);
- the data section: each tensor's bytes in C order, little-endian.

Binary weights are stored packed: ``uint64`` words, bit ``i`` of a word is input
channel ``64 w + i`` of a group, bit set = -1 (the sign bit), so a layer's dot
product is ``K - 2 popcount(x xor w)``. docs/packed-format.md specifies the graph
and every op's tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path

import numpy as np

from binface.fileio import atomic_write
from binface.runtime.errors import PackedFormatError
from binface.runtime.ops.layout import aligned_copy

FORMAT = "binface-packed"
VERSION = 2
SUFFIX = ".bfp"

_DTYPES = {
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
    "U8": np.dtype("u1"),
}
_CODES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 16 * 1024 * 1024  # the zoo's largest header is well under 1 MiB


def digest(graph: str, table: dict, body: bytes | memoryview) -> str:
    """The ``sha256`` of a version 2 file: graph JSON, tensor table and data, in that order.

    ``sha256(graph UTF-8 || 0x00 || table || 0x00 || data)``, where ``table`` is the
    header without ``__metadata__`` as JSON with sorted keys and no spaces
    (``json.dumps(table, sort_keys=True, separators=(",", ":"))``, ASCII).
    """
    h = hashlib.sha256(graph.encode())
    h.update(b"\0")
    h.update(json.dumps(table, sort_keys=True, separators=(",", ":")).encode())
    h.update(b"\0")
    h.update(body)
    return h.hexdigest()


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def write_bfp(path: str | os.PathLike, graph: dict, tensors: dict[str, np.ndarray]) -> None:
    """Write ``graph`` (JSON-serialisable) and ``tensors`` to ``path``."""
    header: dict = {}
    chunks: list[bytes] = []
    offset = 0
    # widest dtypes first: every tensor then starts at a multiple of its item size, so a
    # reader can use the bytes in place (no holes, as safetensors requires)
    for name in sorted(tensors, key=lambda k: (-np.asarray(tensors[k]).dtype.itemsize, k)):
        arr = np.ascontiguousarray(tensors[name])
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        code = _CODES.get(np.dtype(dt))
        if code is None:
            raise TypeError(f"tensor {name!r} has unsupported dtype {arr.dtype}")
        data = arr.astype(_DTYPES[code], copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    body = b"".join(chunks)
    text = json.dumps(graph, separators=(",", ":"))
    header["__metadata__"] = {"format": FORMAT, "version": str(VERSION), "graph": text,
                              "sha256": digest(text, header, body)}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_write(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.write(body)


def read_bfp(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a ``.bfp`` file: ``(graph, tensors)``; any defect is one ``PackedFormatError``."""
    p = Path(path)
    try:
        with open(p, "rb") as f:  # a writable buffer: tensors become views of it, no copies
            blob = bytearray(os.fstat(f.fileno()).st_size)
            f.readinto(blob)
    except FileNotFoundError:
        raise PackedFormatError(f"{p}: no such file") from None
    except OSError as exc:
        raise PackedFormatError(f"{p}: cannot read ({exc.strerror})") from None
    return parse_bfp(blob, str(p))


def parse_bfp(blob: bytes | bytearray, where: str = "<bytes>"
              ) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse the bytes of a ``.bfp`` file (see :func:`read_bfp`)."""
    bad = f"{where}: not a binface packed model (.bfp)"
    if len(blob) < 8:
        raise PackedFormatError(f"{bad}: file too short ({len(blob)} bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise PackedFormatError(f"{bad}: header length {n} does not fit the file")
    if n > _MAX_HEADER:
        raise PackedFormatError(f"{where}: the header of {n} bytes is beyond the limit of "
                                f"{_MAX_HEADER} bytes")
    try:
        header = json.loads(blob[8:8 + n].decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise PackedFormatError(f"{bad}: the header is not valid JSON") from None
    meta = header.pop("__metadata__", None) if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PackedFormatError(f"{bad}: no binface-packed metadata")
    version = meta.get("version")
    if version != str(VERSION):
        shown = version if isinstance(version, str) and len(version) < 20 else "?"
        raise PackedFormatError(
            f"{where}: packed format version {shown!s} is not supported by this binface "
            f"(it reads version {VERSION}); re-export the model with `binface export`")
    body = memoryview(blob)[8 + n:]
    text = meta.get("graph")
    try:
        ok = isinstance(text, str) and meta.get("sha256") == digest(text, header, body)
    except (ValueError, RecursionError, UnicodeEncodeError):
        ok = False
    if not ok:
        raise PackedFormatError(f"{where}: corrupt packed model (checksum mismatch); "
                                "re-export or re-copy the file")
    try:
        graph = json.loads(text)
    except (ValueError, RecursionError):
        raise PackedFormatError(f"{where}: corrupt packed model (graph is not JSON)") from None
    if not isinstance(graph, dict):
        raise PackedFormatError(f"{where}: corrupt packed model (the graph is a JSON "
                                f"{type(graph).__name__}, not an object)")
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        try:
            dt = _DTYPES[info["dtype"]]
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
            if not all(_is_count(v) for v in (*shape, begin, end)):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise PackedFormatError(f"{where}: corrupt packed model (tensor {name!r})") from None
        count = math.prod(shape)  # a Python int: no wrap-around
        if not 0 <= begin <= end <= len(body) or end - begin != count * dt.itemsize:
            raise PackedFormatError(f"{where}: corrupt packed model (tensor {name!r} is "
                                    "out of the data section)")
        # a copy of its own: native order, writable, on a cache line (ops keep views)
        tensors[name] = aligned_copy(np.frombuffer(body, dt, count, begin).reshape(shape))
    return graph, tensors
