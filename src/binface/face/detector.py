"""The detector interface: an image in, faces with a box, a score and five landmarks out.

Every detector returns :class:`Face` objects whose landmarks are in image pixels and in
the ArcFace template order (the eye on the image's left, the other eye, the nose tip, the
mouth corner on the image's left, the other one), because that is what
:func:`binface.face.align.align_face` maps onto the 112x112 template. The order is
enforced from the geometry (:func:`canonical_order`), not trusted from a network: a
similarity transform cannot undo a mirrored point order, so a swapped pair would give a
mirrored crop.

A new detector subclasses :class:`Detector` and is named in :data:`DETECTORS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from binface.errors import BinfaceError

__all__ = ["DETECTORS", "DETECT_HINT", "LANDMARK_NAMES", "Detector", "Face", "NoFaceError",
           "canonical_order", "get_detector", "largest_first"]

LANDMARK_NAMES = ("eye_left", "eye_right", "nose", "mouth_left", "mouth_right")
# "left" and "right" are as seen in the image, not the person's own left and right
DETECT_HINT = "pip install 'binface[detect]'"


class NoFaceError(BinfaceError):
    """An image in which the detector found no face; the CLI exits with status 1."""

    exit_status = 1


@dataclass
class Face:
    """One detected face, in the pixels of the image it was found in.

    ``box`` is (x1, y1, x2, y2), ``landmarks`` a (5, 2) array of (x, y) in
    :data:`LANDMARK_NAMES` order, ``derived`` the names of the landmarks the detector
    did not give directly (computed from others; empty for MTCNN, which gives all five).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    derived: tuple[str, ...] = field(default=())

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = (float(v) for v in self.box)
        return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)

    def to_dict(self) -> dict:
        """JSON-ready: the box, the score and the named landmarks (pixels, 2 decimals)."""
        return {"box": [round(float(v), 2) for v in self.box], "score": round(self.score, 4),
                "landmarks": {n: [round(float(x), 2), round(float(y), 2)]
                              for n, (x, y) in zip(LANDMARK_NAMES, self.landmarks, strict=True)},
                "derived": list(self.derived)}


def canonical_order(landmarks: np.ndarray) -> np.ndarray:
    """The five points with each pair ordered as in the ArcFace template.

    In the template, going from the first eye to the second turns clockwise onto the
    mouth (image y points down): the cross product of (eye 2 - eye 1) and (mouth
    centre - eye centre) is positive. A pair for which it is negative is swapped. This
    holds for any in-plane rotation of an upright face, so a face tilted by 30 degrees
    keeps its order, and a mirrored photo gives the mirrored points in the same order.
    """
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2).copy()
    down = (pts[3] + pts[4]) / 2 - (pts[0] + pts[1]) / 2
    for a, b in ((0, 1), (3, 4)):
        d = pts[b] - pts[a]
        if d[0] * down[1] - d[1] * down[0] < 0:
            pts[[a, b]] = pts[[b, a]]
    return pts


def largest_first(faces: list[Face]) -> list[Face]:
    """Faces by decreasing box area (the largest is the one a portrait is about)."""
    return sorted(faces, key=lambda f: -f.area)


class Detector:
    """A face detector: ``detect(image)`` on a (H, W, 3) uint8 RGB array."""

    name = "detector"
    #: landmarks this detector does not give directly (derived from the others)
    derived: tuple[str, ...] = ()

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in ``image``, largest first."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What the detector is, for reports and JSON output."""
        return {"detector": self.name}


def _mtcnn(**kwargs) -> Detector:
    from binface.face.mtcnn import MtcnnDetector

    return MtcnnDetector(**kwargs)


DETECTORS: dict[str, Callable[..., Detector]] = {"mtcnn": _mtcnn}


def get_detector(name: str = "mtcnn", **kwargs) -> Detector:
    """A detector by name (see :data:`DETECTORS`); keyword arguments go to its builder."""
    if name not in DETECTORS:
        raise BinfaceError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}")
    return DETECTORS[name](**kwargs)


def check_image(image: np.ndarray, where: str = "image") -> np.ndarray:
    """A (H, W, 3) uint8 array, or a one-line error naming ``where``."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise BinfaceError(f"{where}: expected a (H, W, 3) uint8 RGB image, got "
                           f"{image.dtype} {image.shape}")
    return image
