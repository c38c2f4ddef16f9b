"""Reading a user's file with one-line errors that name it.

Output checks (``check_outputs``) live in :mod:`binface.fileio`, re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from binface.errors import BinfaceError
from binface.fileio import OVERWRITE_FLAG, check_outputs, check_writable_dir

__all__ = ["OVERWRITE_FLAG", "check_outputs", "check_writable_dir", "read_bytes"]


def read_bytes(path: Path, missing: str) -> bytes:
    """The bytes of ``path``; ``missing`` says what the file is when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BinfaceError(f"{path}: {missing}") from None
    except OSError as exc:
        raise BinfaceError(f"{path}: cannot read ({exc.strerror})") from None
