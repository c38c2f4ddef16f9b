"""Reading a user's file with one-line errors that name it; checking outputs before work."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from binface.errors import BinfaceError

OVERWRITE_FLAG = "--overwrite"


def read_bytes(path: Path, missing: str) -> bytes:
    """The bytes of ``path``; ``missing`` says what the file is when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BinfaceError(f"{path}: {missing}") from None
    except OSError as exc:
        raise BinfaceError(f"{path}: cannot read ({exc.strerror})") from None


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
