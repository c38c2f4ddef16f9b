"""``binface data`` sub-commands (filled in by the data issue)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``data`` command and its sub-commands to the top-level parser."""
    p = sub.add_parser("data", help="read, write, inspect and synthesise face data")
    p.set_defaults(func=lambda args: p.print_help() or 0)
