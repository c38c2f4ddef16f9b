"""From a photo to an identity: detect, align, embed, then verify, enroll or identify.

:class:`FacePipeline` holds one detector and one embedder; every step is also a
function of its own (:func:`binface.face.detect_faces`, :func:`binface.face.align_face`,
:meth:`Embedder.embed`), so a caller can swap any of them. Thresholds are cosines on
unit embeddings; :func:`pack_threshold` picks one at a false accept rate on a
verification pack, embedded with the same model, runtime and flip test.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from binface.errors import BinfaceError
from binface.face.align import FACE_SIZE, align_face
from binface.face.detector import Detector, Face, NoFaceError, get_detector
from binface.face.embed import Embedder, require_weights
from binface.face.gallery import Gallery, check_compatible, identify, mean_template
from binface.face.images import iter_frames, read_image

__all__ = ["FacePipeline", "enroll", "pack_threshold", "run_frames", "verify_images"]


def _as_image(image: np.ndarray | str | os.PathLike) -> tuple[np.ndarray, str]:
    if isinstance(image, np.ndarray):
        return image, "image"
    return read_image(image), str(image)


@dataclass
class FacePipeline:
    """A detector and an embedder: ``faces``, ``crops`` and ``embed_photo`` on one image."""

    detector: Detector
    embedder: Embedder | None = None
    size: int = FACE_SIZE
    flip: bool = True

    @classmethod
    def create(cls, model: str | os.PathLike | None = None, runtime: str = "auto",
               threads: int = 1, detector: str = "mtcnn", min_face: int = 20,
               flip: bool = True) -> FacePipeline:
        """The MTCNN detector and (when ``model`` is given) the model in ``runtime``."""
        from binface.face.embed import load_embedder

        det = get_detector(detector, min_face=min_face, threads=threads)
        emb = load_embedder(model, runtime, threads) if model is not None else None
        return cls(det, emb, flip=flip)

    def faces(self, image: np.ndarray | str | os.PathLike) -> list[Face]:
        """Faces in the image, largest first (possibly none)."""
        img, _ = _as_image(image)
        return self.detector.detect(img)

    def crops(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """(N, size, size, 3) aligned crops of ``faces`` in ``image``."""
        out = np.zeros((len(faces), self.size, self.size, 3), np.uint8)
        for i, f in enumerate(faces):
            out[i] = align_face(image, f.landmarks, self.size)[0]
        return out

    def _need_embedder(self) -> Embedder:
        if self.embedder is None:
            raise BinfaceError("this pipeline has no recognition model (give model=...)")
        return self.embedder

    def embed_photo(self, image: np.ndarray | str | os.PathLike, all_faces: bool = False
                    ) -> tuple[list[Face], np.ndarray]:
        """(faces, their unit embeddings); the largest face only unless ``all_faces``.
        No face is a :class:`NoFaceError`."""
        emb = self._need_embedder()
        img, where = _as_image(image)
        faces = self.detector.detect(img)
        if not faces:
            raise NoFaceError(f"no face found in {where}")
        if not all_faces:
            faces = faces[:1]
        return faces, emb.embed(self.crops(img, faces), flip=self.flip)


def pack_threshold(embedder: Embedder, pack: str | os.PathLike, far: float,
                   max_pairs: int | None = None, flip: bool = True) -> dict:
    """The cosine threshold at which a fraction ``far`` of the pack's impostor pairs are
    accepted (``binface.eval.threshold_at_far``), with the TAR it gives on the pack."""
    from binface.eval.run import load_eval_pack
    from binface.eval.verification import tar_at_far, threshold_at_far

    if not 0 < far < 1:
        raise BinfaceError(f"--far must be in (0, 1), got {far}")
    p = load_eval_pack(pack, max_pairs)
    impostors = int((~p.issame).sum())
    if impostors < 1 / far:
        raise BinfaceError(f"{pack}: {impostors} impostor pairs cannot set a threshold at FAR "
                           f"{far:g} (need at least {int(np.ceil(1 / far))})")
    e = embedder.embed(p.images, flip=flip)
    cos = (e[0::2] * e[1::2]).sum(1)
    thr = threshold_at_far(cos, p.issame, far)
    tar = tar_at_far(cos, p.issame, fars=(far,))[f"{far:.0e}"]
    return {"threshold": float(thr), "far": far, "tar": tar, "pack": str(pack),
            "sha256": p.sha256, "pairs": p.pairs, "impostor_pairs": impostors}


def verify_images(pipeline: FacePipeline, image_a, image_b, threshold: float | None = None
                  ) -> dict:
    """Cosine of the largest faces of two photos and, with a threshold, the decision."""
    fa, ea = pipeline.embed_photo(image_a)
    fb, eb = pipeline.embed_photo(image_b)
    cos = float(ea[0] @ eb[0])
    return {"cosine": cos, "threshold": threshold,
            "same": None if threshold is None else bool(cos > threshold),
            "faces": [fa[0].to_dict(), fb[0].to_dict()]}


def enroll(pipeline: FacePipeline, folder: str | os.PathLike, skip_bad: bool = True,
           threshold: float | None = None, threshold_info: dict | None = None) -> Gallery:
    """A gallery from a folder of identity subfolders (several photos each): the largest
    face of each photo, the renormalised mean per identity. A photo without a face (or
    unreadable, with ``skip_bad``) is left out with a warning."""
    from binface.data.folder import scan_folder

    emb = pipeline._need_embedder()
    require_weights(emb.spec)
    names, templates, counts = [], [], []
    for name, paths in scan_folder(folder, skip_bad=skip_bad):
        rows = []
        for p in paths:
            try:
                rows.append(pipeline.embed_photo(p)[1][0])
            except BinfaceError as exc:
                if not skip_bad:
                    raise
                warnings.warn(f"{exc}; left out", stacklevel=2)
        if not rows:
            warnings.warn(f"{Path(folder) / name}: no usable photo; identity left out",
                          stacklevel=2)
            continue
        names.append(name)
        templates.append(mean_template(np.stack(rows)))
        counts.append(len(rows))
    if not names:
        raise BinfaceError(f"{folder}: no identity has a photo with a face")
    return Gallery(names, np.stack(templates), np.array(counts), emb.identity, threshold,
                   threshold_info or {})


def run_frames(pipeline: FacePipeline, gallery: Gallery, source: str | os.PathLike,
               top_k: int = 1, threshold: float | None = None, max_frames: int | None = None
               ) -> Iterator[dict]:
    """Per frame of a video or a folder of frames: every face's identity, and the time
    spent reading, detecting and embedding it. The last item is the summary (``fps``)."""
    emb = pipeline._need_embedder()
    check_compatible(gallery, emb.identity)
    frames = faces_total = 0
    spent = {"read": 0.0, "detect": 0.0, "embed": 0.0}
    t_start = time.perf_counter()
    t_read = t_start
    for name, frame in iter_frames(source, max_frames):
        t0 = time.perf_counter()
        spent["read"] += t0 - t_read
        faces = pipeline.detector.detect(frame)
        t1 = time.perf_counter()
        results = []
        if faces:
            e = emb.embed(pipeline.crops(frame, faces), flip=pipeline.flip)
            results = identify(e, gallery, top_k, threshold)
            for f, r in zip(faces, results, strict=True):
                r["box"] = [round(float(v), 1) for v in f.box]
        t2 = time.perf_counter()
        spent["detect"] += t1 - t0
        spent["embed"] += t2 - t1
        frames += 1
        faces_total += len(faces)
        yield {"frame": frames - 1, "name": name, "faces": results,
               "ms": round(1e3 * (t2 - t0), 2)}
        t_read = time.perf_counter()
    wall = time.perf_counter() - t_start
    busy = sum(spent.values())  # without the caller's time between frames (printing)
    yield {"summary": True, "frames": frames, "faces": faces_total,
           "seconds": round(busy, 3), "wall_seconds": round(wall, 3),
           "fps": frames / busy if busy > 0 else 0.0,
           "ms_per_frame": {k: round(1e3 * v / max(frames, 1), 2) for k, v in spent.items()},
           "threads": emb.threads, "runtime": emb.runtime, "model": emb.name}
