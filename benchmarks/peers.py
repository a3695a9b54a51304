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
