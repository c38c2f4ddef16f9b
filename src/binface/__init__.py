"""binface: face recognition for embedded hardware (lightweight CNNs, hybrids, binary networks)."""

import os

__version__ = "0.1.0"

# PyTorch reads this once, at its first CPU allocation: 2 MiB pages for large tensors.
# A binary network's training step allocates many fresh activation-sized buffers, and
# their page faults cost as much as some kernels (BinaryFaceNet: ~20% of a step on
# 2 cores). Set on `import binface`, before torch allocates; a user's value is kept.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from binface.errors import BinfaceError  # noqa: E402

__all__ = ["BinfaceError", "__version__"]
