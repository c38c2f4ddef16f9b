"""binface: face recognition for embedded hardware (lightweight CNNs, hybrids, binary networks)."""

__version__ = "0.1.0"

from binface.errors import BinfaceError  # noqa: E402

__all__ = ["BinfaceError", "__version__"]
