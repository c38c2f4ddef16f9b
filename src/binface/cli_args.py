"""argparse types shared by the sub-commands of every package.

They live here, not in :mod:`binface.cli`, so that a package's ``cli`` module can
use them without importing the top-level command (which imports every package's
``cli``: a cycle). This module imports only the standard library.
"""

from __future__ import annotations

import argparse

__all__ = ["parse_size", "positive_int"]


def parse_size(text: str) -> tuple[int, int]:
    """``112`` or ``112x96`` -> (H, W); anything else is a one-line argparse error."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) <= 0:
        raise argparse.ArgumentTypeError(
            f"input size must be a positive integer or HxW of integers, got {text!r}"
        )
    return (values[0], values[-1])


def positive_int(text: str) -> int:
    """An argparse type: a positive integer, or a one-line error."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
