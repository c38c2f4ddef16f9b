"""exp(-2x) in float32 for numba kernels, in plain arithmetic that LLVM vectorises.

llvmlite here is built without SVML, so ``math.exp`` in a numba loop is a scalar libm
call. DoReFa's backward needs sigmoid(2x) = 1 / (1 + exp(-2x)) at every element of
large maps, so this is Cephes' expf: Cody-Waite reduction y = k ln 2 + r (ln 2 split
in two parts), a degree-6 polynomial for exp(r), and 2^k built from the float's
exponent bits. Within 3.3e-7 relative of float64 for |x| < 10; the argument is
clamped to [-87, 87], so beyond |x| = 43.5 the result is off only below 1e-37 in
absolute terms (tests/test_train_speed.py). Imported by the kernels' builders, which
keep numba out of ``import binface``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["exp_neg2x"]


@njit(inline="always", cache=True, fastmath={"contract", "nsz"})
def exp_neg2x(x):
    y = min(max(np.float32(-2.0) * x, np.float32(-87.0)), np.float32(87.0))
    k = np.floor(y * np.float32(1.44269504088896341) + np.float32(0.5))
    r = y - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    two_k = np.int32((np.int32(k) + np.int32(127)) << np.int32(23)).view(np.float32)
    return (p * r * r + r + np.float32(1.0)) * two_k
