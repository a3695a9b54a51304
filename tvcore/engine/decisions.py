"""Training-ValueNet on arrays: MC estimates -> per-class regressors -> predicted values.

`training_values` runs the whole algorithm on feature matrices (no files);
the `estimate` and `filter` stages run the same steps on a run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import montecarlo
from ..config import Config, EstimateConfig, FilterConfig
from ..errors import TvcleanError
from .featurenorm import FeatureView, fit_center
from .valuenet import PREDICT_ROWS, ValueNet, can_fit, fit_valuenets

ROWS_PER_READ = PREDICT_ROWS  # feature rows read at once when predicting


@dataclass
class MonteCarloValues:
    """MC estimates of the subset examples (aligned arrays)."""

    rows: np.ndarray  # (n,) int64 row numbers into the training features
    labels: np.ndarray  # (n,) int64 given labels
    mean: np.ndarray  # (n,) float64
    stderr: np.ndarray  # (n,) float64
    count: np.ndarray  # (n,) int64


def fit_class_valuenets(features: np.ndarray, mc: MonteCarloValues, class_names: list[str],
                        config: Config, warnings: list[str]) -> dict[int, ValueNet]:
    """One regressor per class from its MC estimates (features: all training rows).

    Classes with too few estimates get no net; a warning says so.
    """
    per_class, fallback = {}, []
    for k, name in enumerate(class_names):
        in_class = mc.labels == k
        if can_fit(int(in_class.sum()), config.valuenet):
            per_class[k] = (features[mc.rows[in_class]], mc.mean[in_class])
        else:
            fallback.append(name)
    if fallback:
        warnings.append(f"too few Monte-Carlo estimates to train a value net for "
                        f"{', '.join(fallback)}: their estimates are used directly")
    return fit_valuenets(per_class, config.valuenet, threads=config.estimate.threads)


def predict_values(features: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                   mc: MonteCarloValues, nets: dict[int, ValueNet],
                   n_classes: int) -> np.ndarray:
    """Predicted training-value of `rows` with their class's net (NaN for other rows).

    A class without a net uses its MC estimates, and their mean for rows outside the subset.
    """
    values = np.full(labels.size, np.nan)
    for k in range(n_classes):
        class_rows = rows[labels[rows] == k]
        if k in nets:
            values[class_rows] = _predict_rows(nets[k], features, class_rows)
        else:
            in_class = mc.labels == k
            values[class_rows] = mc.mean[in_class].mean() if in_class.any() else 0.0
            values[mc.rows[in_class]] = mc.mean[in_class]
    return values


def _predict_rows(net: ValueNet, features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """net's predictions (len(rows),) for features[rows], read ROWS_PER_READ rows at a time
    (features may be memory-mapped and larger than memory)."""
    out = np.empty(rows.size)
    for start in range(0, rows.size, ROWS_PER_READ):
        part = rows[start:start + ROWS_PER_READ]
        out[start:start + part.size] = net.predict(features[part])
    return out


def suggest_labels(features: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                   nets: dict[int, ValueNet], threshold: float) -> np.ndarray:
    """For each row, the other class whose net values the image most (-1: none above threshold)."""
    suggestion = np.full(rows.size, -1, np.int64)
    if rows.size == 0 or not nets:
        return suggestion
    classes = np.array(sorted(nets))
    for start in range(0, rows.size, ROWS_PER_READ):  # bounded memory for memory-mapped features
        part = rows[start:start + ROWS_PER_READ]
        x = features[part]
        scores = np.stack([nets[k].predict(x) for k in classes], axis=1)
        scores[classes[None, :] == labels[part][:, None]] = -np.inf
        best = scores.argmax(axis=1)
        good = scores[np.arange(part.size), best] >= threshold
        suggestion[start + np.flatnonzero(good)] = classes[best[good]]
    return suggestion


def decision_scores(predicted: np.ndarray, labels: np.ndarray, mc: MonteCarloValues,
                    config: FilterConfig, n_classes: int) -> np.ndarray:
    """Score = value + confidence_z x standard error; images scoring below the threshold go.

    Images in the Monte-Carlo subset use their own estimate and standard error
    (decide_by "mc") or the regressor's value; images outside it use the
    regressor's value and the median standard error of their class's estimates.
    """
    stderr = np.nan_to_num(mc.stderr, nan=0.0)
    class_stderr = np.array([np.median(stderr[mc.labels == k]) if np.any(mc.labels == k)
                             else 0.0 for k in range(n_classes)])
    scores = predicted + config.confidence_z * class_stderr[labels]
    if config.decide_by == "mc":
        scores[mc.rows] = mc.mean + config.confidence_z * stderr
    scores[np.isnan(predicted)] = np.nan
    return scores


def check_converged(mean: np.ndarray, lr: float) -> None:
    """Fail clearly when the heads diverged (the values are not finite)."""
    if not np.all(np.isfinite(mean)):
        raise TvcleanError(f"the Monte-Carlo heads diverged (training-values are not finite); "
                           f"lower the learning rate (--lr, now {lr:g})")


def feature_center(train_features, ok_rows: np.ndarray, config: EstimateConfig):
    """The centre used by feature normalisation (None: raw features)."""
    if config.feature_norm == "none":
        return None
    return fit_center(train_features, ok_rows)


@dataclass
class ValueResult:
    """Predicted values and decisions of every training row, with the MC estimates."""

    values: np.ndarray  # (n,) float64 regressor-predicted values, NaN for unusable rows
    scores: np.ndarray  # (n,) float64 decision scores (see decision_scores)
    dirty: np.ndarray  # (n,) bool: score below the threshold
    mc: MonteCarloValues
    nets: dict[int, ValueNet]
    warnings: list[str] = field(default_factory=list)


def training_values(train_features, train_labels, val_features, val_labels,
                    config: Config | None = None, n_classes: int | None = None,
                    train_ok=None) -> ValueResult:
    """The whole Training-ValueNet algorithm on arrays.

    train_features (n, D), train_labels (n,) weak labels, val_features (m, D),
    val_labels (m,) correct labels; train_ok (n,) bool marks usable rows.
    """
    config = (config or Config()).validate()
    train_labels = np.asarray(train_labels, np.int64)
    val_labels = np.asarray(val_labels, np.int64)
    n_classes = n_classes or int(max(train_labels.max(), val_labels.max())) + 1
    names = [str(k) for k in range(n_classes)]
    ok_rows = np.flatnonzero(np.ones(train_labels.size, bool) if train_ok is None else train_ok)
    subset = montecarlo.select_subset(train_labels, val_labels, n_classes, config.estimate,
                                      ok_rows, None, names)
    center = feature_center(train_features, ok_rows, config.estimate)
    train_view = FeatureView(train_features, center)
    problem = montecarlo.MonteCarloProblem(
        train_view[subset.train_rows], train_labels[subset.train_rows],
        FeatureView(val_features, center)[subset.val_rows], val_labels[subset.val_rows],
        n_classes, config.estimate)
    acc = montecarlo.estimate_values(problem)
    check_converged(acc.mean, config.estimate.lr)
    mc = MonteCarloValues(rows=subset.train_rows, labels=train_labels[subset.train_rows],
                          mean=acc.mean, stderr=acc.stderr, count=acc.count)
    warnings = list(subset.warnings)
    nets = fit_class_valuenets(train_view, mc, names, config, warnings)
    values = predict_values(train_view, train_labels, ok_rows, mc, nets, n_classes)
    scores = decision_scores(values, train_labels, mc, config.filter, n_classes)
    dirty = ~np.isnan(scores) & (scores < config.filter.threshold)
    return ValueResult(values=values, scores=scores, dirty=dirty, mc=mc, nets=nets,
                       warnings=warnings)
