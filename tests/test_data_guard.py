"""Nothing a user made is lost, and crafted data files give one-line errors (issue 12)."""

from __future__ import annotations

import io
import pickle
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from binface.cli import main
from binface.data.dataset import RecordDataset
from binface.data.folder import pack_folder, scan_folder
from binface.data.images import MAX_PIXELS, decode_image
from binface.data.recordio import (
    FaceRecordReader,
    FaceRecordWriter,
    RecordReader,
    RecordWriter,
    pack_record,
    write_property,
)
from binface.data.sheet import contact_sheet
from binface.data.synth import generate
from binface.data.verification import load_pack, read_pack_raw, write_pack
from binface.errors import BinfaceError
from binface.fileio import stale_temporaries


def jpeg(colour=(90, 120, 150), size=112) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` 8-bit RGB, with a tiny IDAT."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def snapshot(folder):
    """Every file under ``folder`` with its bytes (hidden temporaries included)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def one_line_error(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def face_folder(root, names=("ann", "bob"), per=2):
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per):
            Image.new("RGB", (112, 112), (40 * i, 9, 99)).save(root / name / f"{i}.png")
    return root


# ----------------------------------------------------------------------------- data loss
def test_synth_refuses_to_replace_users_rec(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train.rec").write_bytes(b"my precious records")
    (out / "train.idx").write_bytes(b"0\t0\n")
    before = snapshot(out)
    err = one_line_error(capsys, "data", "synth", str(out), "--identities", "1",
                         "--images-per-identity", "1", "--pairs", "0", "--quiet")
    assert "train.rec: already exists; pass --overwrite" in err
    assert snapshot(out) == before


def test_synth_overwrite_replaces(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train.rec").write_bytes(b"old")
    assert main(["data", "synth", str(out), "--identities", "2", "--images-per-identity", "1",
                 "--pairs", "0", "--workers", "1", "--quiet", "--overwrite"]) == 0
    assert FaceRecordReader(out / "train.rec").num_images == 2
    assert not stale_temporaries(out / "train.rec") and not stale_temporaries(out / "train.idx")


def test_pack_refuses_existing_prefix(tmp_path, capsys):
    face_folder(tmp_path / "f")
    out = tmp_path / "o"
    out.mkdir()
    (out / "train.idx").write_text("user's index\n")
    before = snapshot(out)
    err = one_line_error(capsys, "data", "pack", str(tmp_path / "f"), str(out / "train"),
                         "--quiet")
    assert "train.idx: already exists; pass --overwrite" in err
    assert snapshot(out) == before
    (out / "train.idx").unlink()
    (out / "property").write_text("7,112,112\n")  # another set's property would be replaced
    before = snapshot(out)
    one_line_error(capsys, "data", "pack", str(tmp_path / "f"), str(out / "train"), "--quiet")
    assert snapshot(out) == before
    assert main(["data", "pack", str(tmp_path / "f"), str(out / "train"), "--quiet",
                 "--overwrite"]) == 0
    assert (out / "property").read_text() == "2,112,112\n"


def test_inspect_refuses_to_replace_sheet(tmp_path, capsys):
    write_pack(tmp_path / "lfw.bin", [jpeg(), jpeg((9, 9, 9))], [True])
    sheet = tmp_path / "lfw.bin.png"
    sheet.write_bytes(b"my own picture")
    err = one_line_error(capsys, "data", "inspect", str(tmp_path / "lfw.bin"), "--quiet")
    assert "lfw.bin.png: already exists; pass --overwrite" in err and "--no-sheet" in err
    assert sheet.read_bytes() == b"my own picture"
    assert main(["data", "inspect", str(tmp_path / "lfw.bin"), "--quiet", "--no-sheet"]) == 0
    assert main(["data", "inspect", str(tmp_path / "lfw.bin"), "--quiet", "--overwrite"]) == 0
    assert Image.open(sheet).format == "PNG"


def test_pairs_refuses_existing_pack(tmp_path, capsys):
    face_folder(tmp_path / "f", per=3)
    (tmp_path / "pairs.txt").write_text("ann 1 2\n")
    (tmp_path / "out.bin").write_bytes(b"an old pack")
    one_line_error(capsys, "data", "pairs", str(tmp_path / "f"), str(tmp_path / "pairs.txt"),
                   str(tmp_path / "out.bin"), "--quiet")
    assert (tmp_path / "out.bin").read_bytes() == b"an old pack"


def test_output_equal_to_input_is_refused_even_with_overwrite(tmp_path, capsys):
    face_folder(tmp_path / "f", per=3)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("ann 1 2\n")
    before = pairs.read_bytes()
    err = one_line_error(capsys, "data", "pairs", str(tmp_path / "f"), str(pairs), str(pairs),
                         "--quiet", "--overwrite")
    assert "the output is also an input" in err and pairs.read_bytes() == before
    write_pack(tmp_path / "p.bin", [jpeg(), jpeg()], [True])
    pack = (tmp_path / "p.bin").read_bytes()
    err = one_line_error(capsys, "data", "inspect", str(tmp_path / "p.bin"), "--sheet",
                         str(tmp_path / "p.bin"), "--overwrite", "--quiet")
    assert "the output is also an input" in err and (tmp_path / "p.bin").read_bytes() == pack


@pytest.mark.parametrize("where", ["proc", "file"])
def test_unwritable_outputs_are_one_line(tmp_path, capsys, where):
    (tmp_path / "plain").write_text("a regular file")
    base = "/proc/binface-test" if where == "proc" else str(tmp_path / "plain" / "sub")
    err = one_line_error(capsys, "data", "synth", base, "--identities", "1",
                         "--images-per-identity", "1", "--pairs", "0", "--quiet")
    assert "cannot write in" in err
    face_folder(tmp_path / "f")
    one_line_error(capsys, "data", "pack", str(tmp_path / "f"), f"{base}/train", "--quiet")
    write_pack(tmp_path / "p.bin", [jpeg(), jpeg()], [True])
    one_line_error(capsys, "data", "inspect", str(tmp_path / "p.bin"), "--sheet",
                   f"{base}/s.png", "--quiet")


def test_failed_rec_write_keeps_previous_files_and_no_temporaries(tmp_path):
    with FaceRecordWriter(tmp_path / "train") as w:
        w.add(0, jpeg())
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError), FaceRecordWriter(tmp_path / "train") as w:
        w.add(0, jpeg((1, 1, 1)))
        raise RuntimeError("disk on fire")
    assert snapshot(tmp_path) == before
    with pytest.raises(RuntimeError), RecordWriter(tmp_path / "train.rec") as w:
        w.write(0, b"partial")
        raise RuntimeError("interrupted")
    assert snapshot(tmp_path) == before


def test_failed_pack_property_and_sheet_writes_keep_previous_files(tmp_path, monkeypatch):
    write_pack(tmp_path / "p.bin", [jpeg(), jpeg()], [True])
    write_property(tmp_path / "property", 3, (112, 112))
    contact_sheet([[np.zeros((8, 8, 3), np.uint8)]], tmp_path / "s.png")
    before = snapshot(tmp_path)

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pickle, "dump", boom)
    with pytest.raises(OSError):
        write_pack(tmp_path / "p.bin", [jpeg((5, 5, 5)), jpeg()], [False])
    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError):
        contact_sheet([[np.ones((8, 8, 3), np.uint8)]], tmp_path / "s.png")
    monkeypatch.setattr("binface.fileio.os.replace", boom)
    with pytest.raises(OSError):
        write_property(tmp_path / "property", 4, (112, 112))
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- RecordIO
def _im2rec(tmp_path, labels, prop=None):
    """An im2rec-style set (no header record) with the given float labels."""
    with RecordWriter(tmp_path / "i.rec") as w:
        for key, label in enumerate(labels):
            w.write(key, pack_record(label, jpeg()))
    if prop is not None:
        (tmp_path / "property").write_text(prop)
    return tmp_path / "i.rec"


def _with_header(tmp_path, start, end, images=2):
    with RecordWriter(tmp_path / "h.rec") as w:
        w.write(0, pack_record([start, end]))
        for key in range(1, images + 1):
            w.write(key, pack_record(0.0, jpeg()))
        w.write(images + 1, pack_record([1.0, images + 1.0]))
    return tmp_path / "h.rec"


@pytest.mark.parametrize("line", ["1\t99999999999999999999999", "-99999999999999999999\t0",
                                  "9223372036854775808\t0"])
def test_idx_beyond_int64(tmp_path, line):
    rec = _im2rec(tmp_path, [0.0])
    (tmp_path / "i.idx").write_text(f"0\t0\n{line}\n")
    with pytest.raises(BinfaceError, match=r"i\.idx: line 2: .* beyond the 64-bit range"):
        RecordReader(rec)


@pytest.mark.parametrize("start,end,match", [
    (float("nan"), 4.0, "label nan is not a record key"),
    (3.0, float("inf"), "label inf is not a record key"),
    (3.0, 2.0**40, r".*needs 1099511627776 records but the \.idx lists 4"),
    (3.0, 3.0, ".*no identities"),
    (1.0, 2.0, "the header lists no images"),
    (-1.0, 2.0, "label -1.0 is not a record key"),
])
def test_bad_header_ranges(tmp_path, start, end, match):
    rec = _with_header(tmp_path, start, end)
    with pytest.raises(BinfaceError, match=r"h\.rec: header record 0: " + match):
        FaceRecordReader(rec)


def test_identity_record_nan_range(tmp_path):
    with RecordWriter(tmp_path / "h.rec") as w:
        w.write(0, pack_record([2.0, 3.0]))
        w.write(1, pack_record(0.0, jpeg()))
        w.write(2, pack_record([float("nan"), 2.0]))
    with pytest.raises(BinfaceError, match=r"h\.rec: identity record 2: label nan"):
        FaceRecordReader(tmp_path / "h.rec")


def test_nan_label_is_one_line_and_skippable(tmp_path):
    rec = _im2rec(tmp_path, [0.0, float("nan"), 1.0], prop="2,112,112\n")
    strict = RecordDataset(rec)
    with pytest.raises(BinfaceError, match=r"i\.rec: record 1 has label nan"):
        strict[1]
    lenient = RecordDataset(rec, skip_bad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, label = lenient[1]
    assert label == 1 and any("record 1 has label nan" in str(c.message) for c in caught)


@pytest.mark.parametrize("label", [1e9, -3.0, 3.0, 1.5])
def test_label_out_of_range_is_refused(tmp_path, label):
    rec = _im2rec(tmp_path, [0.0, 2.0, label, 1.0], prop="3,112,112\n")
    ds = RecordDataset(rec)
    assert ds[1][1] == 2
    with pytest.raises(BinfaceError, match=r"record 2 has label .*expected an integer class "
                                           r"in 0\.\.2 \(3 classes\)"):
        ds[2]


def test_label_above_header_classes(tmp_path):
    with RecordWriter(tmp_path / "h.rec") as w:
        w.write(0, pack_record([3.0, 4.0]))
        w.write(1, pack_record(0.0, jpeg()))
        w.write(2, pack_record(1e9, jpeg()))
        w.write(3, pack_record([1.0, 3.0]))
    r = FaceRecordReader(tmp_path / "h.rec")
    assert r.image(1)[0] == 0
    with pytest.raises(BinfaceError, match=r"record 2 has label 1e\+09"):
        r.image(2)


def test_property_with_too_many_classes(tmp_path, capsys):
    rec = _im2rec(tmp_path, [0.0, 1.0], prop="1000000000000,112,112\n")
    with pytest.raises(BinfaceError, match=r"property: claims 1000000000000 classes but i\.rec "
                                           "holds only 2 images"):
        _ = RecordDataset(rec).num_classes
    one_line_error(capsys, "data", "inspect", str(rec), "--no-sheet", "--quiet")
    (tmp_path / "property").write_text("0,112,112\n")
    with pytest.raises(BinfaceError, match="bad values"):
        _ = FaceRecordReader(rec).num_classes


# ----------------------------------------------------------------------------- images
def test_decompression_bombs_refused_before_decoding():
    for w, h in [(13000, 13000), (20000, 20000), (1 << 20, 1 << 20)]:
        t0 = time.perf_counter()
        with pytest.raises(BinfaceError, match=r"^img: image (claims|is too large)"):
            decode_image(png_claiming(w, h), "img")
        assert time.perf_counter() - t0 < 1.0
    assert MAX_PIXELS >= 8192 * 8192  # a limit no face image reaches, not a tighter one


def test_sixteen_bit_grayscale_png_decodes_to_eight_bits(tmp_path):
    values = np.linspace(0, 65535, 112 * 112).reshape(112, 112).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    rgb = decode_image(buf.getvalue(), "g16")
    assert rgb.shape == (112, 112, 3) and rgb.dtype == np.uint8
    expected = np.round(values / 257.0).astype(np.uint8)
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1
    assert (rgb[..., 0] == rgb[..., 2]).all() and rgb.min() == 0 and rgb.max() == 255
    # the same in a pack
    (tmp_path / "g.bin").write_bytes(pickle.dumps(([buf.getvalue(), jpeg()], [True])))
    images, _ = load_pack(tmp_path / "g.bin")
    assert np.abs(images[0, ..., 1].astype(int) - expected).max() <= 1


def test_dangling_symlink_in_folder(tmp_path):
    face_folder(tmp_path / "f")
    (tmp_path / "f" / "ann" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    with pytest.raises(BinfaceError, match=r"ann/gone\.jpg: broken symbolic link"):
        scan_folder(tmp_path / "f")
    with pytest.raises(BinfaceError, match="broken symbolic link"):
        pack_folder(tmp_path / "f", tmp_path / "o", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = pack_folder(tmp_path / "f", tmp_path / "o", skip_bad=True, progress=False)
    assert res.images == 4 and any("gone.jpg" in str(c.message) for c in caught)
    (tmp_path / "f" / "ann" / "gone.jpg").unlink()
    (tmp_path / "f" / "carl").symlink_to(tmp_path / "no-such-folder")
    with pytest.raises(BinfaceError, match=r"f/carl: broken symbolic link"):
        scan_folder(tmp_path / "f")


def test_quality_and_seed_flags(tmp_path, capsys):
    face_folder(tmp_path / "f")
    for q in ("500", "0", "-3", "abc"):
        with pytest.raises(SystemExit):
            main(["data", "pack", str(tmp_path / "f"), str(tmp_path / "o"), "--quality", q])
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "JPEG quality in 1..100" in err
    with pytest.raises(BinfaceError, match=r"quality\) must be an integer in 1\.\.100"):
        pack_folder(tmp_path / "f", tmp_path / "o", quality=500, progress=False)
    with pytest.raises(SystemExit):
        main(["data", "synth", str(tmp_path / "s"), "--seed", "-1"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seed in 0..2**63-1" in err
    with pytest.raises(BinfaceError, match="seed must be an integer"):
        generate(tmp_path / "s", identities=1, images_per_identity=1, seed=-1, pairs=0,
                 progress=False)
    assert not (tmp_path / "s" / "train.rec").exists()


# ----------------------------------------------------------------------------- packs
class _Dataless:
    """Pickles as numpy's ``_reconstruct`` of a big array, with no data to fill it."""

    def __init__(self, via_ndarray: bool = False) -> None:
        self.via_ndarray = via_ndarray

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        if self.via_ndarray:
            return (np.ndarray, ((20000, 112, 112, 3), "B"))
        return (_reconstruct, (np.ndarray, (20000, 112, 112, 3), b"B"))


@pytest.mark.parametrize("via_ndarray", [False, True])
def test_pack_array_without_data_is_refused(tmp_path, via_ndarray):
    (tmp_path / "d.bin").write_bytes(pickle.dumps((_Dataless(via_ndarray), [True] * 10000),
                                                  protocol=2))
    with pytest.raises(BinfaceError, match=r"d\.bin: (refused to load|not a verification)"):
        read_pack_raw(tmp_path / "d.bin")


def test_pack_array_whose_data_does_not_match_is_refused(tmp_path):
    arr = np.zeros((4, 112, 112, 3), np.uint8)
    raw = pickle.dumps((arr, [True, False]), protocol=2)
    good_len = struct.pack("<I", arr.nbytes)
    assert raw.count(good_len) == 1
    (tmp_path / "m.bin").write_bytes(raw.replace(good_len, struct.pack("<I", 40000000)))
    with pytest.raises(BinfaceError, match=r"m\.bin: "):
        read_pack_raw(tmp_path / "m.bin")
    (tmp_path / "ok.bin").write_bytes(raw)  # the untouched pickle still loads
    assert load_pack(tmp_path / "ok.bin")[0].shape == (4, 112, 112, 3)


def test_memo_shared_bombs(tmp_path):
    bomb = png_claiming(13000, 13000)
    (tmp_path / "two.bin").write_bytes(pickle.dumps(([bomb, bomb], [True])))
    t0 = time.perf_counter()
    with pytest.raises(BinfaceError, match=r"two\.bin: entry 0 \(pair 0\): image claims "
                                           r"13000x13000 pixels"):
        load_pack(tmp_path / "two.bin")
    (tmp_path / "many.bin").write_bytes(pickle.dumps(([bomb] * 200, [True] * 100)))
    with pytest.raises(BinfaceError, match=r"many\.bin: 200 images in a \d+-byte file"):
        load_pack(tmp_path / "many.bin")
    (tmp_path / "2m.bin").write_bytes(pickle.dumps(([jpeg()] * 2_000_000, [True] * 1_000_000)))
    with pytest.raises(BinfaceError, match=r"2m\.bin: 2000000 images in a \d+-byte file"):
        load_pack(tmp_path / "2m.bin")
    assert time.perf_counter() - t0 < 10


def test_rebuilt_shared_buffer_is_budgeted(tmp_path):
    """Protocol 2 stores bytes as _codecs.encode(text): one text, rebuilt 4000 times."""
    text = "x" * 50_000
    out = bytearray(b"\x80\x02(c_codecs\nencode\nq\x00")
    out += b"X" + struct.pack("<I", len(text)) + text.encode() + b"q\x01"
    out += b"X\x06\x00\x00\x00latin1q\x02"
    out += b"(" + b"h\x00h\x01h\x02\x86R" * 4000 + b"l"  # a list of 4000 encode() results
    out += b"(" + b"\x88" * 2000 + b"lt."
    (tmp_path / "b.bin").write_bytes(bytes(out))
    with pytest.raises(BinfaceError, match=r"b\.bin: refused to load: a byte string would "
                                           "take more memory"):
        read_pack_raw(tmp_path / "b.bin")


def test_zero_pairs_and_bad_issame(tmp_path, capsys):
    (tmp_path / "empty.bin").write_bytes(pickle.dumps(([], [])))
    with pytest.raises(BinfaceError, match=r"empty\.bin: the pack holds no pairs"):
        load_pack(tmp_path / "empty.bin")
    one_line_error(capsys, "data", "inspect", str(tmp_path / "empty.bin"), "--no-sheet")
    good = jpeg()
    for bad in ([2], [0.5], ["yes"], [None], np.array([3]), np.array([0.0])):
        (tmp_path / "s.bin").write_bytes(pickle.dumps(([good, good], bad)))
        with pytest.raises(BinfaceError, match=r"s\.bin: issame_list"):
            read_pack_raw(tmp_path / "s.bin")
    for ok in ([1], [0], np.array([1], np.uint8), np.array([False]), [True]):
        (tmp_path / "s.bin").write_bytes(pickle.dumps(([good, good], ok)))
        assert read_pack_raw(tmp_path / "s.bin")[1].dtype == bool


def test_refused_command_creates_nothing(tmp_path, capsys):
    one_line_error(capsys, "data", "pack", str(tmp_path / "missing"),
                   str(tmp_path / "new" / "deep" / "train"), "--quiet")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "train.rec").write_bytes(b"mine")
    one_line_error(capsys, "data", "synth", str(tmp_path / "x"), "--identities", "1",
                   "--images-per-identity", "1", "--pairs", "0", "--quiet",
                   "--contact-sheet", str(tmp_path / "y" / "ids.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]
    assert snapshot(tmp_path / "x") == {Path("train.rec"): b"mine"}
