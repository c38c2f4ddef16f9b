"""The photo-to-identity pipeline measured: detection rate and landmark error on synthetic
faces placed in photos, landmark error on the real photographs installed packages ship,
and the frames per second of the identify loop on one thread.

Synthetic faces (binface's renderer, LFW-style nuisance) are drawn aligned, then placed
in a 320x320 photo by a known similarity (scale 1.4-2.4, rotation within 25 degrees,
shifted): their true landmarks follow. A face counts as detected when some detection's
five points are on average within half the eye distance of the truth; its error is the
mean point distance over the eye distance (NME). The frame loop runs
``binface.face.run_frames`` on 640x480 frames (Grace Hopper at shifting positions) with
the detector and the model each on one thread. Needs the ``detect`` extra
(scikit-image adds the astronaut photo).

    python benchmarks/face_pipeline.py                 # 200 faces, about 1 minute
    python benchmarks/face_pipeline.py --faces 50 --frames 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from binface.face import (
    FacePipeline,
    Gallery,
    apply_transform,
    get_detector,
    load_embedder,
    read_image,
    warp_image,
)
from binface.face.detector import LANDMARK_NAMES

# Hand-marked points (image pixels, from zoomed views), as in tests/test_face.py
MARKS = {
    "grace_hopper": np.array([[223, 190.5], [305.5, 187.5], [270, 234], [234, 277],
                              [304, 273]]),
    "astronaut": np.array([[203, 100], [246.5, 103], [224.5, 127.5], [201.5, 139], [244, 141]]),
}


def placed_faces(n: int, seed: int, difficulty: float):
    from binface.data.synth.faces import image_landmarks, render, sample_identity, sample_nuisance

    rng = np.random.default_rng(seed)
    for _ in range(n):
        ident = sample_identity(rng)
        nz = sample_nuisance(rng, ident, "lfw", difficulty=difficulty)
        face = render(ident, nz, rng)
        t = np.deg2rad(rng.uniform(-25, 25))
        s = rng.uniform(1.4, 2.4)
        a = s * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        m = np.column_stack([a, np.array([160.0, 160.0]) + rng.uniform(-30, 30, 2)
                             - a @ [55.5, 55.5]])
        yield warp_image(face, m, (320, 320), fill=128), apply_transform(m, image_landmarks(
            ident, nz)), abs(nz.yaw)


def synthetic(detector, n: int, seed: int, difficulty: float) -> dict:
    hits, extra, nme, per_point, yaw_missed = 0, 0, [], [], []
    for photo, truth, yaw in placed_faces(n, seed, difficulty):
        faces = detector.detect(photo)
        iod = np.linalg.norm(truth[1] - truth[0])
        errs = [np.linalg.norm(f.landmarks - truth, axis=1) / iod for f in faces]
        good = [e for e in errs if e.mean() < 0.5]
        extra += len(faces) - (1 if good else 0)
        if good:
            hits += 1
            nme.append(good[0].mean())
            per_point.append(good[0])
        else:
            yaw_missed.append(yaw)
    pp = np.mean(per_point, axis=0) if per_point else np.full(5, np.nan)
    return {"faces": n, "difficulty": difficulty, "detected": hits, "rate": hits / n,
            "false_detections": extra, "nme_mean": float(np.mean(nme)),
            "nme_median": float(np.median(nme)),
            "per_landmark_nme": dict(zip(LANDMARK_NAMES, np.round(pp, 4).tolist(), strict=True)),
            "missed_median_yaw": float(np.median(yaw_missed)) if yaw_missed else None}


def real_photos(detector) -> list[dict]:
    import matplotlib

    photos = {"grace_hopper": read_image(Path(matplotlib.get_data_path()) / "sample_data"
                                         / "grace_hopper.jpg")}
    try:
        import skimage.data

        photos["astronaut"] = skimage.data.astronaut()
    except ImportError:
        pass
    out = []
    for name, img in photos.items():
        faces = detector.detect(img)
        marks = MARKS[name]
        e = np.linalg.norm(faces[0].landmarks - marks, axis=1) if faces else None
        out.append({"photo": name, "faces": len(faces), "iod_px": float(np.linalg.norm(
            marks[1] - marks[0])), "error_px": None if e is None else dict(
                zip(LANDMARK_NAMES, np.round(e, 2).tolist(), strict=True))})
    return out


def frame_loop(models: list[tuple[str, str]], frames: int, min_faces: list[int]) -> list[dict]:
    import matplotlib
    from PIL import Image

    from binface.face import run_frames

    grace = read_image(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    small = np.asarray(Image.fromarray(grace).resize((256, 300)))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(frames):
            frame = np.full((480, 640, 3), 60, np.uint8)
            x = 40 + (i * 37) % 320
            frame[100:400, x:x + 256] = small
            Image.fromarray(frame).save(Path(d) / f"{i:04d}.png")
        for spec, runtime in models:
            emb = load_embedder(spec, runtime, threads=1)
            for mf in min_faces:
                pipe = FacePipeline(get_detector(min_face=mf, threads=1), emb)
                first = next(iter(run_frames(pipe, _gallery(pipe, small), d, max_frames=1)))
                del first  # warm-up (numba and ONNX Runtime first calls)
                summary = list(run_frames(pipe, _gallery(pipe, small), d))[-1]
                rows.append({"model": emb.name, "runtime": emb.runtime, "min_face": mf,
                             **{k: summary[k] for k in ("frames", "fps", "ms_per_frame")}})
                print(f"{emb.name} ({emb.runtime}), min face {mf}: {summary['fps']:.1f} fps "
                      f"{summary['ms_per_frame']}", file=sys.stderr)
    return rows


def _gallery(pipe: FacePipeline, face: np.ndarray) -> Gallery:
    _, e = pipe.embed_photo(face)
    return Gallery(["grace"], e, [1], pipe.embedder.identity)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=int, default=200)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    det = get_detector()
    res = {"load_average": os.getloadavg()[0],
           "synthetic": [synthetic(det, args.faces, args.seed, d) for d in (0.5, 1.0)],
           "real": real_photos(det),
           "frames": frame_loop([("binaryfaceformer_sep", "packed"),
                                 ("mobilefacenet", "onnx")], args.frames, [20, 80])}
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
