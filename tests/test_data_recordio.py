"""RecordIO: reference layout built independently with struct, round trips, bad files."""

from __future__ import annotations

import io
import pickle
import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from binface.data.dataset import RecordDataset
from binface.data.recordio import (
    FaceRecordReader,
    FaceRecordWriter,
    RecordReader,
    RecordWriter,
    pack_record,
    unpack_record,
)
from binface.errors import BinfaceError

MAGIC = struct.pack("<I", 0xCED7230A)


def chunk(cflag: int, data: bytes) -> bytes:
    """One chunk as the format describes it: magic, lrec, data, zero pad to 4 bytes."""
    lrec = (cflag << 29) | len(data)
    return MAGIC + struct.pack("<I", lrec) + data + b"\0" * (-len(data) % 4)


def header(flag: int, label: float, id_: int, id2: int = 0) -> bytes:
    return struct.pack("<IfQQ", flag, label, id_, id2)


def jpeg(colour: tuple[int, int, int], size: int = 112) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# ----------------------------------------------------------------------------- layout
def test_plain_record_layout_matches_reference(tmp_path):
    rec = tmp_path / "a.rec"
    payload = pack_record(7.0, b"hello", id=3)
    assert payload == header(0, 7.0, 3) + b"hello"
    with RecordWriter(rec) as w:
        w.write(0, payload)
        w.write(5, pack_record([1.0, 2.5], b"xy", id=5))
    expected0 = chunk(0, header(0, 7.0, 3) + b"hello")
    expected1 = chunk(0, header(2, 0.0, 5) + struct.pack("<2f", 1.0, 2.5) + b"xy")
    assert rec.read_bytes() == expected0 + expected1
    assert (tmp_path / "a.idx").read_text() == f"0\t0\n5\t{len(expected0)}\n"


def test_multipart_record_layout_and_round_trip(tmp_path):
    # magic at aligned offsets 28, 40, 52 and at the very end; the copy at 46 is unaligned
    body = b"ABCD" + MAGIC + b"EFGHIJKL" + MAGIC + b"Zq" + MAGIC + b"QQ" + MAGIC + b"tail" + MAGIC
    payload = header(0, 1.0, 9) + body
    offsets = [i for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == MAGIC]
    assert offsets == [28, 40, 52, 60]
    parts = [payload[:28], payload[32:40], payload[44:52], payload[56:60], payload[64:]]
    expected = (chunk(1, parts[0]) + chunk(2, parts[1]) + chunk(2, parts[2])
                + chunk(2, parts[3]) + chunk(3, parts[4]))
    assert parts[4] == b""
    rec = tmp_path / "m.rec"
    with RecordWriter(rec) as w:
        w.write(0, payload)
        w.write(1, b"odd")  # no magic, padded
    assert rec.read_bytes() == expected + chunk(0, b"odd")
    r = RecordReader(rec)
    assert r.read(0) == payload
    assert r.read(1) == b"odd"
    record = r.read_record(0)
    assert record.data == body and record.label == 1.0 and record.header.id == 9


def test_unaligned_magic_is_not_split(tmp_path):
    payload = b"xx" + MAGIC + b"yy"
    with RecordWriter(tmp_path / "u.rec") as w:
        w.write(0, payload)
    assert (tmp_path / "u.rec").read_bytes() == chunk(0, payload)


