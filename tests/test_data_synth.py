"""Synthetic benchmark: files, layout, determinism, alignment and identity cues."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from binface.data.recordio import FaceRecordReader, read_property
from binface.data.synth import generate, identity_sheet, render_image
from binface.data.synth.faces import (
    TEMPLATE,
    _Canvas,
    _Head,
    sample_identity,
    sample_nuisance,
)
from binface.data.synth.generate import _plan_pack
from binface.data.verification import load_pack, read_pack_raw
from binface.errors import BinfaceError

FILES = ("train.rec", "train.idx", "property", "synth_lfw.bin", "synth_cfp_fp.bin",
         "synth_agedb_30.bin")


def digests(folder):
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in FILES}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    res = generate(out, identities=6, images_per_identity=4, seed=3, pairs=40, workers=1,
                   progress=False)
    return out, res


def test_files_and_layout(tiny):
    out, res = tiny
    assert all((out / f).is_file() for f in FILES)
    assert res.train_images == 24 and res.images == 24 + 3 * 80
    r = FaceRecordReader(out / "train.rec")
    assert r.has_header and r.num_images == 24 and r.num_classes == 6
    assert np.diff(r.identity_ranges, axis=1).ravel().tolist() == [4] * 6
    assert read_property(out / "property") == (6, 112, 112)
    for name in ("synth_lfw", "synth_cfp_fp", "synth_agedb_30"):
        images, same = load_pack(out / f"{name}.bin")
        assert images.shape == (80, 112, 112, 3)
        # 10 contiguous folds of 4 pairs, the first half of each genuine
        assert same.reshape(10, 4).tolist() == [[True, True, False, False]] * 10
        bins, _ = read_pack_raw(out / f"{name}.bin")
        assert all(type(b) is bytes and b[:2] == b"\xff\xd8" for b in bins)


def test_same_seed_same_bytes_any_worker_count(tiny, tmp_path):
    out, _ = tiny
    generate(tmp_path, identities=6, images_per_identity=4, seed=3, pairs=40, workers=2,
             progress=False)
    assert digests(tmp_path) == digests(out)
    other = tmp_path / "other"
    generate(other, identities=6, images_per_identity=4, seed=4, pairs=40, workers=1,
             progress=False)
    assert digests(other)["train.rec"] != digests(out)["train.rec"]


def test_pack_identities_disjoint_and_fold_disjoint():
    specs, issame, used = _plan_pack("lfw", 200, first_gid=50, seed=0, difficulty=1.0)
    gids = np.array([s[0] for s in specs]).reshape(10, 40)
    assert gids.min() >= 50 and used == 50
    folds = [set(row) for row in gids]
    assert all(a.isdisjoint(b) for i, a in enumerate(folds) for b in folds[i + 1:])
    pairs = gids.reshape(-1, 2)
    assert ((pairs[:, 0] == pairs[:, 1]) == np.array(issame)).all()
    cfp, _, _ = _plan_pack("cfp_fp", 20, 0, 0, 1.0)
    assert [s[2] for s in cfp[:4]] == ["cfp_frontal", "cfp_profile"] * 2
    age, _, _ = _plan_pack("agedb_30", 20, 0, 0, 1.0)
    gaps = [abs(age[i][3] - age[i + 1][3]) for i in range(0, len(age), 2)]
    assert min(gaps) >= 27 and max(gaps) <= 33  # AgeDB-30: a gap of about 30 years


def test_alignment_lands_on_template():
    """Without detector jitter the 5 projected landmarks are fitted onto the ArcFace template.

    A similarity leaves only what it cannot express: a person's own proportions and
    the foreshortening of yaw; the centroid lands exactly.
    """
    for i in range(5):
        ident = sample_identity(np.random.default_rng(i))
        nz = sample_nuisance(np.random.default_rng(i), ident, "lfw", difficulty=0.0)
        nz.yaw, nz.pitch, nz.roll = 12.5 * (i - 2), 8.0, 10.0 * (i - 2)
        cv = _Canvas(_Head(ident, nz), nz)
        out = cv.head.landmarks3d() @ cv.proj.T + cv.proj_t
        assert np.allclose(out.mean(0), TEMPLATE.mean(0), atol=1e-6)
        assert np.abs(out - TEMPLATE).max() < (4.0 if i == 2 else 8.0)
        eyes_level = abs(out[0, 1] - out[1, 1])
        assert eyes_level < 2.0  # roll is undone


def test_identity_not_given_away_by_background_or_statistics():
    """Same person, different photos: background and image statistics vary widely;
    two people under the very same nuisance still differ in the face."""
    imgs = np.stack([render_image(0, 7, (2, 7, j), "train", 1.0)[0] for j in range(12)])
    corners = imgs[:, :6, :6].reshape(12, -1, 3).mean(1)
    assert corners.std(0).mean() > 20  # backgrounds change from photo to photo
    brightness = imgs.reshape(12, -1).mean(1)
    assert brightness.std() > 5
    a = render_image(0, 7, (2, 0, 0), "lfw", 1.0)[0][35:100, 25:87].astype(int)
    b = render_image(0, 8, (2, 0, 0), "lfw", 1.0)[0][35:100, 25:87].astype(int)
    assert np.abs(a - b).mean() > 10


def test_profiles_and_difficulty():
    ident = sample_identity(np.random.default_rng(1))
    rng = np.random.default_rng(0)
    yaws = [abs(sample_nuisance(rng, ident, "cfp_profile").yaw) for _ in range(50)]
    assert min(yaws) >= 55
    easy = [abs(sample_nuisance(rng, ident, "lfw", 0.2).yaw) for _ in range(200)]
    hard = [abs(sample_nuisance(rng, ident, "lfw", 2.0).yaw) for _ in range(200)]
    assert np.mean(hard) > 3 * np.mean(easy)
    with pytest.raises(ValueError, match="profile"):
        sample_nuisance(rng, ident, "nope")


def test_bad_arguments(tmp_path):
    with pytest.raises(BinfaceError, match="multiple of 20"):
        generate(tmp_path, identities=2, images_per_identity=1, pairs=30, progress=False)
    with pytest.raises(BinfaceError, match="difficulty"):
        generate(tmp_path, identities=2, images_per_identity=1, difficulty=-1, progress=False)
    with pytest.raises(BinfaceError, match="at least one identity"):
        generate(tmp_path, identities=0, progress=False)


def test_identity_sheet(tmp_path):
    path = identity_sheet(tmp_path / "sheet.png", identities=2, images=5)
    from PIL import Image

    img = Image.open(path)
    assert img.format == "PNG" and img.size[0] > 5 * 112 and img.size[1] > 2 * 112
