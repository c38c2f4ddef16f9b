"""Reading a user's file with one-line errors that name it."""

from __future__ import annotations

from pathlib import Path

from binface.errors import BinfaceError


def read_bytes(path: Path, missing: str) -> bytes:
    """The bytes of ``path``; ``missing`` says what the file is when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BinfaceError(f"{path}: {missing}") from None
    except OSError as exc:
        raise BinfaceError(f"{path}: cannot read ({exc.strerror})") from None
