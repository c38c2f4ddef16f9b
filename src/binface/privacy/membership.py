"""Membership inference (what the seed's reference [9] measured): does the model's
confidence tell training identities from held-out ones?

The attack score of a face is the model's confidence: the largest cosine between its
embedding and the head's class centres (a training identity has its own centre, close
to its faces; a held-out identity has none). A threshold on it separates members from
non-members; the attack is summarised by the ROC AUC (0.5: no better than chance) with
a bootstrap interval, and by the advantage, max(TPR - FPR).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from binface.errors import BinfaceError
from binface.privacy.head import MarginHead
from binface.privacy.metrics import need
from binface.privacy.template import embed


def membership_scores(model: nn.Module, head: MarginHead, images: torch.Tensor) -> np.ndarray:
    """The attack score of each face: max cosine to any class centre."""
    if head is None:
        raise BinfaceError("membership inference needs the model's margin head (its class "
                           "centres): give a checkpoint that holds one")
    e = embed(model, images)
    with torch.no_grad():
        return (e @ F.normalize(head.weight.detach()).T).max(1).values.numpy()


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    stats = need("scipy.stats")
    u = stats.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    return float(u) / (len(pos) * len(neg))


def _advantage(pos: np.ndarray, neg: np.ndarray) -> float:
    thr = np.unique(np.concatenate([pos, neg]))
    tpr = (pos[None, :] >= thr[:, None]).mean(1)
    fpr = (neg[None, :] >= thr[:, None]).mean(1)
    return float((tpr - fpr).max())


def membership_attack(members: np.ndarray, non_members: np.ndarray, seed: int = 0,
                      resamples: int = 500) -> dict:
    """AUC (Mann-Whitney U, SciPy) and the best threshold's advantage TPR - FPR, each with
    a 95% percentile-bootstrap interval (members and non-members resampled)."""
    pos, neg = np.asarray(members, float), np.asarray(non_members, float)
    if len(pos) < 2 or len(neg) < 2:
        raise BinfaceError("membership inference needs at least 2 members and 2 non-members")
    if not (np.isfinite(pos).all() and np.isfinite(neg).all()):
        raise BinfaceError("membership scores are NaN or infinite")
    rng = np.random.default_rng(seed)
    boots = np.array([(_auc(a, b), _advantage(a, b)) for a, b in
                      ((rng.choice(pos, len(pos)), rng.choice(neg, len(neg)))
                       for _ in range(resamples))])
    lo, hi = np.quantile(boots, [0.025, 0.975], axis=0)
    return {"auc": _auc(pos, neg), "auc_ci95": [float(lo[0]), float(hi[0])],
            "advantage": _advantage(pos, neg), "advantage_ci95": [float(lo[1]), float(hi[1])],
            "members": int(len(pos)), "non_members": int(len(neg)), "resamples": resamples}
