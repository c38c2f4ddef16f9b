"""PNG contact sheets: a grid of face tiles with a caption under each."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from binface.errors import BinfaceError
from binface.fileio import write_with

_CAPTION = 14  # pixels under each tile


def contact_sheet(
    rows: Sequence[Sequence[np.ndarray]],
    path: str | os.PathLike,
    captions: Sequence[Sequence[str]] | None = None,
    row_labels: Sequence[str] | None = None,
    gap: int = 4,
) -> Path:
    """Save ``rows`` of ``(H, W, 3)`` uint8 tiles as one PNG (atomically); return its path."""
    if not rows or not any(len(r) for r in rows):
        raise BinfaceError(f"{path}: nothing to show, a contact sheet needs at least one tile")
    h, w = next(r[0] for r in rows if len(r)).shape[:2]
    ncol = max(len(r) for r in rows)
    font = ImageFont.load_default()
    label_w = 0
    if row_labels:
        label_w = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(s, font=font))
                      for s in row_labels) + 2 * gap
    cap = _CAPTION if captions else 0
    sheet = Image.new("RGB", (label_w + ncol * (w + gap) + gap,
                              len(rows) * (h + cap + gap) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, tiles in enumerate(rows):
        y = gap + r * (h + cap + gap)
        if row_labels:
            draw.text((gap, y + h // 2 - 5), row_labels[r], fill=(0, 0, 0), font=font)
        for c, tile in enumerate(tiles):
            x = label_w + gap + c * (w + gap)
            sheet.paste(Image.fromarray(np.asarray(tile, dtype=np.uint8)), (x, y))
            if captions and r < len(captions) and c < len(captions[r]):
                draw.text((x + 1, y + h + 1), captions[r][c], fill=(0, 0, 0), font=font)
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise BinfaceError(f"{path}: unknown image extension {path.suffix!r} for a contact "
                           "sheet (use .png)")
    write_with(path, lambda tmp: sheet.save(tmp, format=fmt, optimize=True))
    return path
