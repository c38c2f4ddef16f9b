"""Property-based fuzzing of the RecordIO record + index parser and the pack loader.

Random mutations of small valid files (byte flips, truncations, insertions,
deletions, crafted header words and index tokens, crafted pack structures) must
give either a well-formed result or a ``BinfaceError`` whose message is one line
naming the file, never another exception.

Bounds: the properties run in a child process whose address space is limited
with ``RLIMIT_AS`` to its size after imports plus ``MEMORY_HEADROOM`` (512 MiB),
so a parser that tries to allocate more fails the run with ``MemoryError``; each
example must finish within ``DEADLINE_MS`` (2 s, hypothesis' deadline). Examples
are derandomized (fixed seed); ``benchmarks/fuzz_data.py`` runs the same
properties with more examples.

Run directly: ``python tests/test_fuzz_data.py --examples 200``.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import resource
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = 40  # per property in the test run
MEMORY_HEADROOM = 512 << 20
DEADLINE_MS = 2000

# ----------------------------------------------------------------------------- fixtures
F32 = [float("nan"), float("inf"), -float("inf"), -1.0, -3.0, 0.5, 1e9, 2.0**24, 2.0**40, 3e38]
WORDS = ([struct.pack("<I", v) for v in (0, 1, 3, 0x7FFFFFFF, 0xFFFFFFFF, 0xCED7230A,
                                          (1 << 29) - 1, 1 << 29 | 8, 2 << 29 | 4, 3 << 29)]
         + [struct.pack("<f", v) for v in F32]
         + [struct.pack("<Q", v) for v in (0, 1 << 40, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)])
IDX_TOKENS = [b"0", b"-1", b"-3", b"4", b"9223372036854775807", b"9223372036854775808",
              b"99999999999999999999999", b"-99999999999999999999", b"1e5", b"0x10", b"nan",
              b"", b"7\t8", b"\xff\xfe", b"1_0", b"+5", b"4294967296", b"1" * 5000]


def tiny_jpeg(colour, size=16) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def png_claiming(width: int, height: int, bits: int = 8, colour: int = 2) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, bits, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def valid_rec(folder: Path) -> tuple[bytes, bytes, list[int]]:
    """A small insightface set (header, 4 images of 2 classes, identities) and field offsets."""
    from binface.data.recordio import FaceRecordWriter

    with FaceRecordWriter(folder / "v") as w:
        for i, label in enumerate((0, 0, 1, 1)):
            w.add(label, tiny_jpeg((60 * i, 80, 200)))
    rec, idx = (folder / "v.rec").read_bytes(), (folder / "v.idx").read_bytes()
    offsets = [int(line.split()[1]) for line in idx.splitlines()]
    fields = []  # lrec, flag, label, id and the first two array labels of every record
    for off in offsets:
        fields += [off + 4, off + 8, off + 12, off + 16, off + 32, off + 36]
    return rec, idx, fields


def valid_pack(protocol: int = 4) -> bytes:
    bins = [tiny_jpeg((200, 10 * i, 30)) for i in range(4)]
    return pickle.dumps((bins, [True, False]), protocol=protocol)


# ----------------------------------------------------------------------------- mutations
def _op():
    pos = st.integers(0, 1 << 20)
    return st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(1, 255)),
        st.tuples(st.just("truncate"), pos),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=12)),
        st.tuples(st.just("delete"), pos, st.integers(1, 12)),
        st.tuples(st.just("word"), pos, st.sampled_from(WORDS)),
        st.tuples(st.just("field"), st.integers(0, 1000), st.sampled_from(WORDS)),
    )


MUTATIONS = st.lists(_op(), max_size=4)


def mutate(data: bytes, ops: list[tuple], fields: list[int] = ()) -> bytes:
    """Apply byte-level mutations; positions wrap around the current length."""
    buf = bytearray(data)
    for op in ops:
        kind, n = op[0], len(buf)
        if kind == "field":
            if fields:
                at = fields[op[1] % len(fields)]
                buf[at:at + len(op[2])] = op[2]
            continue
        at = op[1] % (n + 1)
        if kind == "flip" and n:
            buf[at % n] ^= op[2]
        elif kind == "truncate":
            del buf[at:]
        elif kind == "insert":
            buf[at:at] = op[2]
        elif kind == "delete":
            del buf[at:at + op[2]]
        elif kind == "word":
            buf[at:at + len(op[2])] = op[2]
    return bytes(buf)


IDX_OPS = st.lists(st.one_of(
    st.tuples(st.just("token"), st.integers(0, 100), st.integers(0, 1),
              st.sampled_from(IDX_TOKENS)),
    st.tuples(st.just("dup"), st.integers(0, 100)),
    st.tuples(st.just("drop"), st.integers(0, 100)),
), max_size=3)


def mutate_idx(idx: bytes, ops: list[tuple]) -> bytes:
    lines = [line.split(b"\t") for line in idx.splitlines()]
    for op in ops:
        if not lines:
            break
        i = op[1] % len(lines)
        if op[0] == "token":
            lines[i] = list(lines[i]) + [b""] * (2 - len(lines[i]))
            lines[i][op[2]] = op[3]
        elif op[0] == "dup":
            lines.insert(i, lines[i])
        else:
            del lines[i]
    return b"".join(b"\t".join(parts) + b"\n" for parts in lines)


# ----------------------------------------------------------------------------- checks
def one_line(exc: Exception, name: str) -> None:
    text = str(exc)
    assert text and "\n" not in text and "\r" not in text, repr(text)
    assert name in text, f"{name!r} not named in {text!r}"


def parse_rec(rec: bytes, idx: bytes, prop: bytes | None = None) -> None:
    """Open and read everything; a well-formed result or a one-line BinfaceError."""
    from binface.data.images import decode_image
    from binface.data.recordio import FaceRecordReader
    from binface.errors import BinfaceError

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "f.rec").write_bytes(rec)
        (d / "f.idx").write_bytes(idx)
        if prop is not None:
            (d / "property").write_bytes(prop)
        try:
            r = FaceRecordReader(d / "f.rec")
            classes = r.num_classes
            assert classes is None or 1 <= classes <= max(r.num_images, 1)
            if r.identity_ranges is not None:
                assert r.identity_ranges.shape == (classes, 2)
            for key in r.keys[:64]:
                r.read_record(int(key))
            for key in r.image_keys[:16]:
                label, data = r.image(int(key))
                assert isinstance(label, int) and label >= 0
                assert classes is None or label < classes
                img = decode_image(data, f"{r.rec_path}: record {key}")
                assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
            r.close()
        except BinfaceError as exc:  # names f.rec, f.idx or the property file
            one_line(exc, "property" if "property" in str(exc) else "f.")


def parse_pack(data: bytes) -> None:
    from binface.data.verification import load_pack
    from binface.errors import BinfaceError

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.bin"
        path.write_bytes(data)
        try:
            images, same = load_pack(path)
        except BinfaceError as exc:
            one_line(exc, "p.bin")
            return
        assert images.dtype == np.uint8 and images.shape[1:] == (112, 112, 3)
        assert same.dtype == bool and len(images) == 2 * len(same) >= 2


# ----------------------------------------------------------------------------- properties
def _entry():
    arrays = st.sampled_from([
        np.zeros((0,), np.uint8), np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8),
        np.zeros((4, 4, 3), np.float32), np.zeros((0, 5, 3), np.uint8),
        np.frombuffer(tiny_jpeg((1, 2, 3)), np.uint8),
    ])
    return st.one_of(
        st.just("jpeg"), st.binary(max_size=40), arrays, st.none(), st.integers(-3, 3),
        st.text(max_size=8),
        st.tuples(st.integers(0, 1 << 16), st.integers(0, 1 << 16),
                  st.sampled_from([8, 16]), st.sampled_from([0, 2])),
    )


@st.composite
def crafted_packs(draw) -> bytes:
    """Pack pickles of odd structure: entries, labels, sharing and protocol drawn."""
    jpeg = tiny_jpeg((9, 99, 199))
    entries = []
    for e in draw(st.lists(_entry(), max_size=6)):
        if isinstance(e, tuple):  # a PNG header claiming (w, h, bits, colour type)
            e = png_claiming(*e)
        entries.append(jpeg if isinstance(e, str) and e == "jpeg" else e)
    entries *= draw(st.sampled_from([1, 1, 2, 500]))  # memo-shared repeats
    labels = draw(st.lists(st.sampled_from([True, False, 0, 1, 2, -1, 0.5, None, "x"]),
                           max_size=4))
    labels = labels * max(1, len(entries) // max(2 * len(labels), 1))
    if draw(st.booleans()):
        labels = np.array([bool(v) if isinstance(v, bool) else 0 for v in labels])
    shape = draw(st.sampled_from(["pair", "list3", "dict", "bare"]))
    obj = {"pair": (entries, labels), "list3": [entries, labels, 1], "dict": {"b": entries},
           "bare": entries}[shape]
    return pickle.dumps(obj, protocol=draw(st.sampled_from([2, 4, 5])))


def properties(examples: int, folder: Path) -> list:
    """The hypothesis-wrapped properties, each a callable that runs its search."""
    rec, idx, fields = valid_rec(folder)
    packs = {p: valid_pack(p) for p in (2, 4, 5)}
    common = dict(max_examples=examples, derandomize=True, deadline=DEADLINE_MS,
                  database=None, suppress_health_check=list(HealthCheck), print_blob=True)

    @settings(**common)
    @given(MUTATIONS, MUTATIONS, IDX_OPS, st.sampled_from([None, b"2,112,112\n",
                                                          b"1000000000000,112,112\n",
                                                          b"-1,0,0", b"\xff"]))
    def fuzz_rec(rec_ops, idx_ops, idx_text_ops, prop):
        parse_rec(mutate(rec, rec_ops, fields), mutate_idx(mutate(idx, idx_ops), idx_text_ops),
                  prop)

    @settings(**common)
    @given(st.sampled_from([2, 4, 5]), MUTATIONS)
    def fuzz_pack_bytes(protocol, ops):
        parse_pack(mutate(packs[protocol], ops))

    @settings(**common)
    @given(crafted_packs(), MUTATIONS)
    def fuzz_pack_crafted(data, ops):
        parse_pack(mutate(data, ops[:1]))

    return [fuzz_rec, fuzz_pack_bytes, fuzz_pack_crafted]


def limit_memory(headroom: int = MEMORY_HEADROOM) -> int:
    """Cap this process' address space at its current size plus ``headroom``; the cap."""
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    cap = vm + headroom
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    return cap


