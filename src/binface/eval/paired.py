"""Is model A better than model B on a pack, or is the difference noise?

Both models are scored on the same 10 folds, so the honest comparison is paired: the
per-fold differences of accuracy ``d_i = acc_A,i - acc_B,i``, their mean, and the
standard error of that mean, ``SE = std(d, ddof=1) / sqrt(folds)``. A difference is
called only where ``|mean| > k * SE`` (``k = NOISE_SE``, 2 by default: about a 95%
two-sided interval); otherwise the verdict is "within noise". See docs/protocol.md.
"""

from __future__ import annotations

import math

import numpy as np

from binface.errors import BinfaceError

NOISE_SE = 2.0


def paired_difference(fold_a: list[float], fold_b: list[float], k: float = NOISE_SE) -> dict:
    """Mean per-fold difference A - B (accuracy points), its standard error and a verdict
    (``"better"``, ``"worse"`` or ``"within noise"``)."""
    a, b = np.asarray(fold_a, dtype=np.float64), np.asarray(fold_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise BinfaceError(f"paired comparison needs two equal lists of >= 2 fold accuracies, "
                           f"got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise BinfaceError("paired comparison: a fold accuracy is NaN or infinite")
    d = 100.0 * (a - b)
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    if abs(mean) > k * se and mean != 0.0:
        verdict = "better" if mean > 0 else "worse"
    else:
        verdict = "within noise"
    return {"difference": mean, "se": se, "k": k, "folds": len(d), "verdict": verdict}


def describe(name_a: str, name_b: str, pack: str, cmp: dict) -> str:
    """One sentence, computed from ``cmp`` (a :func:`paired_difference` result)."""
    diff = f"{cmp['difference']:+.2f} points, SE {cmp['se']:.2f} over {cmp['folds']} folds"
    if cmp["verdict"] == "within noise":
        return f"{name_a} vs {name_b} on {pack}: within noise ({diff})"
    word = "beats" if cmp["verdict"] == "better" else "is worse than"
    return f"{name_a} {word} {name_b} on {pack} ({diff}; > {cmp['k']:g} SE)"
