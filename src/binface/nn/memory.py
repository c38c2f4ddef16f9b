"""Keep freed activation memory inside the process while training on a CPU.

PyTorch has no caching allocator for CPU tensors: every buffer comes from the C
library's malloc. glibc serves a block above its mmap threshold (at most 32 MiB)
with a fresh ``mmap`` and gives it back with ``munmap`` when it is freed, so each of
a training step's activation-sized buffers (BinaryFaceNet: 100 MiB per
32x64x112x112 map, dozens per step) is faulted in again, page by page, on every
step. On the 2-core machines we measured, those faults cost 0.2-1.5 s of system time
per BinaryFaceNet step (14,000-26,000 faults even with 2 MiB pages) and made the
step time swing by 2x from one step to the next.

:func:`keep_freed_memory` asks glibc (``mallopt``) to take large blocks from its heap
instead of ``mmap`` (``M_MMAP_MAX = 0``) and to keep up to ``trim`` bytes of freed
heap instead of returning it to the system (``M_TRIM_THRESHOLD``, at most 2 GiB).
After the first steps a training loop reuses the same memory: no faults, no system
time. The price is the one a GPU caching allocator also charges: the process keeps
its peak memory.

Every zoo model calls it on its first training forward (``FaceModel``), so a plain
PyTorch loop gets it as ``binface train`` does; ``BINFACE_KEEP_MEMORY=0`` turns it
off. Elsewhere than Linux with glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_MAX_TRIM = 2**31 - 1  # mallopt takes a C int
_state: dict[str, bool] = {}


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def keep_freed_memory(trim: int | None = None) -> bool:
    """Make glibc keep freed large blocks for reuse (once per process); True when set.

    ``trim``: the freed bytes at the top of the heap kept before glibc trims (default
    the smaller of 2 GiB, the most ``mallopt`` takes, and a quarter of the RAM). Does
    nothing, and returns False, when ``BINFACE_KEEP_MEMORY=0``, off glibc, or when
    ``mallopt`` refuses.
    """
    if "set" in _state:
        return _state["set"]
    ok = False
    if os.environ.get("BINFACE_KEEP_MEMORY", "1") != "0" and platform.system() == "Linux" \
            and platform.libc_ver()[0] == "glibc":
        ram = _physical_memory()
        keep = trim if trim is not None else min(_MAX_TRIM, ram // 4 or _MAX_TRIM)
        try:
            libc = ctypes.CDLL("libc.so.6")
            ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(keep, _MAX_TRIM)))) \
                and bool(libc.mallopt(_M_MMAP_MAX, 0))
        except (OSError, AttributeError):
            ok = False
    _state["set"] = ok
    return ok
