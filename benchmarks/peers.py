"""Peer methods for the quality benchmark: cleanlab and exact KNN-Shapley.

Every method has the signature of `bench_quality.METHODS`:
`(train_X, noisy_y, val_X, val_y, seed) -> (dirty (n,) bool, values (n,) float)`,
where a lower value means "more likely mislabeled".
"""

from __future__ import annotations

import numpy as np

from .datasets import cross_val_probabilities

KNN_K = 10
_VAL_BLOCK = 256  # validation points per block of the distance matrix (memory: block * n floats)


def cleanlab_issues(train_X, noisy_y, val_X, val_y, seed: int = 0):
    """cleanlab's `find_label_issues` on 5-fold cross-validated logistic-regression probabilities.

    cleanlab works on the training set alone (val_X, val_y are not used);
    values: cleanlab's label-quality score (self-confidence).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probabilities = cross_val_probabilities(train_X, noisy_y, seed)
    dirty = find_label_issues(noisy_y, probabilities)
    return np.asarray(dirty, bool), get_label_quality_scores(noisy_y, probabilities)


def knn_shapley_values(train_X, train_y, val_X, val_y, k: int = KNN_K) -> np.ndarray:
    """Exact Shapley values (n,) of the training points for the unweighted k-NN classifier.

    Jia et al. 2019 ("Efficient task-specific data valuation for nearest
    neighbor algorithms"), Theorem 1: for one validation point, with training
    points sorted by Euclidean distance (nearest first, ties by row order) and
    m_i = 1[label of the i-th nearest == validation label],
        s_N = m_N / k * min(k, N) / N,   s_i = s_{i+1} + (m_i - m_{i+1}) / k * min(k, i) / i
    (the paper's s_N = m_N / N assumes N >= k).
    Values are averaged over the validation points. The utility of a set S is
    (1/k) * (number of S's min(k, |S|) nearest points with the right label).
    train_X (n, D), train_y (n,), val_X (m, D), val_y (m,).
    """
    train_X = np.asarray(train_X, np.float64)
    train_y, val_y = np.asarray(train_y), np.asarray(val_y)
    n = train_X.shape[0]
    ranks = np.arange(1, n)
    weight = np.minimum(k, ranks) / (k * ranks)  # (n-1,) for i = 1..n-1
    total = np.zeros(n)
    train_sq = np.einsum("ij,ij->i", train_X, train_X)
    for first in range(0, len(val_y), _VAL_BLOCK):
        block_X = np.asarray(val_X[first:first + _VAL_BLOCK], np.float64)
        # Squared distances up to a per-row constant: enough to sort by.
        distance = train_sq[None, :] - 2.0 * block_X @ train_X.T
        order = np.argsort(distance, axis=1, kind="stable")
        match = (train_y[order] == val_y[first:first + _VAL_BLOCK, None]).astype(np.float64)
        sorted_values = np.empty_like(match)
        sorted_values[:, -1] = match[:, -1] * min(k, n) / (k * n)
        steps = (match[:, :-1] - match[:, 1:]) * weight
        # s_i = s_N + sum_{j >= i} step_j: a reversed cumulative sum.
        sorted_values[:, :-1] = sorted_values[:, -1:] + np.cumsum(steps[:, ::-1], axis=1)[:, ::-1]
        contribution = np.empty_like(sorted_values)
        np.put_along_axis(contribution, order, sorted_values, axis=1)
        total += contribution.sum(axis=0)
    return total / len(val_y)


def knn_shapley(train_X, noisy_y, val_X, val_y, seed: int = 0, k: int = KNN_K):
    """Exact KNN-Shapley against the clean validation set; images with value < 0 are dirty."""
    values = knn_shapley_values(train_X, noisy_y, val_X, val_y, k)
    return values < 0, values


# --- peers that learn from the clean validation set -----------------------------------------

def _margin(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p(given label) - max p(other label): < 0 where another class is predicted."""
    rows = np.arange(labels.size)
    given = probabilities[rows, labels]
    others = probabilities.copy()
    others[rows, labels] = -np.inf
    return given - others.max(axis=1)


def _full_probabilities(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, K) probabilities of a fitted classifier, zero for classes it never saw."""
    out = np.zeros((len(X), n_classes))
    out[:, model.classes_ if hasattr(model, "classes_") else model[-1].classes_] = \
        model.predict_proba(X)
    return out


def trusted_classifier(train_X, noisy_y, val_X, val_y, seed: int = 0):
    """The benchmark's logistic regression fit on the validation set only; an image is dirty
    where it predicts another class than the given one (values: the probability margin)."""
    from .datasets import classifier

    n_classes = int(max(noisy_y.max(), val_y.max())) + 1
    model = classifier(seed).fit(val_X, val_y)
    margin = _margin(_full_probabilities(model, train_X, n_classes), noisy_y)
    return margin < 0, margin


KNN_VAL_K = 5


def _unit(X: np.ndarray, center: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float64) - center
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def _neighbour_votes(query, pool, pool_y, k, n_classes, exclude_self=False):
    """(n_query, K) share of each class among the k most cosine-similar pool rows."""
    votes = np.zeros((len(query), n_classes))
    for first in range(0, len(query), _VAL_BLOCK):
        similarity = query[first:first + _VAL_BLOCK] @ pool.T
        if exclude_self:
            rows = np.arange(first, min(first + _VAL_BLOCK, len(query)))
            similarity[rows - first, rows] = -np.inf
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        labels = pool_y[nearest]
        for c in range(n_classes):
            votes[first:first + _VAL_BLOCK, c] = (labels == c).mean(axis=1)
    return votes


def knn_validation(train_X, noisy_y, val_X, val_y, seed: int = 0, k: int = KNN_VAL_K):
    """k-NN (cosine, centred features) on the validation set; dirty where another class has
    more votes than the given label among the k nearest validation images (values: the vote
    margin of the given label)."""
    n_classes = int(max(noisy_y.max(), val_y.max())) + 1
    center = np.asarray(train_X, np.float64).mean(axis=0)
    votes = _neighbour_votes(_unit(train_X, center), _unit(val_X, center), np.asarray(val_y),
                             k, n_classes)
    margin = _margin(votes, noisy_y)
    return margin < 0, margin


SIMIFEAT_K = 10


def simifeat_vote(train_X, noisy_y, val_X, val_y, seed: int = 0, k: int = SIMIFEAT_K):
    """SimiFeat-style local vote (Zhu et al. 2022, the "V" rule without augmentation): each
    image's label is dirty when another class wins the vote of its k most similar images in
    the training set (given labels) and validation set (true labels)."""
    n_classes = int(max(noisy_y.max(), val_y.max())) + 1
    center = np.asarray(train_X, np.float64).mean(axis=0)
    pool = np.concatenate([_unit(train_X, center), _unit(val_X, center)])
    pool_y = np.concatenate([np.asarray(noisy_y), np.asarray(val_y)])
    votes = _neighbour_votes(pool[:len(noisy_y)], pool, pool_y, k, n_classes,
                             exclude_self=True)
    margin = _margin(votes, noisy_y)
    return margin < 0, margin
