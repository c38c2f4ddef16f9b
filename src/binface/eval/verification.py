"""Face verification protocols on pairs of embeddings.

The default, ``"insightface"``, is what papers report for LFW, CFP-FP and AgeDB-30
(docs/protocol.md): L2-normalised embeddings, squared L2 distance, thresholds
0.00 .. 3.99 step 0.01, 10 contiguous unshuffled folds; for each fold the threshold
with the best accuracy on the other nine (first maximum on ties) scores the held-out
fold; mean and population std (ddof=0) of the fold accuracies. VAL@FAR=1e-3 uses
thresholds at step 0.001 and linear interpolation of the training FAR.

Other toolkits use other rules and give other numbers, so every result carries the
name and description of its protocol:

- ``"best_threshold"`` (Keras_insightface): one best threshold over all pairs, no folds.
- ``"facexzoo"`` (FaceX-Zoo): cosine similarity, per-fold threshold maximising
  TPR - FPR on the nine training folds, mean and standard error (std / sqrt(folds)).
"""

from __future__ import annotations

import numpy as np

from binface.errors import BinfaceError

PROTOCOLS = {
    "insightface": "insightface 10-fold: squared L2 on L2-normalised embeddings, thresholds "
    "0:4:0.01, best train-fold threshold (first max), mean +- population std",
    "best_threshold": "single best threshold over all pairs (squared L2, no folds): optimistic",
    "facexzoo": "FaceX-Zoo 10-fold: cosine similarity, threshold by max TPR-FPR on train folds, "
    "mean +- standard error",
}
FARS = (1e-4, 1e-3, 1e-2, 1e-1)


def _normalize(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, dtype=np.float64)
    n = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.maximum(n, 1e-12)


def _check(emb_a: np.ndarray, emb_b: np.ndarray, issame: np.ndarray, nfolds: int) -> np.ndarray:
    issame = np.asarray(issame).astype(bool).reshape(-1)
    a, b = np.asarray(emb_a), np.asarray(emb_b)
    if a.ndim != 2 or a.shape != b.shape:
        raise BinfaceError(f"embeddings must be two (N, D) arrays of one shape, got {a.shape} "
                           f"and {b.shape}")
    if len(issame) != a.shape[0]:
        raise BinfaceError(f"{a.shape[0]} embedding pairs but {len(issame)} labels")
    if len(issame) < nfolds:
        raise BinfaceError(f"{len(issame)} pairs cannot be split into {nfolds} folds")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise BinfaceError("embeddings contain NaN or infinite values")
    return issame


def contiguous_folds(n: int, nfolds: int) -> list[np.ndarray]:
    """Indices of ``nfolds`` contiguous blocks (the first n % nfolds one longer), unshuffled."""
    sizes = np.full(nfolds, n // nfolds)
    sizes[: n % nfolds] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.arange(bounds[i], bounds[i + 1]) for i in range(nfolds)]


