"""Importing TensorFlow and LCE for the ``lce`` extra: only here, only when asked for.

Importing this module (or any of ``binface.runtime.lce``) loads neither; the
requirements (numpy < 2, ``TF_USE_LEGACY_KERAS``) are in docs/lce.md.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np

from binface.runtime.errors import RuntimeUnavailableError

LCE_HINT = "the lce format and runtime need the `lce` extra: pip install 'binface[lce]'"


@contextlib.contextmanager
def quiet_fd2():
    """Silence C++ logging on stderr (TF start-up, MLIR diagnostics) for a block."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (embedded): nothing to silence
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def import_lce():
    """(tensorflow, larq_compute_engine), or a one-line error saying how to get them.

    ``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow loads: LCE 0.16's
    converter imports ``tensorflow.python.keras``.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if int(np.__version__.split(".")[0]) >= 2:
        try:
            import larq_compute_engine  # noqa: F401
        except ImportError:
            raise RuntimeUnavailableError(LCE_HINT) from None
        raise RuntimeUnavailableError(
            f"LCE 0.16's interpreter needs numpy < 2 (found {np.__version__}): "
            "pip install 'binface[lce]' installs a matching numpy")
    try:
        with quiet_fd2():
            import larq_compute_engine as lce
            import tensorflow as tf
    except ImportError:
        raise RuntimeUnavailableError(LCE_HINT) from None
    return tf, lce


def lce_available() -> bool:
    """True when the ``lce`` extra is installed and usable."""
    try:
        import_lce()
    except RuntimeUnavailableError:
        return False
    return True
