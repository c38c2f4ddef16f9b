"""5-point alignment: the least-squares similarity onto the ArcFace 112x112 template.

This is what insightface's ``norm_crop`` does (``skimage``'s ``SimilarityTransform``, i.e.
Umeyama's method, then ``cv2.warpAffine``), so a crop made here is the input that the
recognition models of binface and insightface were trained on. Coordinates count pixel
centres as integers (a landmark at (0, 0) is the middle of the top-left pixel), as
OpenCV and scikit-image do. Only numpy and Pillow are needed: alignment works without
the ``detect`` extra, from landmarks of any source.

A face much larger than the template is first reduced by an integer factor with box
averaging, so the crop is not aliased (``warpAffine`` samples 2x2 pixels only).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from binface.errors import BinfaceError

__all__ = ["ARCFACE_TEMPLATE", "FACE_SIZE", "align_face", "apply_transform", "invert_transform",
           "template", "umeyama", "warp_image"]

FACE_SIZE = 112
# ArcFace (insightface) template for 112x112 crops, in LANDMARK_NAMES order
ARCFACE_TEMPLATE = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
])


def template(size: int = FACE_SIZE) -> np.ndarray:
    """The template for a square crop of ``size`` pixels (the 112 template, scaled)."""
    if size < 16:
        raise BinfaceError(f"an aligned crop must be at least 16 pixels, got {size}")
    return ARCFACE_TEMPLATE * (size / FACE_SIZE)


def umeyama(src: np.ndarray, dst: np.ndarray, estimate_scale: bool = True) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, translation; no reflection) that maps
    ``src`` points onto ``dst`` with the least squared error (Umeyama, 1991), as
    ``skimage.transform.SimilarityTransform.estimate`` computes it."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise BinfaceError(f"alignment needs matching (N, 2) point sets, N >= 2; got "
                           f"{src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise BinfaceError("alignment points must be finite")
    n = len(src)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_d, dst_d = src - src_mean, dst - dst_mean
    var = float((src_d ** 2).sum() / n)
    if var < 1e-12:
        raise BinfaceError("alignment points coincide: no transform can be estimated")
    a = dst_d.T @ src_d / n
    d = np.ones(2)
    if np.linalg.det(a) < 0:
        d[1] = -1.0
    u, s, vt = np.linalg.svd(a)
    rank = np.linalg.matrix_rank(a)
    if rank == 0:
        raise BinfaceError("alignment points are degenerate: no transform can be estimated")
    if rank == 1 and np.linalg.det(u) * np.linalg.det(vt) > 0:
        rot = u @ vt
    elif rank == 1:
        rot = u @ np.diag([1.0, -1.0]) @ vt
        d = np.array([1.0, -1.0])
    else:
        rot = u @ np.diag(d) @ vt
    scale = float(s @ d) / var if estimate_scale else 1.0
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = dst_mean - m[:, :2] @ src_mean
    return m


def apply_transform(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points`` (N, 2) mapped by the 2x3 affine ``m``."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ m[:, :2].T + m[:, 2]


def invert_transform(m: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine transform."""
    a = np.asarray(m, dtype=np.float64)[:, :2]
    inv = np.linalg.inv(a)
    return np.column_stack([inv, -inv @ np.asarray(m, dtype=np.float64)[:, 2]])


def warp_image(image: np.ndarray, m: np.ndarray, size: tuple[int, int],
               fill: int = 0) -> np.ndarray:
    """``image`` (H, W, 3) uint8 warped by ``m`` (image pixel -> output pixel) into an
    output of ``size`` (H, W), bilinear, ``fill`` outside the image (as ``warpAffine``)."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    m = np.asarray(m, dtype=np.float64)
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    pil = Image.fromarray(image)
    k = int(1.0 / scale) if scale > 0 else 1
    k = min(k, max(1, min(image.shape[:2]) // 2))
    if k >= 2:  # box-average first: p_small = (p - (k - 1) / 2) / k, so p = k p_small + ...
        pil = pil.reduce(k)
        m = np.column_stack([m[:, :2] * k, m[:, 2] + m[:, :2] @ np.full(2, (k - 1) / 2)])
    inv = invert_transform(m)
    # Pillow samples at pixel-centre + 0.5 coordinates on both sides
    a = inv[:, :2]
    t = inv[:, 2] + 0.5 - a @ np.full(2, 0.5)
    coeffs = (a[0, 0], a[0, 1], t[0], a[1, 0], a[1, 1], t[1])
    out = pil.transform((size[1], size[0]), Image.AFFINE, coeffs, resample=Image.BILINEAR,
                        fillcolor=(fill, fill, fill))
    return np.asarray(out, dtype=np.uint8)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = FACE_SIZE
               ) -> tuple[np.ndarray, np.ndarray]:
    """(aligned ``size`` x ``size`` crop, the 2x3 transform image -> crop) of the face
    whose five landmarks (ArcFace order, image pixels) are given."""
    m = umeyama(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), template(size))
    return warp_image(image, m, (size, size)), m
