"""The 10-fold protocol against an independent, loop-by-loop reading of REFERENCE 1.3."""

import numpy as np
import pytest

from binface.errors import BinfaceError
from binface.eval.verification import (
    contiguous_folds,
    verification,
    verification_from_pack_embeddings,
)


def reference_protocol(a, b, issame, nfolds=10):
    """Written from the text alone: normalise, squared L2, thresholds 0:4:0.01, contiguous
    folds, best train threshold (first max), score the held-out fold, mean + population std."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    dist = np.sum(np.square(a - b), axis=1)
    thresholds = np.arange(0, 4, 0.01)
    n = len(dist)
    fold_size = [n // nfolds + (1 if i < n % nfolds else 0) for i in range(nfolds)]
    starts = np.cumsum([0] + fold_size)
    accs, chosen = [], []
    for f in range(nfolds):
        test = list(range(starts[f], starts[f + 1]))
        train = [i for i in range(n) if i < starts[f] or i >= starts[f + 1]]
        best_acc, best_t = -1.0, None
        for t in thresholds:
            correct = sum(1 for i in train if (dist[i] < t) == bool(issame[i]))
            acc = correct / len(train)
            if acc > best_acc:  # strictly greater: the first maximum wins ties
                best_acc, best_t = acc, t
        correct = sum(1 for i in test if (dist[i] < best_t) == bool(issame[i]))
        accs.append(correct / len(test))
        chosen.append(best_t)
    mean = sum(accs) / nfolds
    std = (sum((x - mean) ** 2 for x in accs) / nfolds) ** 0.5
    return mean, std, chosen


def make_pairs(n, dim=16, noise=0.9, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, dim))
    issame = rng.random(n) < 0.5
    b = np.where(issame[:, None], a + noise * rng.normal(size=(n, dim)), rng.normal(size=(n, dim)))
    return a, b, issame


@pytest.mark.parametrize("n,seed", [(600, 0), (700, 1), (613, 2)])
def test_matches_independent_reading(n, seed):
    a, b, issame = make_pairs(n, seed=seed)
    mean, std, chosen = reference_protocol(a, b, issame)
    r = verification(a, b, issame)
    assert abs(r["accuracy"] - mean) <= 1e-12
    assert abs(r["std"] - std) <= 1e-12
    assert np.allclose(r["thresholds"], chosen, rtol=0, atol=1e-12)
    assert 0.5 < r["accuracy"] < 1.0
    assert r["protocol"] == "insightface" and "10-fold" in r["protocol_description"]


def test_folds_are_contiguous_and_unshuffled():
    folds = contiguous_folds(23, 10)
    assert [len(f) for f in folds] == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert np.array_equal(np.concatenate(folds), np.arange(23))


def test_perfect_and_random_embeddings():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(400, 8))
    issame = np.arange(400) % 2 == 0
    b = np.where(issame[:, None], a, -a)
    r = verification(a, b, issame)
    assert r["accuracy"] == 1.0 and r["std"] == 0.0
    # impostors sit at distance exactly 4, beyond every threshold: the training FAR never
    # reaches 1e-3, and insightface's rule then uses threshold 0, so VAL is 0
    assert r["val_at_far_1e-3"] == 0.0
    assert r["tar_at_far"]["1e-03"] == 1.0
    noise = verification(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)), issame)
    assert 0.35 < noise["accuracy"] < 0.65


def test_result_fields_and_roc():
    a, b, issame = make_pairs(600)
    r = verification(a, b, issame)
    for key in ("accuracy", "std", "thresholds", "val_at_far_1e-3", "tar_at_far", "roc"):
        assert key in r
    assert set(r["tar_at_far"]) == {"1e-04", "1e-03", "1e-02", "1e-01"}
    tars = [r["tar_at_far"][k] for k in ("1e-04", "1e-03", "1e-02", "1e-01")]
    assert tars == sorted(tars)  # TAR grows with FAR
    fpr, tpr = np.array(r["roc"]["fpr"]), np.array(r["roc"]["tpr"])
    assert len(fpr) == len(tpr) == 400
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert fpr[0] == 0 and tpr[-1] == 1.0


def test_other_protocols_are_labelled():
    a, b, issame = make_pairs(600, seed=5)
    best = verification(a, b, issame, protocol="best_threshold")
    ten = verification(a, b, issame)
    assert best["protocol"] == "best_threshold" and best["accuracy"] >= ten["accuracy"] - 1e-9
    fx = verification(a, b, issame, protocol="facexzoo")
    assert fx["protocol"] == "facexzoo" and "standard error" in fx["protocol_description"]
    assert abs(fx["accuracy"] - ten["accuracy"]) < 0.05
    assert fx["std"] == pytest.approx(np.std(fx["fold_accuracies"]) / np.sqrt(10))


def test_pack_order_and_errors():
    a, b, issame = make_pairs(100)
    packed = np.empty((200, a.shape[1]))
    packed[0::2], packed[1::2] = a, b
    assert verification_from_pack_embeddings(packed, issame)["accuracy"] == \
        verification(a, b, issame)["accuracy"]
    with pytest.raises(BinfaceError, match="needs 200 embeddings"):
        verification_from_pack_embeddings(packed[:199], issame)
    with pytest.raises(BinfaceError, match="100 embedding pairs but 99 labels"):
        verification(a, b, issame[:99])
    with pytest.raises(BinfaceError, match="NaN"):
        verification(a * np.nan, b, issame)
    with pytest.raises(BinfaceError, match="unknown protocol"):
        verification(a, b, issame, protocol="lfw-magic")
