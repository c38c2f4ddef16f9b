"""Aligned image folders -> RecordIO training sets and LFW-style verification packs."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from binface.data.files import read_bytes
from binface.data.images import (
    FACE_SIZE,
    check_quality,
    decode_image,
    encode_jpeg,
    open_image,
    resize,
)
from binface.data.recordio import FaceRecordWriter
from binface.data.verification import write_pack
from binface.errors import BinfaceError
from binface.progress import progress as progress_bar

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class PackResult:
    """What ``pack_folder`` / ``pairs_pack`` did, for the one-line report."""

    images: int
    classes: int
    resized: int
    skipped: int


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _is_broken_link(p: Path) -> bool:
    return p.is_symlink() and not p.exists() and not p.name.startswith(".")


def _broken(p: Path, skip_bad: bool) -> None:
    """A dangling symbolic link where an image or identity was meant: refuse, or warn."""
    try:
        target = os.readlink(p)
    except OSError:
        target = "?"
    message = f"{p}: broken symbolic link (its target {target} does not exist)"
    if not skip_bad:
        raise BinfaceError(message + "; fix or remove it, or skip bad images")
    warnings.warn(message + "; skipped (--skip-bad)", stacklevel=3)


def scan_folder(
    folder: str | os.PathLike, skip_bad: bool = False
) -> list[tuple[str, list[Path]]]:
    """(identity name, sorted image paths) per subfolder, identities sorted by name.

    A dangling symbolic link named like an image, or in place of an identity
    folder, is an error (a warning with ``skip_bad``), never skipped silently.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BinfaceError(f"{folder}: not a directory")
    classes = []
    for p in sorted(folder.iterdir()):
        if _is_broken_link(p):
            _broken(p, skip_bad)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = []
        for p in sorted(sub.iterdir()):
            if _is_image(p):
                files.append(p)
            elif _is_broken_link(p) and p.suffix.lower() in IMAGE_EXTENSIONS:
                _broken(p, skip_bad)
        if files:
            classes.append((sub.name, files))
    if not classes:
        loose = any(_is_image(p) for p in folder.iterdir())
        hint = " (images must sit in one subfolder per identity)" if loose else ""
        raise BinfaceError(f"{folder}: no identity subfolders with images found{hint}")
    return classes


def face_jpeg(
    path: Path, size: tuple[int, int] = FACE_SIZE, quality: int = 95
) -> tuple[bytes, bool]:
    """(JPEG bytes at ``size``, whether it was resized); a JPEG already that size is kept."""
    data = read_bytes(path, "image file not found")
    try:
        with open_image(data, str(path)) as img:
            fmt, wh = img.format, img.size
    except BinfaceError:  # decode_image below gives the error message
        fmt, wh = None, None
    if fmt == "JPEG" and wh == (size[1], size[0]):
        decode_image(data, str(path))  # catches a truncated or corrupt body
        return data, False
    image = decode_image(data, str(path))
    resized = image.shape[:2] != tuple(size)
    return encode_jpeg(resize(image, size), quality), resized


def pack_folder(
    folder: str | os.PathLike,
    out_prefix: str | os.PathLike,
    quality: int = 95,
    skip_bad: bool = False,
    progress: bool = True,
    load: Callable[[Path], tuple[bytes, bool]] | None = None,
) -> PackResult:
    """One subfolder per identity -> ``OUT_PREFIX.rec/.idx`` + ``property``.

    ``load(path) -> (JPEG bytes, changed)`` replaces the default reader (an aligned image,
    resized to 112x112 if it is not): ``binface data pack --align`` passes one that
    detects and aligns the face of a raw photo. A ``BinfaceError`` it raises is a bad
    image like any other (skipped with ``skip_bad``)."""
    quality = check_quality(quality, "--quality (JPEG quality)")
    classes = scan_folder(folder, skip_bad=skip_bad)
    total = sum(len(files) for _, files in classes)
    resized = skipped = 0
    with FaceRecordWriter(out_prefix) as writer, progress_bar(
        total=total, desc="pack", unit="img", disable=not progress
    ) as bar:
        label = 0  # an identity whose images were all skipped gets no label
        for _, files in classes:
            kept = 0
            for path in files:
                bar.update(1)
                try:
                    jpeg, was_resized = (load(path) if load is not None else
                                         face_jpeg(path, quality=quality))
                except BinfaceError as exc:
                    if not skip_bad:
                        raise
                    warnings.warn(f"{exc}; skipped (--skip-bad)", stacklevel=2)
                    skipped += 1
                    continue
                writer.add(label, jpeg)
                resized += was_resized
                kept += 1
            label += kept > 0
        if writer.num_images == 0:
            raise BinfaceError(f"{folder}: no readable image (all {total} were skipped)")
    return PackResult(writer.num_images, writer.num_classes, resized, skipped)


# ----------------------------------------------------------------------------- pairs
def _find_image(folder: Path, name: str, number: int) -> Path | None:
    for stem in (f"{name}_{number:04d}", f"{number:04d}", f"{number}"):
        for ext in IMAGE_EXTENSIONS:
            p = folder / name / f"{stem}{ext}"
            if p.is_file():
                return p
    return None


def read_pairs(
    folder: str | os.PathLike, pairs_file: str | os.PathLike
) -> Iterator[tuple[Path, Path, bool]]:
    """LFW ``pairs.txt``: ``name n1 n2`` (same) or ``name1 n1 name2 n2`` (different)."""
    folder, pairs_file = Path(folder), Path(pairs_file)
    try:
        lines = pairs_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BinfaceError(f"{pairs_file}: pairs file not found") from None
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if all(p.isdigit() for p in parts) and len(parts) <= 2:
            continue  # header line "folds pairs_per_fold"
        where = f"{pairs_file}: line {lineno}"
        try:
            if len(parts) == 3:
                a, b, same = (parts[0], int(parts[1])), (parts[0], int(parts[2])), True
            elif len(parts) == 4:
                a, b, same = (parts[0], int(parts[1])), (parts[2], int(parts[3])), False
            else:
                raise ValueError
        except ValueError:
            raise BinfaceError(f"{where}: expected 'name n1 n2' or 'name1 n1 name2 n2', got "
                               f"{line.strip()[:80]!r}") from None
        paths = []
        for name, number in (a, b):
            p = _find_image(folder, name, number)
            if p is None:
                raise BinfaceError(f"{where}: no image {name}/{name}_{number:04d}.* in {folder}")
            paths.append(p)
        yield paths[0], paths[1], same


def pairs_pack(
    folder: str | os.PathLike,
    pairs_file: str | os.PathLike,
    out: str | os.PathLike,
    quality: int = 95,
    progress: bool = True,
) -> PackResult:
    """Build a verification pack from an aligned folder and an LFW-style pairs file."""
    quality = check_quality(quality, "--quality (JPEG quality)")
    pairs = list(read_pairs(folder, pairs_file))
    if not pairs:
        raise BinfaceError(f"{pairs_file}: no pairs found")
    bins: list[bytes] = []
    issame: list[bool] = []
    resized = 0
    for a, b, same in progress_bar(pairs, desc="pairs", unit="pair", disable=not progress):
        for p in (a, b):
            jpeg, was_resized = face_jpeg(p, quality=quality)
            bins.append(jpeg)
            resized += was_resized
        issame.append(same)
    write_pack(out, bins, issame)
    names = {p.parent.name for a, b, _ in pairs for p in (a, b)}
    return PackResult(len(bins), len(names), resized, 0)
