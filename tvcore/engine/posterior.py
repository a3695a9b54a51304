"""Decisions from the training-values and what the clean validation set says directly.

`label_decisions` turns the features, the value nets' predictions and the
validation set into the probability that each training image's given label
is right, and decides among `clean`, `dirty` (discard), `relabel` (a
confident other class; off unless asked for) and `outlier` (an image of no
class in the label set). Plain arrays in, a small dataclass out; no files.

The evidence, and how each piece is weighed (every weight is fitted on the
data set at hand; nothing is tuned to a benchmark):

1. Views of an image's true class, each a (K,) vector:
   - trusted: multinomial logistic regression fit on the validation images
     and the images a person reviewed (C chosen by cross-validated log-loss
     on the validation images; reviewed images are chosen, not sampled, so
     they train it but calibrate nothing in this rule);
   - neighbours: the given labels of the k most similar training images
     (the image itself left out);
   - values: every class's value net applied to the image (how much it would
     lower the validation loss if it were labelled that class), in units of
     the class's mean |Monte-Carlo value|.
   They are stacked: view weights and class biases maximise the likelihood
   of the validation labels (the trusted view's validation probabilities
   cross-fitted), so a view that misleads on this data set gets a small
   weight (the neighbours when similar images share the same wrong label) and
   one that knows more a large one (the training-values and neighbours when
   the validation set is small).
2. Images of no class: around an image of a class the validation and the
   training set are as dense as their sizes say; around an image of no class
   the training set has images and the validation set none. The statistic
   (similarity to the nearest validation images minus similarity to the
   nearest training images, their numbers in the ratio of the two sets'
   sizes for the image's class) is calibrated on the validation images
   themselves (conformal p-values per class, with an exponential tail below
   a class's smallest reference value; both sides scored with one own-class
   image fewer; the reference moved to the training images' bulk only where
   the validation set reads as collected apart or a class has fewer than 30
   validation images, since a folder full of images of no class moves the
   bulk too; a validation set only a little apart reads as such images);
   the share of outliers and each image's probability come from a
   decreasing-density (Grenander) local false-discovery rate with Storey's
   null share, so with no outliers almost nothing is called one.
3. What the image's own label adds, under two noise models fitted by EM:
   class-conditional noise (each given-label group is a mixture of true
   classes; the group's composition is its estimated noise rate, so decisions
   are calibrated per class and class size) and noise that follows the
   image's appearance (the label says no more than the neighbourhood does).
   Their mixing weight is the maximum-likelihood share of the second model in
   explaining each label from its neighbourhood: near 0 for random or pair
   flips, large when similar images share the same wrong label.

4. What a person's reviews say about the labels' worth. Where the images are
   ambiguous (the views split between the given and another class), the
   training set cannot tell whether labels there follow the true class (the
   class-conditional model: trust the label) or err exactly there (annotators
   mistaking similar images: the label says no more than the image does); the
   data fit both equally. Reviews can tell: each says whether a given label was
   right. The share of every label's weight given to the appearance model is
   raised from a_i to s + (1 - s) a_i, s maximising the likelihood of the
   reviews' verdicts on images a person put in a class (their probabilities
   from a trusted classifier that did not learn from them; a discarded image
   may be of no class and says nothing about s). Which images were reviewed
   depends on the image and its label only, not on the truth, so for this
   conditional likelihood they are a fair sample. Without reviews s = 0.

The score is the log-odds that the label is right, (1 - p_outlier) *
p_label; an image is flagged when it is below the threshold (0: even odds).
A flagged image is an `outlier` when p_outlier is the larger part of the
doubt, `relabel` (if enabled) when its best other class has at least
`relabel_confidence`, else `dirty`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import TvcleanError
from .featurenorm import FeatureView, normalize

CLEAN, DIRTY, RELABEL, OUTLIER = "clean", "dirty", "relabel", "outlier"
DECISIONS = (CLEAN, DIRTY, RELABEL, OUTLIER)
_EPS = 1e-9
_TINY = 1e-300  # floor of a probability inside a log
# half the 5% critical value of the likelihood-ratio statistic for a share on its bound
# (s = 0: a 50:50 mixture of chi-square with 0 and 1 degrees of freedom, 2.706)
_DOUBT_EVIDENCE = 1.353
# The validation set reads as collected apart when the training images' upper quantiles of
# the outlier statistic (at these levels) lie this many binomial z from its own, median class.
_UPPER_LEVELS = (0.75, 0.9)
_APART_Z = 2.5
# Fewer validation images of a class than this tell nothing about its images being of no
# class (p-values in steps of 1 / (m + 1), and the statistic's own noise of order 1 / m).
_MIN_REFERENCE = 8
# A class's validation images stand alone as its outlier reference from this many on; fewer
# are moved to its training images' bulk, as when collected apart. (Synthetic classes of one
# distribution, 30 seeds: with 15, 20, 25 and 30 validation images per class a reference
# left alone made over 2% of the images outliers in 5, 3, 2 and 1 seeds, moved in 0, 1, 0, 1.)
_RAW_REFERENCE = 30
# An estimated share of images of no class under this many standard errors is taken as 0.
_SHARE_Z = 2.0
_BLOCK = 1024  # query rows per similarity block, at most
_BLOCK_BYTES = 64 * 2**20  # and at most this much similarity block (float32) at a time


@dataclass
class DecisionOptions:
    """Settings of `label_decisions` (FilterConfig holds the user-facing ones)."""

    neighbours: int = 20  # k of the neighbourhood vote
    regime_neighbours: int = 20  # k of the label-consistency estimate (step 3)
    pool: int = 20000  # training images the neighbours are searched among (a seeded subset)
    outliers: bool = True  # decide `outlier` at all
    outlier_neighbours: int = 10  # validation neighbours of the outlier statistic
    relabel: bool = False  # decide `relabel` at all (else such images are `dirty`)
    relabel_confidence: float = 0.9  # the suggestion's probability needed to relabel
    value_view: bool = True  # the value nets as a view of the true class (step 1)
    neighbour_view: bool = True  # the neighbourhood vote as a view (step 1)
    appearance: bool = True  # allow noise that follows appearance (step 3; else class noise only)
    threshold: float = 0.0  # flag when the log-odds that the label is right is below this
    trusted_C: tuple[float, ...] = (1.0, 10.0, 100.0)  # grid of the trusted classifier's C
    folds: int = 3  # cross-fitting folds on the validation set
    seed: int = 0


@dataclass
class LabelDecisions:
    """Per training image (n,), per class (K,), and what was estimated."""

    decisions: np.ndarray  # (n,) str: clean, dirty, relabel, outlier
    score: np.ndarray  # (n,) log-odds that the given label is right (lower = more likely wrong)
    p_label: np.ndarray  # (n,) probability that the given label is right
    p_outlier: np.ndarray  # (n,) probability that the image is of no class
    class_posterior: np.ndarray  # (n, K) true class given the image is of some class
    suggested: np.ndarray  # (n,) int64 best other class (-1 for none)
    confidence: np.ndarray  # (n,) its probability
    noise_rate: np.ndarray  # (K,) estimated share of wrong labels per given label
    info: dict = field(default_factory=dict)

    @property
    def flagged(self) -> np.ndarray:
        """(n,) bool: not `clean`."""
        return self.decisions != CLEAN



# --------------------------------------------------------------------------- helpers

def probability_right(score: float) -> float:
    """The probability that a given label is right, from its score (the log-odds)."""
    return 1.0 / (1.0 + math.exp(-max(min(score, 700.0), -700.0)))


def label_probability(score: float, stderr: float) -> str:
    """The posterior rule's score (log-odds, no standard error) as the probability that the
    given label is right, 2 decimals; "" for the threshold rule's scores or none."""
    if not math.isnan(stderr) or not math.isfinite(score):
        return ""
    return f"{probability_right(score):.2f}"


