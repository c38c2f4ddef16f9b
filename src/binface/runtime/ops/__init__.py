"""The runtime's ops: the table, the packed engine's implementations, the capture converters.

- ``table.py``: every op declared once (origin, engine implementation, LCE translation);
- ``functions.py``: the ``unary`` / ``binary`` / ``reduce`` functions (ATen names,
  numpy, TensorFlow);
- ``layout.py``, ``base.py``: layout helpers and the ``Op`` base of the engine;
- ``binary.py``: ops on packed signs (``pack``, ``bconv``, ``bdwconv``, ``bmaxpool``);
- ``fused.py``: float ops with numba kernels (``conv``, ``ewise``, pools);
- ``floats.py``: thin numpy ops;
- ``aten.py``: the capture's ATen -> IR converters (the only module here that needs torch).

Importing this package loads numpy and numba only (the LCE translations live in
``binface.runtime.lce.build``, which imports TensorFlow only when it runs).
"""

from binface.runtime.ops.table import ENGINE_OPS, OPDEFS, OpDef

__all__ = ["ENGINE_OPS", "OPDEFS", "OpDef"]
