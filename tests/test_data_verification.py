"""Verification packs: insightface-compatible writing, safe loading, bad packs, pairs files."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct

import numpy as np
import pytest
from PIL import Image

from binface.data.folder import pairs_pack
from binface.data.verification import load_pack, read_pack_raw, write_pack
from binface.errors import BinfaceError


def jpeg(colour, size=112) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def py2_pickle(bins: list[bytes], issame: list[bool]) -> bytes:
    """What Python 2 wrote: protocol 2, images as BINSTRING (py2 str), bools as NEWTRUE."""
    out = bytearray(b"\x80\x02(")  # PROTO 2, MARK
    out += b"("
    for b in bins:
        out += b"T" + struct.pack("<i", len(b)) + b
    out += b"l"  # LIST from mark
    out += b"("
    for s in issame:
        out += b"\x88" if s else b"\x89"
    out += b"l"
    out += b"t."  # TUPLE from the first mark, STOP
    return bytes(out)


def test_write_then_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 112, 112, 3), dtype=np.uint8)
    images[:] = images.mean(axis=(1, 2), keepdims=True).astype(np.uint8)  # flat, JPEG-friendly
    write_pack(tmp_path / "p.bin", images, [True, False, True], quality=100)
    got, same = load_pack(tmp_path / "p.bin")
    assert got.shape == (6, 112, 112, 3) and got.dtype == np.uint8
    assert same.dtype == bool and same.tolist() == [True, False, True]
    assert np.abs(got.astype(int) - images.astype(int)).max() <= 3


def test_written_pack_is_what_insightface_loads(tmp_path):
    bins = [jpeg((200, 10, 10)), jpeg((10, 200, 10))]
    write_pack(tmp_path / "p.bin", bins, [True])
    raw = (tmp_path / "p.bin").read_bytes()
    protocol = max(op.proto for op, _, _ in pickletools.genops(raw))
    assert protocol >= 2
    with open(tmp_path / "p.bin", "rb") as f:  # insightface: pickle.load(f, encoding="bytes")
        loaded_bins, loaded_same = pickle.load(f, encoding="bytes")
    assert loaded_bins == bins and all(type(b) is bytes for b in loaded_bins)
    assert loaded_same == [True] and type(loaded_same[0]) is bool
    img = Image.open(io.BytesIO(loaded_bins[0]))
    assert img.size == (112, 112) and img.format == "JPEG"


def test_python2_pack_and_numpy_entries(tmp_path):
    a, b = jpeg((255, 0, 0)), jpeg((0, 0, 255))
    (tmp_path / "py2.bin").write_bytes(py2_pickle([a, b, b, a], [False, True]))
    images, same = load_pack(tmp_path / "py2.bin")
    assert images.shape == (4, 112, 112, 3) and same.tolist() == [False, True]
    assert images[0, 50, 50, 0] > 200 and images[1, 50, 50, 2] > 200
    # numpy uint8 buffers (some packs) and decoded arrays, in any protocol
    decoded = np.full((112, 112, 3), 77, np.uint8)
    for proto in (2, 4, 5):
        data = ([np.frombuffer(a, np.uint8), decoded], np.array([True]))
        (tmp_path / "np.bin").write_bytes(pickle.dumps(data, protocol=proto))
        images, same = load_pack(tmp_path / "np.bin")
        assert images[0, 10, 10, 0] > 200 and (images[1] == 77).all() and same.tolist() == [True]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilEval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("evil", [_Evil, _EvilEval])
def test_malicious_pack_is_refused_and_nothing_runs(tmp_path, evil):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(([jpeg((1, 1, 1)), evil(marker)], [True]), protocol=2)
    (tmp_path / "evil.bin").write_bytes(payload)
    with pytest.raises(BinfaceError, match=r"evil\.bin: refused to load.*nothing was run"):
        load_pack(tmp_path / "evil.bin")
    assert not marker.exists()
    # a plain pickle.load would have run it: the test payload is live
    pickle.loads(payload)
    assert marker.exists()


def test_odd_images_wrong_labels_corrupt_entry(tmp_path):
    good = jpeg((9, 9, 9))
    write_pack(tmp_path / "ok.bin", [good, good], [True])
    (tmp_path / "odd.bin").write_bytes(pickle.dumps(([good, good, good], [True])))
    with pytest.raises(BinfaceError, match=r"odd\.bin: odd number of images \(3\).*entry 2"):
        load_pack(tmp_path / "odd.bin")
    (tmp_path / "len.bin").write_bytes(pickle.dumps(([good] * 4, [True, False, True])))
    with pytest.raises(BinfaceError, match=r"len\.bin: 4 images make 2 pairs but the label list "
                                           r"has 3 entries"):
        load_pack(tmp_path / "len.bin")
    (tmp_path / "bad.bin").write_bytes(pickle.dumps(([good, good, good[:200], good],
                                                     [True, False])))
    with pytest.raises(BinfaceError, match=r"bad\.bin: entry 2 \(pair 1\): corrupt image"):
        load_pack(tmp_path / "bad.bin")
    (tmp_path / "junk.bin").write_bytes(b"definitely not a pickle")
    with pytest.raises(BinfaceError, match=r"junk\.bin: not a verification pack"):
        load_pack(tmp_path / "junk.bin")
    (tmp_path / "shape.bin").write_bytes(pickle.dumps({"bins": []}))
    with pytest.raises(BinfaceError, match=r"shape\.bin: expected a pickled \(bins, issame"):
        read_pack_raw(tmp_path / "shape.bin")


def _lfw_folder(root, sizes):
    for name, n in sizes.items():
        (root / name).mkdir(parents=True)
        for i in range(1, n + 1):
            size = 112 if i % 2 else 150  # every second image needs a resize
            colour = (len(name) * 25, 20 * i, 90)
            Image.new("RGB", (size, size), colour).save(root / name / f"{name}_{i:04d}.jpg")


def test_pairs_file_to_pack(tmp_path):
    _lfw_folder(tmp_path / "lfw", {"Ann_A": 2, "Bob_B": 3, "Cy_C": 1})
    (tmp_path / "pairs.txt").write_text(
        "2\t1\nAnn_A\t1\t2\nBob_B\t1\t3\nAnn_A\t2\tCy_C\t1\nBob_B\t2\tCy_C\t1\n")
    res = pairs_pack(tmp_path / "lfw", tmp_path / "pairs.txt", tmp_path / "out.bin",
                     progress=False)
    assert res.images == 8 and res.classes == 3 and res.resized == 3
    images, same = load_pack(tmp_path / "out.bin")
    assert images.shape == (8, 112, 112, 3) and same.tolist() == [True, True, False, False]
    bins, _ = read_pack_raw(tmp_path / "out.bin")
    assert bins[0] == (tmp_path / "lfw/Ann_A/Ann_A_0001.jpg").read_bytes()  # 112px JPEG kept


def test_pairs_file_errors(tmp_path):
    _lfw_folder(tmp_path / "lfw", {"Ann_A": 1})
    (tmp_path / "bad.txt").write_text("Ann_A\t1\tbanana\n")
    with pytest.raises(BinfaceError, match=r"bad\.txt: line 1: expected 'name n1 n2'"):
        pairs_pack(tmp_path / "lfw", tmp_path / "bad.txt", tmp_path / "o.bin", progress=False)
    (tmp_path / "miss.txt").write_text("10\t300\nAnn_A\t1\t7\n")
    with pytest.raises(BinfaceError, match=r"miss\.txt: line 2: no image Ann_A/Ann_A_0007"):
        pairs_pack(tmp_path / "lfw", tmp_path / "miss.txt", tmp_path / "o.bin", progress=False)
