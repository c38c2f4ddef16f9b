"""Image decode, encode and normalisation shared by the data readers and writers."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

FACE_SIZE = (112, 112)  # (H, W) of an aligned ArcFace crop


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded image -> ``(H, W, 3)`` uint8 RGB; ``where`` names it in the error."""
    from binface.errors import BinfaceError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = "not a readable image" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise BinfaceError(f"{where}: corrupt image ({reason}; {len(data)} bytes)") from None
    return np.asarray(rgb, dtype=np.uint8)


def resize(image: np.ndarray, size: tuple[int, int] = FACE_SIZE) -> np.ndarray:
    """Bilinear resize of a ``(H, W, 3)`` uint8 image to ``size`` (H, W)."""
    if image.shape[:2] == tuple(size):
        return image
    img = Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """``(H, W, 3)`` uint8 RGB -> JPEG bytes (deterministic for a given input)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
        buf, format="JPEG", quality=int(quality)
    )
    return buf.getvalue()


def normalize(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(3, H, W)`` float32 in [-1, 1]: (x - 127.5) / 127.5."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    chw -= 127.5
    chw /= 127.5
    return chw