def _rates(pred: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TPR, FPR, accuracy for a (thresholds, pairs) boolean prediction matrix."""
    tp = (pred & actual).sum(1)
    fp = (pred & ~actual).sum(1)
    tn = (~pred & ~actual).sum(1)
    fn = (~pred & actual).sum(1)
    tpr = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
    fpr = np.where(fp + tn > 0, fp / np.maximum(fp + tn, 1), 0.0)
    acc = (tp + tn) / pred.shape[1]
    return tpr, fpr, acc


def _val_far(pred: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ta = (pred & actual).sum(-1)
    fa = (pred & ~actual).sum(-1)
    n_same, n_diff = max(int(actual.sum()), 1), max(int((~actual).sum()), 1)
    return ta / n_same, fa / n_diff


def _threshold(impostor_desc: np.ndarray, far: float) -> float:
    k = int(np.floor(far * len(impostor_desc)))  # impostors allowed above the threshold
    return float(impostor_desc[k]) if k < len(impostor_desc) else -np.inf


def threshold_at_far(scores: np.ndarray, issame: np.ndarray, far: float) -> float:
    """The score threshold of ``tar_at_far``: a pair is accepted when its score is
    above it, and at most a fraction ``far`` of the impostor pairs are."""
    scores, issame = np.asarray(scores, dtype=np.float64), np.asarray(issame, dtype=bool)
    return _threshold(np.sort(scores[~issame])[::-1], far)


def tar_at_far(scores: np.ndarray, issame: np.ndarray, fars=FARS) -> dict[str, float]:
    """TAR at each FAR from the ROC over all pairs (higher score = more alike).

    The threshold for a FAR is the score above which at most that fraction of
    impostor pairs fall; returned as {"1e-04": tar, ...}.
    """
    genuine, impostor = np.sort(scores[issame]), np.sort(scores[~issame])[::-1]
    out = {}
    for far in fars:
        thr = _threshold(impostor, far)
        tar = float((genuine > thr).mean()) if len(genuine) else 0.0
        out[f"{far:.0e}"] = tar
    return out


def verification(
    emb_a: np.ndarray,
    emb_b: np.ndarray,
    issame: np.ndarray,
    nfolds: int = 10,
    protocol: str = "insightface",
) -> dict:
    """Verification accuracy of embedding pairs under a named protocol.

    Returns ``accuracy``, ``std``, ``thresholds`` (per fold), ``val_at_far_1e-3``
    (with ``val_std`` and ``far``), ``tar_at_far`` (1e-4 .. 1e-1), ``roc`` (fpr,
    tpr, thresholds), ``protocol`` and ``protocol_description``. Embeddings are
    L2-normalised here; ``issame[k]`` says whether pair k is genuine.
    """
    if protocol not in PROTOCOLS:
        raise BinfaceError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    issame = _check(emb_a, emb_b, issame, nfolds)
    a, b = _normalize(emb_a), _normalize(emb_b)
    if protocol == "facexzoo":
        return _facexzoo(a, b, issame, nfolds)

    dist = ((a - b) ** 2).sum(1)
    thresholds = np.arange(0, 4, 0.01)
    pred = dist[None, :] < thresholds[:, None]  # (thresholds, pairs)
    folds = contiguous_folds(len(dist), nfolds)
    result: dict = {"protocol": protocol, "protocol_description": PROTOCOLS[protocol],
                    "pairs": int(len(dist)), "folds": nfolds}

    if protocol == "best_threshold":
        tpr, fpr, acc = _rates(pred, issame[None, :])
        best = int(np.argmax(acc))
        result.update(accuracy=float(acc[best]), std=0.0, thresholds=[float(thresholds[best])])
        fold_tpr, fold_fpr = tpr, fpr
    else:
        accs, best_t, tprs, fprs = [], [], [], []
        for test in folds:
            train = np.setdiff1d(np.arange(len(dist)), test)
            _, _, acc_train = _rates(pred[:, train], issame[None, train])
            best = int(np.argmax(acc_train))  # first maximum on ties
            tpr, fpr, acc_test = _rates(pred[:, test], issame[None, test])
            accs.append(acc_test[best])
            best_t.append(float(thresholds[best]))
            tprs.append(tpr)
            fprs.append(fpr)
        result.update(accuracy=float(np.mean(accs)), std=float(np.std(accs)),
                      fold_accuracies=[float(x) for x in accs], thresholds=best_t)
        fold_tpr, fold_fpr = np.mean(tprs, 0), np.mean(fprs, 0)

    val, val_std, far = _val_at_far(dist, issame, folds, 1e-3)
    result["val_at_far_1e-3"] = val
    result["val_std"] = val_std
    result["far"] = far
    result["tar_at_far"] = tar_at_far(-dist, issame)
    result["roc"] = {"fpr": fold_fpr.tolist(), "tpr": fold_tpr.tolist(),
                     "thresholds": thresholds.tolist()}
    return result


def _val_at_far(dist: np.ndarray, issame: np.ndarray, folds: list[np.ndarray],
                far_target: float) -> tuple[float, float, float]:
    """VAL at a target FAR per fold: thresholds 0:4:0.001, linear interpolation of FAR."""
    thresholds = np.arange(0, 4, 0.001)
    vals, fars = [], []
    for test in folds:
        train = np.setdiff1d(np.arange(len(dist)), test)
        pred = dist[None, train] < thresholds[:, None]
        _, far_train = _val_far(pred, issame[None, train])
        if far_train.max() >= far_target:
            threshold = float(np.interp(far_target, far_train, thresholds))
        else:
            threshold = 0.0
        val, far = _val_far(dist[test] < threshold, issame[test])
        vals.append(val)
        fars.append(far)
    return float(np.mean(vals)), float(np.std(vals)), float(np.mean(fars))


def _facexzoo(a: np.ndarray, b: np.ndarray, issame: np.ndarray, nfolds: int) -> dict:
    score = (a * b).sum(1)  # cosine similarity
    folds = contiguous_folds(len(score), nfolds)
    accs, best_t = [], []
    for test in folds:
        train = np.setdiff1d(np.arange(len(score)), test)
        cand = np.unique(score[train])
        pred = score[None, train] >= cand[:, None]
        tpr, fpr, _ = _rates(pred, issame[None, train])
        thr = float(cand[int(np.argmax(tpr - fpr))])
        accs.append(float(((score[test] >= thr) == issame[test]).mean()))
        best_t.append(thr)
    thresholds = np.linspace(-1, 1, 401)
    tpr, fpr, _ = _rates(score[None, :] >= thresholds[:, None], issame[None, :])
    return {
        "protocol": "facexzoo",
        "protocol_description": PROTOCOLS["facexzoo"],
        "pairs": int(len(score)),
        "folds": nfolds,
        "accuracy": float(np.mean(accs)),
        "std": float(np.std(accs) / np.sqrt(nfolds)),  # standard error, as FaceX-Zoo reports
        "fold_accuracies": accs,
        "thresholds": best_t,
        "val_at_far_1e-3": None,
        "tar_at_far": tar_at_far(score, issame),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist()},
    }


def verification_from_pack_embeddings(embeddings: np.ndarray, issame: np.ndarray,
                                      **kwargs) -> dict:
    """Verification on the 2N embeddings of a pack in file order (pair k = 2k, 2k + 1)."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] != 2 * len(issame):
        raise BinfaceError(f"a pack of {len(issame)} pairs needs {2 * len(issame)} embeddings, "
                           f"got shape {embeddings.shape}")
    return verification(embeddings[0::2], embeddings[1::2], issame, **kwargs)
