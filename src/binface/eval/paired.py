"""Is model A better than model B on a pack, or is the difference noise?

Both models are scored on the same 10 folds, so the honest comparison is paired: the
per-fold differences of accuracy ``d_i = acc_A,i - acc_B,i``, their mean, and the
standard error of that mean, ``SE = std(d, ddof=1) / sqrt(folds)``. A difference is
called only where ``|mean| > k * SE``, with ``k`` the 97.5% quantile of Student's t with
``folds - 1`` degrees of freedom (2.262 for 10 folds: a 95% two-sided interval);
otherwise the verdict is "within noise". The folds are not quite independent (each
fold's threshold is fitted on the other nine), so this is, if anything, generous to a
difference. See docs/protocol.md.
"""

from __future__ import annotations

import math

import numpy as np

from binface.errors import BinfaceError

# Student's t, 97.5% quantile, by degrees of freedom (beyond 30: the normal's 1.96)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
        16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042}


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t (the nearest tabulated df at or below ``df``)."""
    return T975[max(d for d in T975 if d <= df)] if df <= 30 else 1.96


def paired_difference(fold_a: list[float], fold_b: list[float],
                      k: float | None = None) -> dict:
    """Mean per-fold difference A - B (accuracy points), its standard error and a verdict
    (``"better"``, ``"worse"`` or ``"within noise"``)."""
    a, b = np.asarray(fold_a, dtype=np.float64), np.asarray(fold_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise BinfaceError(f"paired comparison needs two equal lists of >= 2 fold accuracies, "
                           f"got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise BinfaceError("paired comparison: a fold accuracy is NaN or infinite")
    d = 100.0 * (a - b)
    k = t975(len(d) - 1) if k is None else k
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
