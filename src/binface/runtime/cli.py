"""``binface export`` and ``binface bench`` (filled in by the runtime issue)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` and ``bench`` commands to the top-level parser."""
