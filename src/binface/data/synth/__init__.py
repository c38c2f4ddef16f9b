"""Synthetic face-identity benchmark in insightface formats (``binface data synth``)."""

from binface.data.synth.generate import (
    PACKS,
    SynthResult,
    generate,
    identity,
    identity_sheet,
    render_image,
)

__all__ = ["PACKS", "SynthResult", "generate", "identity", "identity_sheet", "render_image"]
