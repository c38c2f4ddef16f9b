"""Image folders -> RecordIO training sets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from binface.data.folder import pack_folder
from binface.data.images import decode_image
from binface.data.recordio import FaceRecordReader, read_property
from binface.errors import BinfaceError


def make_folder(root, spec):
    """spec: {identity: [(size, colour), ...]}"""
    for name, images in spec.items():
        (root / name).mkdir(parents=True)
        for i, (size, colour) in enumerate(images):
            ext = "png" if i % 2 else "jpg"
            Image.new("RGB", (size, size), colour).save(root / name / f"{i:03d}.{ext}")


def test_pack_folder_round_trip(tmp_path):
    make_folder(tmp_path / "faces", {
        "bob": [(112, (255, 0, 0)), (112, (250, 0, 0))],
        "alice": [(200, (0, 255, 0))],
        "carol": [(112, (0, 0, 255)), (64, (0, 0, 250)), (112, (0, 0, 245))],
    })
    (tmp_path / "faces" / "notes.txt").write_text("ignored")
    res = pack_folder(tmp_path / "faces", tmp_path / "out" / "train", progress=False)
    assert (res.images, res.classes, res.resized, res.skipped) == (6, 3, 2, 0)
    r = FaceRecordReader(tmp_path / "out" / "train.rec")
    assert r.has_header and r.num_classes == 3 and r.identity_ranges.tolist() == [
        [1, 2], [2, 4], [4, 7]]  # alice, bob, carol (sorted names)
    assert read_property(tmp_path / "out" / "property") == (3, 112, 112)
    labels, greens = [], []
    for key in r.image_keys:
        label, data = r.image(int(key))
        img = decode_image(data, "x")
        assert img.shape == (112, 112, 3)
        labels.append(label)
        greens.append(int(img[50, 50, 1]))
    assert labels == [0, 1, 1, 2, 2, 2]
    assert greens[0] > 200 and max(greens[1:]) < 30
    first = (tmp_path / "faces" / "bob" / "000.jpg").read_bytes()
    assert r.image(2)[1] == first  # an aligned 112x112 JPEG is stored as is


def test_empty_folder(tmp_path):
    (tmp_path / "empty" / "someone").mkdir(parents=True)
    with pytest.raises(BinfaceError, match=r"empty: no identity subfolders with images"):
        pack_folder(tmp_path / "empty", tmp_path / "o", progress=False)
    Image.new("RGB", (112, 112)).save(tmp_path / "empty" / "loose.jpg")
    with pytest.raises(BinfaceError, match="one subfolder per identity"):
        pack_folder(tmp_path / "empty", tmp_path / "o", progress=False)
    with pytest.raises(BinfaceError, match="not a directory"):
        pack_folder(tmp_path / "missing", tmp_path / "o", progress=False)


def test_corrupt_image_stops_or_is_skipped_with_warning(tmp_path):
    make_folder(tmp_path / "f", {"a": [(112, (1, 2, 3))], "b": [(112, (3, 2, 1))]})
    bad = tmp_path / "f" / "b" / "zz.jpg"
    bad.write_bytes((tmp_path / "f" / "a" / "000.jpg").read_bytes()[:300])
    with pytest.raises(BinfaceError, match=r"b/zz\.jpg: corrupt image"):
        pack_folder(tmp_path / "f", tmp_path / "o1", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = pack_folder(tmp_path / "f", tmp_path / "o2", skip_bad=True, progress=False)
    assert (res.images, res.classes, res.skipped) == (2, 2, 1)
    assert any("zz.jpg" in str(c.message) for c in caught)
    r = FaceRecordReader(tmp_path / "o2.rec")
    assert [r.image(int(k))[0] for k in r.image_keys] == [0, 1]
    assert np.asarray(r.identity_ranges).shape == (2, 2)


def test_failed_pack_leaves_no_rec(tmp_path):
    make_folder(tmp_path / "f", {"a": [(112, (1, 2, 3))]})
    (tmp_path / "f" / "a" / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(BinfaceError, match=r"bad\.png"):
        pack_folder(tmp_path / "f", tmp_path / "o", progress=False)
    assert not (tmp_path / "o.rec").exists() and not (tmp_path / "o.idx").exists()
