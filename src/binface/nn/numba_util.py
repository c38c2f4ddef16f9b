"""What binface's numba training kernels share: their thread count and the layouts they take."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["KERNEL_OPTIONS", "kernel_view", "layout_4d", "set_numba_threads"]

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


def kernel_view(t: torch.Tensor, layout: str) -> np.ndarray:
    """A map of ``layout_4d`` ``layout`` as the kernels read it, without a copy:
    (N, C, H*W) for ``"nchw"``, (N, H*W, C) in memory order for ``"nhwc"``.

    Not detached: a tensor that requires grad raises here, which is what makes the
    kernels' backward passes refuse a double backward (``create_graph=True``) instead
    of giving a wrong second derivative; callers detach the saved inputs themselves.
    """
    n, c, h, w = t.shape
    if layout == "nchw":
        return t.numpy().reshape(n, c, h * w)
    return t.permute(0, 2, 3, 1).numpy().reshape(n, h * w, c)
