"""Progress bars: in place on a terminal, a few whole lines in a log."""

from __future__ import annotations

import io

import binface.progress as bp
from binface.progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(stream, steps: int = 1000, **kwargs) -> str:
    # mininterval=0: the bar looks at every step, the worst case for a log
    with progress(total=steps, file=stream, desc="work", mininterval=0, **kwargs) as bar:
        for i in range(steps):
            bar.update(1)
            bar.set_postfix(loss=f"{1 / (i + 1):.3f}")
    return stream.getvalue()


def test_a_log_gets_few_whole_lines():
    text = _run(io.StringIO())
    lines = text.splitlines(keepends=True)
    assert 2 <= len(lines) <= 15, lines
    assert all(line.endswith("\n") for line in lines)
    assert "\r" not in text and "\x1b" not in text
    assert "0/1000" in lines[0] and "1000/1000" in lines[-1]


def test_a_log_bar_that_does_not_leave_still_prints_its_end():
    stream = io.StringIO()
    for _ in progress(range(1000), file=stream, desc="embed", leave=False, mininterval=0):
        pass
    lines = stream.getvalue().splitlines()
    assert len(lines) <= 15 and "1000/1000" in lines[-1]


def test_a_log_line_every_interval_when_the_total_is_unknown(monkeypatch):
    stream = io.StringIO()
    for _ in progress(iter(range(200)), file=stream, mininterval=0):
        pass
    assert len(stream.getvalue().splitlines()) == 2  # start and end: the interval never passed
    monkeypatch.setattr(bp, "LOG_INTERVAL", 0.0)
    stream = io.StringIO()
    for _ in progress(iter(range(200)), file=stream, mininterval=0):
        pass
    assert len(stream.getvalue().splitlines()) > 100


def test_a_terminal_keeps_the_in_place_bar():
    text = _run(_Terminal())
    assert text.count("\r") > 100  # tqdm redraws the one line


def test_disabled_bar_writes_nothing():
    stream = io.StringIO()
    assert _run(stream, disable=True) == ""
