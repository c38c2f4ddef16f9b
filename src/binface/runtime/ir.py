"""binface's runtime IR: what ``capture.py`` makes and ``lower.py`` and the LCE builder read.

``IRGraph.nodes`` is a list of ``Node(op, inputs, outputs, attrs)`` in topological
order; the op names are those of :mod:`binface.runtime.ops.table`. Values are
named; constants live in ``IRGraph.consts`` as numpy arrays; ``IRGraph.shapes``
gives each value's shape, a dimension being an int or ``[a, b]`` meaning
``a * N + b`` for batch size ``N`` (``binface.runtime.ops.layout.resolve``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Dim = int | list  # int, or [a, b] = a * N + b


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)


@dataclass
class IRGraph:
    nodes: list[Node] = field(default_factory=list)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, list] = field(default_factory=dict)
    input: str = "input"
    outputs: list[str] = field(default_factory=list)
    batch_dynamic: bool = True
    meta: dict = field(default_factory=dict)