def test_round_trip_random_payloads(tmp_path):
    rng = np.random.default_rng(0)
    payloads = {}
    with RecordWriter(tmp_path / "r.rec") as w:
        for key in range(40):
            raw = bytearray(rng.bytes(int(rng.integers(0, 300))))
            for _ in range(int(rng.integers(0, 4))):  # plant aligned magic values
                if len(raw) >= 4:
                    at = int(rng.integers(0, len(raw) // 4)) * 4
                    raw[at:at + 4] = MAGIC
            payloads[key * 3] = bytes(raw)
            w.write(key * 3, bytes(raw))
    r = RecordReader(tmp_path / "r.rec")
    for key in rng.permutation(list(payloads)):
        assert r.read(int(key)) == payloads[int(key)]


def test_insightface_header_layout(tmp_path):
    imgs = [(0, b"img-a"), (0, b"img-bb"), (1, b"imgc" + MAGIC)]
    with FaceRecordWriter(tmp_path / "train") as w:
        for label, data in imgs:
            w.add(label, data)
    # expected file: header 0, images 1..3, identity records 4..5
    records = [
        header(2, 0.0, 0) + struct.pack("<2f", 4.0, 6.0),
        header(0, 0.0, 1) + b"img-a",
        header(0, 0.0, 2) + b"img-bb",
        header(0, 1.0, 3) + b"imgc" + MAGIC,
        header(2, 0.0, 4) + struct.pack("<2f", 1.0, 3.0),
        header(2, 0.0, 5) + struct.pack("<2f", 3.0, 4.0),
    ]
    expected, idx, pos = b"", "", 0
    for key, payload in enumerate(records):
        if payload.endswith(MAGIC):  # the trailing magic splits into a start and an empty end
            body = chunk(1, payload[:-4]) + chunk(3, b"")
        else:
            body = chunk(0, payload)
        idx += f"{key}\t{pos}\n"
        expected += body
        pos += len(body)
    assert (tmp_path / "train.rec").read_bytes() == expected
    assert (tmp_path / "train.idx").read_text() == idx
    assert (tmp_path / "property").read_text().strip() == "2,112,112"

    r = FaceRecordReader(tmp_path / "train.rec")
    assert r.has_header and r.num_images == 3 and r.num_classes == 2
    assert r.identity_ranges.tolist() == [[1, 3], [3, 4]]
    assert [r.image(k) for k in r.image_keys] == [(0, b"img-a"), (0, b"img-bb"),
                                                  (1, b"imgc" + MAGIC)]


def test_im2rec_style_file_without_header(tmp_path):
    """Hand-made im2rec file: record 0 is an image, labels scalar or arrays."""
    recs = [
        (0, header(0, 3.0, 0) + b"first"),
        (1, header(0, 1.0, 1) + b"second"),
        (2, header(3, 0.0, 2) + struct.pack("<3f", 2.0, 0.5, 0.25) + b"third"),
    ]
    body, idx = b"", ""
    for key, payload in recs:
        idx += f"{key}\t{len(body)}\n"
        body += chunk(0, payload)
    (tmp_path / "im.rec").write_bytes(body)
    (tmp_path / "im.idx").write_text(idx)
    r = FaceRecordReader(tmp_path / "im.rec")
    assert not r.has_header and r.identity_ranges is None
    assert r.image_keys.tolist() == [0, 1, 2]
    assert r.image(0) == (3, b"first")
    third = r.read_record(2)
    assert third.labels.tolist() == [2.0, 0.5, 0.25] and third.data == b"third"
    assert r.image(2) == (2, b"third")
    assert r.num_classes is None


def test_unpack_record_scalar_and_array():
    rec = unpack_record(pack_record([4, 5, 6], b"z", id=1, id2=2))
    assert rec.header == (3, 0.0, 1, 2) and rec.labels.tolist() == [4, 5, 6] and rec.data == b"z"
    assert unpack_record(pack_record(2.0)).label == 2.0


# ----------------------------------------------------------------------------- bad files
def _small_rec(tmp_path, n=3):
    with FaceRecordWriter(tmp_path / "t") as w:
        for i in range(n):
            w.add(i, jpeg((40 * i, 100, 200)))
    return tmp_path / "t.rec", tmp_path / "t.idx"


def test_truncated_rec_names_file_and_record(tmp_path):
    rec, _ = _small_rec(tmp_path)
    data = rec.read_bytes()
    offsets = [int(line.split()[1]) for line in (tmp_path / "t.idx").read_text().splitlines()]
    rec.write_bytes(data[: offsets[3] + 40])  # cut inside record 3 (the last image)
    with pytest.raises(BinfaceError, match=r"t\.rec: record 3 at offset \d+: file is truncated"):
        RecordReader(rec).read(3)


def test_wrong_magic(tmp_path):
    rec, _ = _small_rec(tmp_path)
    data = bytearray(rec.read_bytes())
    off = int((tmp_path / "t.idx").read_text().splitlines()[2].split()[1])
    data[off:off + 4] = b"\x00\x11\x22\x33"
    rec.write_bytes(bytes(data))
    with pytest.raises(BinfaceError, match=r"t\.rec: record 2 at offset \d+: bad magic"):
        RecordReader(rec).read(2)


def test_idx_offset_past_end(tmp_path):
    rec, idx = _small_rec(tmp_path)
    lines = idx.read_text().splitlines()
    lines[1] = f"1\t{rec.stat().st_size + 100}"
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(BinfaceError, match=r"t\.idx: record 1 has offset \d+, past the end"):
        RecordReader(rec).read(1)


def test_bad_idx_line_and_missing_files(tmp_path):
    rec, idx = _small_rec(tmp_path)
    idx.write_text("0\t0\n1\tbanana\n")
    with pytest.raises(BinfaceError, match=r"t\.idx: line 2 is not 'key<TAB>offset'"):
        RecordReader(rec)
    with pytest.raises(BinfaceError, match="record file not found"):
        RecordReader(tmp_path / "nope.rec")
    idx.unlink()
    with pytest.raises(BinfaceError, match=r"t\.idx: index file not found"):
        RecordReader(rec)


def test_multipart_cut_short(tmp_path):
    payload = b"abcd" + MAGIC + b"efgh"
    (tmp_path / "c.rec").write_bytes(chunk(1, payload[:4]) + chunk(0, b"next"))
    (tmp_path / "c.idx").write_text("0\t0\n")
    with pytest.raises(BinfaceError, match="record 0 at offset 12: multi-part record is cut"):
        RecordReader(tmp_path / "c.rec").read(0)


# ----------------------------------------------------------------------------- dataset
def test_dataset_tensors_labels_and_flip(tmp_path):
    with FaceRecordWriter(tmp_path / "d") as w:
        img = np.zeros((112, 112, 3), np.uint8)
        img[:, :56] = (255, 0, 0)  # red left half, blue right half
        img[:, 56:] = (0, 0, 255)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        w.add(0, buf.getvalue())
        w.add(1, jpeg((10, 20, 30), size=96))  # resized to 112 by the dataset
    ds = RecordDataset(tmp_path / "d.rec", train=False)
    assert len(ds) == 2 and ds.num_classes == 2
    x, y = ds[0]
    assert x.shape == (3, 112, 112) and x.dtype == torch.float32 and y == 0
    assert x[0, 0, 0].item() == pytest.approx(1.0) and x[2, 0, 0].item() == pytest.approx(-1.0)
    assert ds[1][0].shape == (3, 112, 112) and ds[1][1] == 1
    train = RecordDataset(tmp_path / "d.rec", train=True)
    torch.manual_seed(0)
    lefts = {round(train[0][0][0, 0, 0].item(), 3) for _ in range(30)}
    assert lefts == {1.0, -1.0}  # both orientations seen


def test_dataset_with_dataloader_workers(tmp_path):
    _small_rec(tmp_path, n=6)
    ds = RecordDataset(tmp_path / "t.rec", train=True)
    ds[0]  # opens the file in this process
    clone = pickle.loads(pickle.dumps(ds))  # no open handle travels
    assert clone.reader._fh is None
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    labels = torch.cat([y for _, y in loader]).tolist()
    assert labels == [0, 1, 2, 3, 4, 5]


def test_dataset_skip_bad(tmp_path):
    with FaceRecordWriter(tmp_path / "s") as w:
        w.add(0, jpeg((1, 2, 3)))
        w.add(1, b"\xff\xd8 not really a jpeg")
        w.add(2, jpeg((3, 2, 1)))
    strict = RecordDataset(tmp_path / "s.rec")
    with pytest.raises(BinfaceError, match=r"s\.rec: record 2: corrupt image"):
        strict[1]
    lenient = RecordDataset(tmp_path / "s.rec", skip_bad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, y = lenient[1]
    assert y == 2 and x.shape == (3, 112, 112)
    assert any("record 2" in str(c.message) and "skipped" in str(c.message) for c in caught)
