"""Complexity accounting in the larq convention: MACs, parameters and memory by precision.

:func:`profile` walks a model's real forward pass (the counting rules are in
docs/counting.md); the seed paper's tables are rebuilt beside binface's count by
``binary_table_rows`` / ``float_table_rows`` and rendered as text by the
``render_*`` functions. Latency is measured elsewhere: ``binface.runtime.bench``.

The table helpers build the model zoo, so they are loaded on first use.
"""

from binface.lazy import lazy_exports
from binface.profile.counter import LayerProfile, Profile, profile

_LAZY = {  # name -> module, imported on first use
    "FLOAT_REFERENCES": "binface.profile.float_table",
    "PUBLISHED_ACCURACY": "binface.profile.float_table",
    "SEED_TABLE2": "binface.profile.tables",
    "SEED_TABLE2_PUBLISHED": "binface.profile.tables",
    "binary_table_rows": "binface.profile.tables",
    "float_table_rows": "binface.profile.float_table",
    "render_binary_table": "binface.profile.tables",
    "render_float_table": "binface.profile.float_table",
    "render_profile": "binface.profile.cli",
}

__all__ = [
    "FLOAT_REFERENCES",
    "LayerProfile",
    "PUBLISHED_ACCURACY",
    "Profile",
    "SEED_TABLE2",
    "SEED_TABLE2_PUBLISHED",
    "binary_table_rows",
    "float_table_rows",
    "profile",
    "render_binary_table",
    "render_float_table",
    "render_profile",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
