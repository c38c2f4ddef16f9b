"""Writing files safely: every file binface writes goes through :func:`atomic_write`.

A crash, a full disk or Ctrl-C mid-write must leave the previous file (or no file)
at the target path, never a truncated one. So each writer writes a hidden temporary
file beside the target (same filesystem, so the final rename is atomic), flushes
and fsyncs it, then renames it over the target. On any failure the temporary file
is removed. Temporary names start with ``.NAME.`` and end with ``.tmp`` so that a
file left by a killed process is recognisable (:func:`stale_temporaries`).

This module imports only the standard library: the packed runtime uses it too.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

from binface.errors import BinfaceError

OVERWRITE_FLAG = "--overwrite"

__all__ = ["OVERWRITE_FLAG", "atomic_write", "check_outputs", "check_writable_dir",
           "stale_temporaries", "write_bytes", "write_text", "write_with"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``.

    ``mode`` is ``"wb"`` (bytes) or ``"w"`` (UTF-8 text). Parent folders are
    created. An unwritable destination is a one-line :class:`BinfaceError`.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    fd, tmp = _temporary(path, f".{path.name}.", ".tmp")
    try:
        kwargs = {"encoding": "utf-8", "newline": "\n"} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write UTF-8 ``text`` to ``path``."""
    with atomic_write(path, "w") as fh:
        fh.write(text)


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Atomically produce ``path`` with a writer that only takes a file *name*.

    For libraries that open the file themselves (``torch.onnx.export``,
    ``matplotlib.savefig``): ``writer`` writes to a temporary path beside ``path``
    (same suffix, so format detection by extension still works), which then
    replaces ``path``.
    """
    path = Path(path)
    fd, tmp = _temporary(path, f".{path.stem}.", f".tmp{path.suffix}")
    os.close(fd)
    try:
        writer(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _temporary(path: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """A new temporary file beside ``path`` (its folder created); one line if impossible."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    except OSError as exc:
        raise BinfaceError(f"cannot write {path}: {exc.strerror or exc}") from None


def _replace(tmp: str, path: Path) -> None:
    """Give the finished temporary file the usual permissions and rename it over ``path``."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_outputs(
    outputs: Iterable[str | os.PathLike],
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
) -> None:
    """Refuse, before any work starts, outputs that would lose or cannot hold a file.

    An output that is also an input is refused even with ``overwrite``; one that
    exists is refused unless ``overwrite``; one whose folder cannot be created or
    written is refused.
    """
    outs = [Path(p) for p in outputs]
    ins = [Path(p) for p in inputs]
    for i, out in enumerate(outs):
        for src in ins:
            if _same(out, src):
                raise BinfaceError(f"{out}: the output is also an input; choose another output")
        for other in outs[:i]:
            if _same(out, other):
                raise BinfaceError(f"{out}: the same file is given for two outputs")
        if out.is_dir():
            raise BinfaceError(f"{out}: is a directory, expected a file path")
        if (out.exists() or out.is_symlink()) and not overwrite:
            raise BinfaceError(f"{out}: already exists; pass {OVERWRITE_FLAG} to replace it")
    for folder in dict.fromkeys(out.parent for out in outs):
        check_writable_dir(folder)


def check_writable_dir(folder: str | os.PathLike) -> None:
    """Make sure files can be written in ``folder`` (created later if missing).

    The nearest existing folder on the way is probed with a temporary file; no
    folder is created here, so a refused command leaves nothing behind.
    """
    folder = Path(folder)
    existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if existing is None:
        existing = Path.cwd()
    if not existing.is_dir():
        raise BinfaceError(f"cannot write in {folder}: {existing} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".binface-probe.", suffix=".tmp", dir=existing)
    except OSError as exc:
        raise BinfaceError(f"cannot write in {folder}: {exc.strerror or exc}") from None
    os.close(fd)
    Path(probe).unlink(missing_ok=True)


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files a killed writer of ``path`` may have left beside it."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(list(path.parent.glob(f".{path.name}.*.tmp"))
                  + list(path.parent.glob(f".{path.stem}.*.tmp{path.suffix}")))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
