"""Progress bars that stay readable in a log file.

On a terminal, :func:`progress` is plain ``tqdm``: one line redrawn in place. When
stderr (or the given ``file``) is not a terminal, a redrawn line would land in the
log as thousands of carriage-return updates, so the bar instead prints whole,
newline-terminated lines: the first state, then one line each time another tenth
of the total is done or :data:`LOG_INTERVAL` seconds have passed (whichever comes
first), and the final state when the bar closes.
"""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

from tqdm import tqdm

__all__ = ["LOG_FRACTION", "LOG_INTERVAL", "progress"]

LOG_INTERVAL = 30.0  # seconds between two log lines at most (while the bar moves)
LOG_FRACTION = 0.1  # a log line each time this fraction of the total is done
_CHECK_INTERVAL = 1.0  # tqdm's own throttle in log mode: look at the clock at most once a second
_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _is_terminal(stream: IO | None) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


class _LineWriter:
    """A stream for tqdm that turns every in-place redraw into one whole line."""

    def __init__(self, stream: IO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        for part in re.split(r"[\r\n]", _ESCAPE.sub("", str(text))):
            part = part.rstrip()
            if part:
                self.stream.write(part + "\n")
        return len(text)

    def flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush:
            flush()

    def isatty(self) -> bool:
        return False


class _LogBar(tqdm):
    """tqdm that prints a line only every ``LOG_FRACTION`` of the total or ``LOG_INTERVAL`` s."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._emitted_n: int | None = None
        self._emitted_t = 0.0
        self._closing = False
        super().__init__(*args, **kwargs)

    def _due(self) -> bool:
        if self._emitted_n is None or self._closing:
            return self._emitted_n != self.n or self._emitted_n is None
        if self.n == self._emitted_n:
            return False
        if time.monotonic() - self._emitted_t >= LOG_INTERVAL:
            return True
        if self.total:
            step = max(1, math.ceil(self.total * LOG_FRACTION))
            return self.n // step > self._emitted_n // step
        return False

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg is not None:  # tqdm clearing the line: nothing to clear in a log
            return True
        if not self._due():
            return True
        self._emitted_n, self._emitted_t = self.n, time.monotonic()
        return super().display(msg, pos)

    def close(self) -> None:
        self._closing = True
        super().close()


def progress(iterable: Iterable | None = None, **tqdm_kwargs: Any) -> tqdm:
    """A ``tqdm`` bar over ``iterable`` (or a manual one), line-based when not on a terminal.

    Takes tqdm's keyword arguments (``total``, ``desc``, ``unit``, ``disable``,
    ``leave``...). The bar writes to ``file`` (default ``sys.stderr``). In a log,
    ``leave=False`` bars still print their final line: a log cannot erase one.
    """
    stream = tqdm_kwargs.pop("file", None) or sys.stderr
    if _is_terminal(stream):
        return tqdm(iterable, file=stream, **tqdm_kwargs)
    tqdm_kwargs.update(leave=True, dynamic_ncols=False)
    tqdm_kwargs.setdefault("mininterval", _CHECK_INTERVAL)
    tqdm_kwargs.setdefault("ascii", True)
    return _LogBar(iterable, file=_LineWriter(stream), **tqdm_kwargs)
