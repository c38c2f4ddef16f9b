"""What binface's numba training kernels share: their thread count and the layouts they take."""

from __future__ import annotations

import torch

__all__ = ["KERNEL_OPTIONS", "layout_4d", "set_numba_threads"]

# njit options of the training kernels: cached, GIL released, parallel; reassociation
# lets LLVM vectorise their sums (no "no NaN" assumption: NaN must stay NaN)
KERNEL_OPTIONS = {"cache": True, "nogil": True, "boundscheck": False, "parallel": True,
                  "fastmath": {"reassoc", "contract", "nsz"}}


def set_numba_threads() -> None:
    """numba's thread count follows PyTorch's (``torch.set_num_threads``)."""
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def layout_4d(t: torch.Tensor) -> str | None:
    """``"nchw"`` or ``"nhwc"`` for a float32 CPU map in one of the layouts a network
    produces (contiguous, channels-last); None for anything else (the kernels' callers
    then take PyTorch's own path)."""
    if t.dim() != 4 or t.dtype != torch.float32 or t.device.type != "cpu":
        return None
    if t.is_contiguous():
        return "nchw"
    if t.is_contiguous(memory_format=torch.channels_last):
        return "nhwc"
    return None
