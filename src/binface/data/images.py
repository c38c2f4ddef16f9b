"""Image decode, encode and normalisation shared by the data readers and writers."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

FACE_SIZE = (112, 112)  # (H, W) of an aligned ArcFace crop
# No face image, aligned crop or camera photo, reaches 8192 x 8192 pixels; a header
# that claims more is a decompression bomb (13000 x 13000 would take 0.5 GB per image).
MAX_PIXELS = 1 << 26
JPEG_QUALITY = (1, 100)  # Pillow's valid range


def check_quality(quality: int, where: str = "JPEG quality") -> int:
    """``quality`` as an int in Pillow's JPEG range 1..100, else a one-line error."""
    from binface.errors import BinfaceError

    lo, hi = JPEG_QUALITY
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not (
        lo <= quality <= hi
    ):
        raise BinfaceError(f"{where} must be an integer in {lo}..{hi}, got {quality!r}")
    return int(quality)


def open_image(data: bytes, where: str) -> Image.Image:
    """Open (header only) an encoded image, refusing one above ``MAX_PIXELS``."""
    from binface.errors import BinfaceError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise BinfaceError(f"{where}: image is too large to be a face image (decompression "
                           f"bomb; {len(data)} bytes)") from None
    except Exception as exc:  # noqa: BLE001 - any failure of a decoder on foreign bytes
        raise BinfaceError(f"{where}: corrupt image ({_reason(exc)}; {len(data)} bytes)") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise BinfaceError(f"{where}: image claims {w}x{h} pixels, more than a face image "
                           f"ever has (limit {MAX_PIXELS} pixels); refused before decoding")
    return img


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded image -> ``(H, W, 3)`` uint8 RGB; ``where`` names it in the error.

    16-bit grayscale is scaled to 8 bits (Pillow's ``convert`` would clip it to
    white); an image above ``MAX_PIXELS`` is refused before it is decoded.
    """
    from binface.errors import BinfaceError

    img = open_image(data, where)
    try:
        with img, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            if img.mode.startswith("I"):
                rgb = _wide_gray_to_rgb(img, where)
            else:
                rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except BinfaceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a decoder on foreign bytes
        raise BinfaceError(f"{where}: corrupt image ({_reason(exc)}; {len(data)} bytes)") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or 0 in rgb.shape:
        raise BinfaceError(f"{where}: decodes to an array of shape {rgb.shape}, not an image")
    return rgb


def _wide_gray_to_rgb(img: Image.Image, where: str) -> np.ndarray:
    """16-bit (``I;16*``) or 32-bit integer (``I``) grayscale -> 8-bit RGB."""
    from binface.errors import BinfaceError

    arr = np.asarray(img)
    if arr.dtype.kind not in "iu":
        raise BinfaceError(f"{where}: unsupported image mode {img.mode}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise BinfaceError(f"{where}: {img.mode} grayscale values beyond 16 bits "
                           f"({arr.min()}..{arr.max()}) are not an image binface can read")
    gray = ((arr + 128) // 257).astype(np.uint8)  # 0..65535 -> 0..255, rounded
    return np.repeat(gray[..., None], 3, axis=2)


def _reason(exc: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not a readable image"
    text = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, (OSError, ValueError,
                                                                   SyntaxError)) else text


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
        buf, format="JPEG", quality=check_quality(quality)
    )
    return buf.getvalue()


def normalize(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(3, H, W)`` float32 in [-1, 1]: (x - 127.5) / 127.5."""
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    chw -= 127.5
    chw /= 127.5
    return chw