def log_softmax(logits: np.ndarray) -> np.ndarray:
    peak = logits.max(axis=1, keepdims=True)
    shifted = logits - peak
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def top_similar_many(query: Any, targets: Sequence[tuple[np.ndarray, int, np.ndarray | None,
                                                          int | None]]
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The k most cosine-similar rows of each target pool for every query row, most similar
    first, reading the query once for all the pools.

    query (q, D) unit rows (an array or a FeatureView, read in blocks); targets:
    (pool, k, self_rows, keep_index) each, pool (p, D) unit rows, self_rows (q,)
    the pool row that is the query itself (-1: none; None: no such rows), left
    out. Returns per target (indices (q, keep_index or k) int32 of the first
    ones, similarities (q, k) float32).
    """
    from .topk import top_k_rows  # numba: compiled or loaded on first use only

    q = query.shape[0]
    plans, results = [], []
    for pool, k, self_rows, keep_index in targets:
        k = min(k, pool.shape[0] - (self_rows is not None))
        keep = k if keep_index is None else min(keep_index, k)
        results.append((np.zeros((q, keep), np.int32), np.zeros((q, k), np.float32)))
        skip = (np.full(q, -1, np.int64) if self_rows is None
                else np.asarray(self_rows, np.int64))
        plans.append((np.ascontiguousarray(pool, np.float32), k, skip))
    widest = max([pool.shape[0] for pool, _, _ in plans] + [1])
    step = int(max(1, min(_BLOCK, _BLOCK_BYTES // (4 * widest))))
    for start in range(0, q, step):
        x = np.ascontiguousarray(query[start:start + step], np.float32)
        for (pool, k, skip), (idx, sim) in zip(plans, results):
            if k > 0:
                top_k_rows(x @ pool.T, k, skip[start:start + step], idx, sim, start)
    return results


def label_votes(neighbour_labels: np.ndarray, n_classes: int, alpha: float = 1.0) -> np.ndarray:
    """(q, K) smoothed share of each class among the labels (q, k) of the neighbours."""
    k = neighbour_labels.shape[1]
    counts = np.zeros((neighbour_labels.shape[0], n_classes))
    for c in range(n_classes):
        counts[:, c] = (neighbour_labels == c).sum(axis=1)
    return (counts + alpha / n_classes) / (k + alpha)


def fit_trusted(val: np.ndarray, val_y: np.ndarray, n_classes: int, grid: Sequence[float],
                folds: int, seed: int, extra: tuple[np.ndarray, np.ndarray] | None = None
                ) -> tuple[Any, float, np.ndarray]:
    """Logistic regression on the validation set, C chosen by cross-validated log-loss.

    Returns (model, C, cv_probabilities (m, K)): the probabilities of every
    validation image come from a fold that did not see it. extra: more
    labelled images (features, labels) that every fit learns from but that
    are not scored (reviewed images: chosen, not a sample of the data).
    """
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, StratifiedKFold

    counts = np.bincount(val_y, minlength=n_classes)
    # a class with a single validation image: its fold predicts it from the other classes only
    folds = max(2, int(min(folds, counts[counts > 0].min())))
    # every class with one image: no stratified split exists, plain folds do the same
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed) if counts.max() >= folds
                else KFold(min(folds, val_y.size), shuffle=True, random_state=seed))
    # sklearn's warnings about small sets ("least populated class has 1 member", "more
    # classes than half the samples") say what the caller already knows: not for the user
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        split = list(splitter.split(val, val_y))
        best: tuple[float, float, np.ndarray] | None = None
        for C in grid:
            cv = _held_out_probabilities(val, val_y, n_classes, C, split, extra)
            loss = -np.log(np.clip(cv[np.arange(val_y.size), val_y], _EPS, 1)).mean()
            if best is None or loss < best[0]:
                best = (float(loss), float(C), cv)
        assert best is not None
        _, C, cv = best
        X, y = _with_extra(val, val_y, None, extra)
        return LogisticRegression(C=C, max_iter=1000).fit(X, y), C, cv


def _with_extra(val: np.ndarray, val_y: np.ndarray, rows: np.ndarray | None,
                extra: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """The validation rows `rows` (None: all, not copied) and the extra images after them."""
    X, y = (val, val_y) if rows is None else (val[rows], val_y[rows])
    if extra is None or extra[1].size == 0:
        return X, y
    return np.concatenate([X, extra[0]]), np.concatenate([y, extra[1]])


def _refit(val: np.ndarray, val_y: np.ndarray, C: float) -> Any:
    """The trusted classifier on the validation sample alone, with its chosen C."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return LogisticRegression(C=C, max_iter=1000).fit(val, val_y)


def _unlearnt_probabilities(plain: Any, X: np.ndarray, views: list[np.ndarray],
                            params: np.ndarray, val_prior: np.ndarray) -> np.ndarray:
    """(r, K) class probabilities (uniform prior) of reviewed images from the stacked views,
    the trusted view replaced by `plain`'s, a classifier that did not learn from them."""
    K = val_prior.size
    P = stacked([np.log(class_probabilities(plain, X, K)), *views[1:]], params)
    P /= np.maximum(val_prior, _EPS)
    return P / P.sum(axis=1, keepdims=True)


def _held_out_probabilities(val: np.ndarray, val_y: np.ndarray, n_classes: int, C: float,
                            split: list, extra: tuple[np.ndarray, np.ndarray] | None = None
                            ) -> np.ndarray:
    """(m, K): each validation image's probabilities from the fold that left it out."""
    from sklearn.linear_model import LogisticRegression

    cv = np.full((val.shape[0], n_classes), _EPS)
    for fit_rows, held in split:
        fit_X, fit_y = _with_extra(val, val_y, fit_rows, extra)
        if np.unique(fit_y).size < 2:  # a fold of one class (tiny sets) predicts it
            cv[np.ix_(held, fit_y[:1])] = 1.0 - _EPS
            continue
        model = LogisticRegression(C=C, max_iter=1000).fit(fit_X, fit_y)
        cv[np.ix_(held, model.classes_)] = model.predict_proba(val[held])
    return cv


def class_probabilities(model: Any, X: Any, n_classes: int) -> np.ndarray:
    """(n, K) probabilities of a fitted classifier (X: an array or a FeatureView)."""
    out = np.full((X.shape[0], n_classes), _EPS)
    for start in range(0, X.shape[0], 8 * _BLOCK):
        out[start:start + 8 * _BLOCK, model.classes_] = model.predict_proba(
            np.asarray(X[start:start + 8 * _BLOCK]))
    return out


def fit_stack(views: list[np.ndarray], labels: np.ndarray, n_classes: int,
              bias_penalty: float = 1.0) -> np.ndarray:
    """Weights (one per view, >= 0) and class biases maximising sum log softmax(sum w_v V_v + b).

    views: (m, K) each; labels (m,). Returns (n_views + K,).
    """
    from scipy.optimize import minimize

    m, n_views = labels.size, len(views)
    rows = np.arange(m)
    onehot = np.eye(n_classes)[labels]

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        weights, bias = params[:n_views], params[n_views:]
        logp = log_softmax(sum(w * v for w, v in zip(weights, views)) + bias)
        resid = np.exp(logp) - onehot  # gradient of -log p[label] wrt the logits
        grad = [float((resid * v).sum()) for v in views]
        value = -logp[rows, labels].sum() + bias_penalty * (bias ** 2).sum()
        return value, np.concatenate([grad, resid.sum(axis=0) + 2 * bias_penalty * bias])

    start = np.concatenate([np.full(n_views, 0.5), np.zeros(n_classes)])
    bounds = [(0.0, 50.0)] * n_views + [(None, None)] * n_classes
    return minimize(loss, start, jac=True, method="L-BFGS-B", bounds=bounds).x


def stacked(views: list[np.ndarray], params: np.ndarray) -> np.ndarray:
    n_views = len(views)
    return np.exp(log_softmax(sum(w * v for w, v in zip(params[:n_views], views))
                              + params[n_views:]))


def prior_shift(P: np.ndarray, weights: np.ndarray | None = None, iters: int = 200,
                tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Saerens-Latinne-Decaestecker EM: class posteriors (n, K) under a uniform prior ->
    posteriors under the set's own estimated prior, and that prior (K,).

    weights (n,): how much each row counts towards the prior (default 1).
    """
    n, K = P.shape
    weights = np.ones(n) if weights is None else weights
    total = max(weights.sum(), _EPS)
    prior = np.full(K, 1.0 / K)
    Q = P
    for _ in range(iters):
        Q = P * prior
        Q /= Q.sum(axis=1, keepdims=True)
        new = (weights @ Q + 1e-3 / K) / (total + 1e-3)
        done = np.abs(new - prior).max() < tol
        prior = new
        if done:
            break
    return Q, prior


def group_posterior(P: np.ndarray, given: np.ndarray, n_classes: int, weights: np.ndarray,
                    appearance: np.ndarray | None = None, Q: np.ndarray | None = None,
                    iters: int = 200, tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """Every given-label group is a mixture of true classes; its composition by EM.

    P (n, K) class probabilities under a uniform prior. Class-conditional
    noise: the posterior of image i in group y is P_i * pi_y, normalised.
    appearance (n,), Q (n, K): the responsibility of the appearance model and
    its posterior (Q: under the set's own prior); the composition is then
    the mean of the mixed posterior (1 - a) P_i pi_y + a Q_i over the group.
    weights (n,): how much each image counts (1 - p_outlier). Returns
    (class-conditional posterior (n, K), composition (K groups, K classes)).
    """
    post = np.zeros_like(P)
    composition = np.zeros((n_classes, n_classes))
    for y in range(n_classes):
        rows = np.flatnonzero(given == y)
        if rows.size == 0:
            composition[y, y] = 1.0
            continue
        Py, wy = P[rows], weights[rows]
        ay = np.zeros(rows.size) if appearance is None else appearance[rows]
        fixed = 0.0 if Q is None else ay[:, None] * Q[rows]
        total = max(wy.sum(), _EPS)
        pi = np.full(n_classes, 1.0 / n_classes)
        for _ in range(iters):
            cc = Py * pi
            cc /= cc.sum(axis=1, keepdims=True)
            mixed = (1 - ay)[:, None] * cc + fixed
            new = (wy @ mixed + 1e-3 / n_classes) / (total + 1e-3)
            done = np.abs(new - pi).max() < tol
            pi = new
            if done:
                break
        post[rows], composition[y] = cc, pi
    return post, composition


def appearance_share(post: np.ndarray, given: np.ndarray, neighbours: np.ndarray,
                     n_classes: int, weights: np.ndarray) -> tuple[float, np.ndarray]:
    """How much of the labelling follows the images' appearance rather than their class.

    Two explanations of each label y_i from the image's neighbourhood (k
    neighbours, itself left out): class-conditional noise, a_i = sum_c
    q_i(c) T[c, y_i] with q_i the mean class posterior of the neighbours and T
    the transition matrix implied by `post`; or labels that follow
    appearance, b_i = the share of neighbours labelled y_i. The share lam
    maximises sum_i w_i log((1 - lam) a_i + lam b_i). Returns (lam, per-image
    responsibility of the appearance model (n,)).
    """
    from scipy.optimize import minimize_scalar

    joint = np.zeros((n_classes, n_classes))  # true class x given label
    for y in range(n_classes):
        joint[:, y] = (weights[given == y, None] * post[given == y]).sum(axis=0)
    transition = (joint + 1e-3) / (joint + 1e-3).sum(axis=1, keepdims=True)
    q = np.zeros_like(post)  # mean posterior of the neighbours, a column at a time: (n, K)
    for column in neighbours.T:
        q += post[column]
    q /= neighbours.shape[1]
    a = np.einsum("nc,nc->n", q, transition[:, given].T)
    k = neighbours.shape[1]
    b = ((given[neighbours] == given[:, None]).sum(axis=1) + 1.0 / n_classes) / (k + 1.0)

    def nll(lam: float) -> float:
        return -(weights * np.log((1 - lam) * a + lam * b)).sum()

    lam = float(minimize_scalar(nll, bounds=(0.0, 1.0), method="bounded").x)
    share = lam * b / ((1 - lam) * a + lam * b)
    return lam, share


def review_doubt(P: np.ndarray, given: np.ndarray, right: np.ndarray, composition: np.ndarray,
                 prior: np.ndarray, share: np.ndarray) -> float:
    """The share s in [0, 1] of the appearance model that best explains reviews' verdicts.

    The verdicts are on images a person put in a class (kept or relabelled),
    so they are of the label set: an image discarded as of no class says
    nothing about s, and an underestimated outlier probability must not read
    as doubt in every label. P (r, K): the reviewed images' class
    probabilities (uniform prior) from views that did not learn from the
    reviews; given (r,) their labels; right (r,) bool: the person kept the
    given label; composition, prior: the groups' estimated compositions and
    the set's prior; share (r,): the appearance model's responsibility a_i.
    Under s the label is right with (1 - a') post_cc + a' Q at the given
    label, a' = s + (1 - s) a_i (post_cc: P weighted by the group's
    composition; Q: by the set's prior). Maximum likelihood, bounded; 0 (the
    rule without reviews) unless the verdicts reject it: a likelihood-ratio
    test at 5%, where verdicts that either model explains leave s unfitted.
    """
    from scipy.optimize import minimize_scalar

    rows = np.arange(given.size)
    cc = P * composition[given]
    cc = cc[rows, given] / np.maximum(cc.sum(axis=1), _TINY)
    q = P * prior
    q = q[rows, given] / np.maximum(q.sum(axis=1), _TINY)

    def nll(s: float) -> float:
        a = s + (1 - s) * share
        p_right = np.clip((1 - a) * cc + a * q, _EPS, 1 - _EPS)
        return -np.log(np.where(right, p_right, 1 - p_right)).sum()

    s = float(minimize_scalar(nll, bounds=(0.0, 1.0), method="bounded").x)
    return s if nll(0.0) - nll(s) > _DOUBT_EVIDENCE else 0.0


def grenander_lfdr(p: np.ndarray) -> tuple[np.ndarray, float]:
    """Local false-discovery rate of p-values under a decreasing density (Grenander).

    The density of the p-values is the slope of the least concave majorant of
    their empirical distribution; the null share pi0 is Storey's estimate
    2 x (share of p-values above 1/2), capped at 1. Returns (lfdr (n,), pi0).
    """
    n = p.size
    order = np.argsort(p, kind="stable")
    xs = np.concatenate([[0.0], np.clip(p[order], 0, 1)])
    ys = np.arange(n + 1) / n
    hull = [0]  # indices into xs of the least concave majorant's vertices
    for i in range(1, n + 1):
        while len(hull) >= 2:
            x0, y0 = xs[hull[-2]], ys[hull[-2]]
            x1, y1 = xs[hull[-1]], ys[hull[-1]]
            # drop the last vertex while it lies below the chord to point i
            if (y1 - y0) * (xs[i] - x0) <= (ys[i] - y0) * (x1 - x0):
                hull.pop()
            else:
                break
        hull.append(i)
    if xs[hull[-1]] < 1.0:  # close at (1, 1)
        xs, ys = np.append(xs, 1.0), np.append(ys, 1.0)
        hull.append(xs.size - 1)
    density = np.empty(n)
    for left, right in zip(hull[:-1], hull[1:]):
        width = xs[right] - xs[left]
        slope = (ys[right] - ys[left]) / width if width > 0 else np.inf
        # points left+1 .. right of the sorted list (xs index i <-> sorted p i-1)
        lo, hi = left, min(right, n)
        density[lo:hi] = slope
    pi0 = min(1.0, 2.0 * float(np.mean(p > 0.5)))
    lfdr = np.empty(n)
    lfdr[order] = np.minimum(1.0, pi0 / np.maximum(density, _EPS))
    return lfdr, pi0


def mean_top_fewer(sims: np.ndarray, ks: np.ndarray, among: np.ndarray) -> np.ndarray:
    """Mean of each row's ks most similar (rows sorted, most similar first), expected over
    leaving out one of the row's `among` candidates at random (inf: the mean as it is).

    The left-out one is among the top k with chance k / among, and then the
    (k+1)-th takes its place, changing the mean by (s_(k+1) - s_left_out) / k:
    in expectation mean_k - (mean_k - s_(k+1)) / among.
    """
    rows = np.arange(sims.shape[0])
    csum = np.cumsum(sims, axis=1, dtype=np.float64)
    mean_k = csum[rows, ks - 1] / ks
    return mean_k - (mean_k - sims[rows, ks].astype(np.float64)) / np.maximum(among, ks + 1.0)


def outlier_probability(train_pool_sims: np.ndarray, train_val_sims: np.ndarray,
                        val_pool_sims: np.ndarray, val_val_sims: np.ndarray, val_y: np.ndarray,
                        class_post: np.ndarray, prior: np.ndarray, pool_size: int,
                        k_val: int, in_pool: np.ndarray | None = None
                        ) -> tuple[np.ndarray, float, np.ndarray]:
    """Probability (n,) that each training image is of no class, the estimated share of such
    images, and their conformal p-values (n,).

    Statistic: mean similarity to the k_val most similar validation images
    minus mean similarity to the k_t most similar training images of the
    pool, k_t = k_val x (pool images / validation images of the image's
    class, expected under its class posterior): around an image of a class
    the two sets are as dense as their sizes say, around an image of no class
    the validation set has nothing. Validation images, scored the same way
    with themselves left out, are the reference of the conformal p-values:
    per class (the statistic's level and spread differ between classes), mixed
    by the image's class posterior, and moved to each class's training images
    only where the validation set reads as collected apart (collected_apart)
    or the class has fewer than _RAW_REFERENCE validation images.
    *_sims: similarities of each image's most similar pool / validation
    images, most similar first (train (n, >=k), val (m, >=k)); class_post
    (n, K) and prior (K,) under the training set's class prior.
    """
    K = prior.size
    val_counts = np.bincount(val_y, minlength=K).astype(float)
    class_pool = np.maximum(prior * pool_size, 1.0)
    ratio = class_pool / np.maximum(val_counts, 1.0)
    # one more column than used: the expected top-k of one image fewer needs the (k+1)-th
    k_max = min(train_pool_sims.shape[1], val_pool_sims.shape[1]) - 1
    k_train = np.clip(np.rint(k_val * class_post @ ratio), 1, k_max).astype(int)
    k_ref = np.clip(np.rint(k_val * ratio[val_y]), 1, k_max).astype(int)
    k_v = min(k_val, train_val_sims.shape[1] - 1, val_val_sims.shape[1])
    if in_pool is None:
        in_pool = np.ones(train_pool_sims.shape[0], bool)
    # A validation image is scored with itself left out (one own-class validation image
    # fewer), a training image of the pool likewise (one own-class pool image fewer). The
    # others get the expected statistic over one own-class image fewer, so that under the
    # same distribution both sides are alike (else they differ by (mean_k - s_(k+1)) / m).
    own_val = class_post @ val_counts
    stat_train = (mean_top_fewer(train_val_sims, np.full(own_val.size, k_v), own_val)
                  - mean_top_fewer(train_pool_sims, k_train,
                                   np.where(in_pool, np.inf, class_post @ class_pool)))
    stat_val = (val_val_sims[:, :k_v].mean(axis=1)
                - mean_top_fewer(val_pool_sims, k_ref, class_pool[val_y]))
    # conformal p-value against the validation images of each class, mixed by the image's
    # class posterior (the statistic's spread differs between classes)
    p = np.zeros(stat_train.size)
    nearest_class = class_post.argmax(axis=1)
    apart = collected_apart(stat_val, val_y, stat_train, nearest_class, K)
    for c in range(K):
        reference = np.sort(stat_val[val_y == c])
        if 0 < reference.size < _MIN_REFERENCE:  # too few to tell a far image: no evidence
            p += class_post[:, c]
            continue
        if apart or reference.size < _RAW_REFERENCE:
            reference = aligned_reference(reference, stat_train[nearest_class == c])
        if reference.size:
            p_c = (1.0 + np.searchsorted(reference, stat_train, side="right")) / (reference.size + 1.0)
            # below the smallest reference the ranks cannot tell apart: an exponential tail
            # in units of the reference's spread keeps far images below near ones
            spread = max(np.std(reference), _EPS)
            below = stat_train < reference[0]
            p_c[below] *= np.exp((stat_train[below] - reference[0]) / spread)
            p += class_post[:, c] * p_c
    p /= np.maximum(class_post[:, val_counts > 0].sum(axis=1), _EPS)
    lfdr, pi0 = grenander_lfdr(p)
    # a share the p-values' noise alone can give is no share (the density's peaks still tell)
    if 1.0 - pi0 < _SHARE_Z * share_error(p.size, int(val_counts[val_counts >= _MIN_REFERENCE].sum())):
        lfdr, pi0 = np.minimum(lfdr / max(pi0, _EPS), 1.0), 1.0
    return 1.0 - lfdr, 1.0 - pi0, p


def share_error(n: int, m: int) -> float:
    """Standard error of Storey's share 1 - 2 x (share of p-values above 1/2) with no images
    of no class: n training images, and m reference images whose median sets 1/2."""
    return 2.0 * float(np.sqrt(0.25 / max(n, 1) + 0.25 / max(m, 1)))


def upper_shift(reference: np.ndarray, bulk: np.ndarray) -> float:
    """How far the training images' upper quantiles lie from the validation images' (z).

    The share of the reference below the bulk's u-quantile is u, give or take
    a binomial spread of a reference this size (and the bulk's own), when both
    come from one distribution. Upper quantiles (u = 0.75, 0.9): images of no
    class sit in the bulk's lower tail and move them little. Returns the z of
    larger size; 0 where either side is too small to tell.
    """
    m, n = reference.size, bulk.size
    if m < 2 or n < 10:
        return 0.0
    reference = np.sort(reference)
    zs = []
    for u in _UPPER_LEVELS:
        below = np.searchsorted(reference, np.quantile(bulk, u), side="right") / m
        zs.append((below - u) * np.sqrt(m / (u * (1 - u) * (1 + m / n))))
    return float(max(zs, key=abs))


def collected_apart(stat_val: np.ndarray, val_y: np.ndarray, stat_train: np.ndarray,
                    nearest_class: np.ndarray, n_classes: int) -> bool:
    """Whether the validation set reads as collected apart from the training set: the upper
    quantiles of the outlier statistic differ in the median class by more than
    _APART_Z.

    A validation set taken elsewhere (other photographers, writers, a later
    crawl) moves the statistic of every class, top included; a folder full of
    images of no class moves its own lower tail. Then the reference must move to
    each class's bulk (aligned_reference); otherwise it stays, and the share of
    images of no class (Storey) stays estimable (after the move it is 0 by
    construction: half the bulk lies above the moved median).
    """
    shifts = [upper_shift(stat_val[val_y == c], stat_train[nearest_class == c])
              for c in range(n_classes) if np.any(val_y == c)]
    return bool(shifts) and abs(float(np.median(shifts))) > _APART_Z


def aligned_reference(reference: np.ndarray, bulk: np.ndarray) -> np.ndarray:
    """The validation images' statistics (the null's shape), moved to the location and spread
    of the training images' bulk (median, MAD), sorted.

    A validation set collected apart from the training set (other photographers,
    writers, a later crawl) shifts the statistic of every training image alike;
    the median and MAD of the training images themselves (Efron's empirical null)
    undo such a shift, and only an image far below its own set's bulk reads as an
    outlier. Fewer than 10 training images of the class: the reference as it is.
    """
    reference = np.sort(np.asarray(reference, np.float64))
    if reference.size < 2 or bulk.size < 10:
        return reference
    med_v, med_t = np.median(reference), np.median(bulk)
    mad_v = np.median(np.abs(reference - med_v))
    mad_t = np.median(np.abs(bulk - med_t))
    if mad_v <= _EPS or mad_t <= _EPS:
        return reference - med_v + med_t
    return med_t + (reference - med_v) * (mad_t / mad_v)


# --------------------------------------------------------------------------- main entry

def label_decisions(train_features: Any, train_labels: Any, val_features: Any, val_labels: Any,
                    n_classes: int, train_values: Any = None, val_values: Any = None,
                    value_scale: Any = None, center: Any = None,
                    options: DecisionOptions | None = None, reviewed: int = 0,
                    verdicts: tuple[Any, Any] | None = None) -> LabelDecisions:
    """Decide every training image from the training-values and the validation set.

    train_features (n, D) (may be memory-mapped: read in blocks), train_labels
    (n,) given labels, val_features (m, D), val_labels (m,) true labels;
    train_values (n, K), val_values (m, K): every class's value net on the
    images; value_scale (K,): each class's mean |Monte-Carlo value| (the
    view's unit); center (D,): the feature centre (default: the training
    mean). Without the value inputs the decision uses the validation set and
    the neighbourhood alone. reviewed: the last `reviewed` validation rows (and
    values) are training images a person labelled. They were chosen (the
    review queue takes the most uncertain first), not sampled, so they train
    the trusted classifier, but the stack, the class prior and the outlier
    reference, which need a sample of the data, come from the other rows.
    verdicts: (rows, right) the training rows a person put in a class (kept
    or relabelled) and whether each one's given label was right (kept under
    it); they fit step 4.
    """
    options = options or DecisionOptions()
    given = np.asarray(train_labels, np.int64)
    val_y = np.asarray(val_labels, np.int64)
    n, K, reviewed = given.size, int(n_classes), int(reviewed)
    _check_inputs(train_features, given, val_features, val_y, K, reviewed)
    if center is None:
        center = _mean_rows(train_features)
    train = FeatureView(train_features, np.asarray(center, np.float64))
    val = normalize(val_features, np.asarray(center, np.float64))
    sample = val.shape[0] - reviewed
    person = (val[sample:], val_y[sample:])
    val, val_y = val[:sample], val_y[:sample]
    if val_values is not None:
        val_values = np.asarray(val_values)[:sample]
    m = val.shape[0]
    rng = np.random.default_rng([options.seed, 7])
    pool_rows = (np.arange(n) if n <= options.pool
                 else np.sort(rng.choice(n, options.pool, replace=False)))
    pool = train[pool_rows]
    self_in_pool = np.full(n, -1, np.int64)
    self_in_pool[pool_rows] = np.arange(pool_rows.size)
    info: dict = {"pool": int(pool_rows.size)}

    # Similar images, once: the neighbourhood views and the outlier statistic share them.
    # The outlier statistic needs up to k_val x (pool / validation images of a class).
    counts = np.bincount(given[pool_rows], minlength=K)
    val_counts = np.maximum(np.bincount(val_y, minlength=K), 1)
    k_needed = options.outlier_neighbours * 2 * counts.max() / val_counts.min()
    k_nb = max(options.neighbours, options.regime_neighbours)  # neighbours whose rows are used
    k_big = int(min(max(k_nb, k_needed if options.outliers else 0), 500, pool_rows.size - 1))
    # one pass over the training images (memory-mapped: read once) for both searches, and
    # one over the validation images
    k_out = options.outlier_neighbours if options.outliers else 0
    (nb_train, sim_train), (_, train_val) = top_similar_many(
        train, [(pool, k_big, self_in_pool, k_nb), (val, k_out + 1 if k_out else 0, None, 0)])
    (nb_val, sim_val), (_, val_val) = top_similar_many(
        val, [(pool, k_big, None, k_nb), (val, k_out, np.arange(m), 0)])

    # 1. views of the true class, stacked on the validation set
    trusted, C, val_trusted = fit_trusted(val, val_y, K, options.trusted_C, options.folds,
                                          options.seed, person)
    info["trusted_C"] = C
    views_train = [np.log(class_probabilities(trusted, train, K))]
    views_val = [np.log(val_trusted)]
    pool_labels = given[pool_rows]
    k = options.neighbours
    names = ["trusted"]
    if options.neighbour_view:
        views_train.append(np.log(label_votes(pool_labels[nb_train[:, :k]], K)))
        views_val.append(np.log(label_votes(pool_labels[nb_val[:, :k]], K)))
        names.append("neighbours")
    if options.value_view and train_values is not None and val_values is not None:
        scale = np.ones(K) if value_scale is None else np.asarray(value_scale, np.float64)
        scale = np.maximum(np.abs(scale), _EPS)
        views_train.append(np.asarray(train_values, np.float64) / scale)
        views_val.append(np.asarray(val_values, np.float64) / scale)
        names.append("values")
    params = fit_stack(views_val, val_y, K)
    info["view_weights"] = dict(zip(names, params[:len(names)].round(4).tolist()))
    # the stack learnt the validation set's class prior: divide it out
    val_prior = np.bincount(val_y, minlength=K) / m
    P = stacked(views_train, params) / np.maximum(val_prior, _EPS)
    P /= P.sum(axis=1, keepdims=True)
    review = None
    if verdicts is not None and np.asarray(verdicts[0]).size:
        plain = trusted if person[1].size == 0 else _refit(val, val_y, C)
        rows_r = np.asarray(verdicts[0], np.int64)
        review = (rows_r, np.asarray(verdicts[1], bool),
                  _unlearnt_probabilities(plain, train[rows_r], [v[rows_r] for v in views_train],
                                          params, val_prior))
    del views_train  # (n, K) each: large for many classes

    # 2. images of no class (before step 3: they should not count in its estimates)
    Q, prior = prior_shift(P)
    if options.outliers:
        p_out, share, _ = outlier_probability(sim_train, train_val, sim_val, val_val, val_y, Q,
                                              prior, pool_rows.size,
                                              options.outlier_neighbours, self_in_pool >= 0)
    else:
        p_out, share = np.zeros(n), 0.0
    info["outlier_share"] = round(share, 4)
    inset = 1.0 - p_out
    Q, prior = prior_shift(P, inset)

    # 3. the own label: class-conditional noise and noise that follows appearance
    regime_nb = pool_rows[nb_train[:, :options.regime_neighbours]]
    post_cc, composition = group_posterior(P, given, K, inset)
    lam, share_app = 0.0, np.zeros(n)
    if options.appearance:
        _, share_app = appearance_share(post_cc, given, regime_nb, K, inset)
        # the compositions again, now that part of the labelling follows appearance
        post_cc, composition = group_posterior(P, given, K, inset, share_app, Q)
        lam, share_app = appearance_share(post_cc, given, regime_nb, K, inset)
    info["appearance_share"] = round(lam, 4)

    # 4. what the reviews say about the labels where the images are ambiguous
    if review is not None:
        rows_r, right, P_r = review
        doubt = review_doubt(P_r, given[rows_r], right, composition, prior, share_app[rows_r])
        info["review_doubt"] = round(doubt, 4)
        share_app = doubt + (1 - doubt) * share_app
        post_cc, composition = group_posterior(P, given, K, inset, share_app, Q)
    posterior = (1 - share_app)[:, None] * post_cc + share_app[:, None] * Q
    rows = np.arange(n)
    p_label = posterior[rows, given]

    # decisions
    # log-odds from both sides' own small terms (1 - p loses them near 1: far-off images
    # would all tie at the clip and the ranking among them would be lost)
    in_other = posterior.copy()
    in_other[rows, given] = 0.0
    right = (1 - p_out) * p_label
    wrong = p_out + (1 - p_out) * in_other.sum(axis=1)
    score = np.log(np.maximum(right, _TINY)) - np.log(np.maximum(wrong, _TINY))
    in_other[rows, given] = -1  # the best other class
    suggested = in_other.argmax(axis=1)
    del in_other
    confidence = (1 - p_out) * posterior[rows, suggested]
    decisions = np.full(n, CLEAN, dtype=object)
    flagged = score < options.threshold
    is_outlier = flagged & (p_out > (1 - p_out) * (1 - p_label))
    decisions[flagged] = DIRTY
    if options.relabel:
        decisions[flagged & ~is_outlier & (confidence >= options.relabel_confidence)] = RELABEL
    decisions[is_outlier] = OUTLIER
    suggested = np.where(is_outlier, -1, suggested).astype(np.int64)
    return LabelDecisions(decisions=decisions.astype(str), score=score, p_label=p_label,
                          p_outlier=p_out, class_posterior=posterior, suggested=suggested,
                          confidence=np.where(is_outlier, 0.0, confidence),
                          noise_rate=1 - np.diag(composition), info=info)


def _mean_rows(features: Any) -> np.ndarray:
    total = np.zeros(features.shape[1])
    for start in range(0, features.shape[0], 8 * _BLOCK):
        total += np.asarray(features[start:start + 8 * _BLOCK], np.float64).sum(axis=0)
    return total / max(features.shape[0], 1)


def _check_inputs(train_features: Any, given: np.ndarray, val_features: Any, val_y: np.ndarray,
                  n_classes: int, reviewed: int = 0) -> None:
    if train_features.shape[0] != given.size:
        raise TvcleanError(f"{train_features.shape[0]} training feature rows but {given.size} "
                           f"labels")
    if val_features.shape[0] != val_y.size:
        raise TvcleanError(f"{val_features.shape[0]} validation feature rows but {val_y.size} "
                           f"labels")
    if train_features.shape[1] != val_features.shape[1]:
        raise TvcleanError(f"training features have {train_features.shape[1]} dimensions, "
                           f"validation features {val_features.shape[1]}")
    for name, labels in (("training", given), ("validation", val_y)):
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise TvcleanError(f"{name} labels must lie in 0..{n_classes - 1}")
    if not 0 <= reviewed < val_y.size:
        raise TvcleanError(f"{reviewed} of {val_y.size} validation images said to be reviewed: "
                           f"the decision needs a validation sample besides them")
    missing = np.setdiff1d(np.arange(n_classes), val_y[:val_y.size - reviewed])
    if missing.size:
        raise TvcleanError(f"class {int(missing[0])} has no validation image; the posterior "
                           f"decision needs every class in the validation set")
    if given.size < 2:
        raise TvcleanError("the posterior decision needs at least 2 training images")
