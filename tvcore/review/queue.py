"""The order in which a person should review a run's images: the largest expected gain first.

A review changes the result only where the computed decision is wrong, and a
decision is least certain where its score lies closest to the threshold,
measured in standard errors of the score:

    margin = |score - threshold| / stderr

(the score is value + z x stderr, so this is how many standard errors the
estimate would have to move for the decision to flip). The posterior rule's
score is a log-odds with no standard error (NaN): its distance from the
threshold is the margin itself (log-odds 0: even odds that the label is right). The queue takes the
images in bands of half a standard error of margin, most uncertain band first;
inside a band it goes round the given classes (the most uncertain image of
each class, then the second of each, ...), so that a class whose value net is
off by a bias is not starved by a larger one. Unreadable images (decision
"error") have nothing to decide and are left out, as are reviewed ones.

The order of the images still to review does not depend on which were
reviewed: review_queue(table, reviews) is review_queue(table, {}) without the
reviewed rows, so the queue never reshuffles under a reviewer, and a
simulation may compute it once and take its head.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from ..rundir.tables import TrainingValues

BAND = 0.5  # width of one uncertainty band, in standard errors of the score


def decision_margin(score: np.ndarray, stderr: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """|score - threshold| / stderr per image: how many standard errors from flipping.

    score, stderr: (n,) float64 (NaN score: unreadable). Returns (n,) float64;
    +inf where the standard error is 0 and the score is off the threshold (a
    certain decision), 0 where it sits on it; the bare distance where there is
    no standard error (NaN: the posterior rule's log-odds); NaN where unreadable.
    """
    score = np.asarray(score, np.float64)
    stderr = np.asarray(stderr, np.float64)
    distance = np.abs(score - threshold)
    usable = np.isfinite(stderr) & (stderr > 0)
    margin = np.where(np.isnan(stderr), distance, np.where(distance > 0, np.inf, 0.0))
    np.divide(distance, stderr, out=margin, where=usable)
    margin[np.isnan(score)] = np.nan
    return margin


def review_queue(table: TrainingValues, reviews: Collection[str] = (),
                 threshold: float = 0.0) -> np.ndarray:
    """Row numbers of `table` still to review, the one whose review gains most first.

    table: the run's training_values.csv (tvcore.rundir.tables.TrainingValues).
    reviews: the paths (table.path) already reviewed, e.g. the dict of
    tvcore.rundir.review.read_reviews; they are left out. threshold: the
    filter's threshold (the run's filter.threshold). Returns (m,) int64.
    """
    n = len(table)
    margin = decision_margin(table.score, table.stderr, threshold)
    readable = np.array([d != "error" for d in table.decision], bool) & ~np.isnan(margin)
    rows = np.flatnonzero(readable)
    band = np.full(rows.size, np.iinfo(np.int64).max, np.int64)
    finite = np.isfinite(margin[rows])
    band[finite] = np.floor(margin[rows][finite] / BAND).astype(np.int64)
    # a certain decision (no standard error) still goes nearest-first among the certain ones
    closeness = np.where(finite, margin[rows], np.abs(table.score[rows] - threshold))
    labels = np.asarray(table.given_label_index, np.int64)[rows]
    # position of each image inside its (band, class) group, most uncertain first
    grouped = np.lexsort((rows, closeness, labels, band))
    g_band, g_label = band[grouped], labels[grouped]
    starts = np.r_[True, (g_band[1:] != g_band[:-1]) | (g_label[1:] != g_label[:-1])]
    first = np.maximum.accumulate(np.where(starts, np.arange(rows.size), 0))
    turn = np.empty(rows.size, np.int64)
    turn[grouped] = np.arange(rows.size) - first
    order = rows[np.lexsort((rows, closeness, turn, band))]
    if reviews:
        done = set(reviews)
        keep = np.fromiter((table.path[i] not in done for i in order), bool, order.size)
        order = order[keep]
    assert order.size <= n
    return order.astype(np.int64)