def run(examples: int) -> None:
    """Check the parsers as they are, then run every property under the memory cap."""
    import PIL.Image  # noqa: F401 - imported before the cap is measured

    import binface.data.summary  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        rec, idx, _ = valid_rec(Path(tmp))
        parse_rec(rec, idx)  # the valid files load (and the deadline is not all import time)
        for p in (2, 4, 5):
            parse_pack(valid_pack(p))
        cap = limit_memory()
        print(f"address space capped at {cap >> 20} MiB; {examples} examples per property")
        for prop in properties(examples, Path(tmp)):
            prop()
            print(f"{prop.__name__}: ok")


# ----------------------------------------------------------------------------- pytest
def test_valid_files_give_the_right_result(tmp_path):
    from binface.data.recordio import FaceRecordReader
    from binface.data.verification import load_pack

    rec, idx, _ = valid_rec(tmp_path)
    r = FaceRecordReader(tmp_path / "v.rec")
    assert r.num_classes == 2 and [r.image(int(k))[0] for k in r.image_keys] == [0, 0, 1, 1]
    for p in (2, 4, 5):
        (tmp_path / "p.bin").write_bytes(valid_pack(p))
        images, same = load_pack(tmp_path / "p.bin")
        assert images.shape == (4, 112, 112, 3) and same.tolist() == [True, False]
    assert mutate(rec, []) == rec and mutate_idx(idx, []) == idx


def test_fuzz_parsers_in_a_memory_capped_process():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, __file__, "--examples", str(EXAMPLES)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.stdout.count(": ok") == 3


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=EXAMPLES, help="examples per property")
    run(ap.parse_args().examples)
