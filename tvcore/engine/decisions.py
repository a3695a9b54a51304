"""From Monte-Carlo estimates to decisions: per-class value nets, predicted values, scores,
decisions and suggested labels. The filter stage and the array API both run `score_training_set`.

Two decision rules (filter.method): "posterior" (default; tvcore.engine.posterior: the
probability that the given label is right, from the training-values and what the clean
validation set says directly) and "threshold" (value + z x standard error < threshold;
with z 0 and decide_by "valuenet" the original's rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import Config, FilterConfig
from ..errors import TvcleanError
from .estimates import Estimates
from .featurenorm import FeatureView, fit_center
from .posterior import CLEAN, OUTLIER, DecisionOptions, label_decisions
from .valuenet import PREDICT_ROWS, NetStack, ValueNet, can_fit, fit_valuenets

ROWS_PER_READ = PREDICT_ROWS  # feature rows read at once when predicting
NO_SUGGESTION = -1
SET_ASIDE = ("dirty", "outlier")  # not kept (a relabelled image is kept, under its new class)


@dataclass
class Scored:
    """Every training row's value, score, decision and suggestion (aligned with the rows)."""

    values: np.ndarray  # (n,) float64 training-value used (own MC estimate or value net), NaN unusable
    stderr: np.ndarray  # (n,) float64 standard error in the score
    # (n,) float64 posterior: log-odds that the given label is right; threshold: value +
    # confidence_z x stderr; NaN unusable
    scores: np.ndarray
    decisions: np.ndarray  # (n,) str: "clean", "dirty", "relabel", "outlier" or "error"
    suggested: np.ndarray  # (n,) int64 suggested class index, NO_SUGGESTION where none
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # what the posterior rule estimated

    @property
    def dirty(self) -> np.ndarray:
        """Set aside: discarded or of no class (relabelled images are kept)."""
        return np.isin(self.decisions, SET_ASIDE)


def fit_class_valuenets(features: Any, est: Estimates, class_names: list[str],
                        config: Config, warnings: list[str]) -> dict[int, ValueNet]:
    """One regressor per class from its MC estimates (features: all training rows).

    Classes with too few estimates get no net; a warning says so.
    """
    per_class, fallback = {}, []
    for k, name in enumerate(class_names):
        in_class = est.labels == k
        if can_fit(int(in_class.sum()), config.valuenet):
            per_class[k] = (features[est.rows[in_class]], est.mean[in_class])
        else:
            fallback.append(name)
    if fallback:
        warnings.append(f"too few Monte-Carlo estimates to train a value net for "
                        f"{', '.join(fallback)}: their estimates are used directly")
    return fit_valuenets(per_class, config.valuenet, threads=config.estimate.threads)


def class_values(features: Any, rows: np.ndarray, est: Estimates, nets: dict[int, ValueNet],
                 n_classes: int) -> np.ndarray:
    """(len(rows), K) predicted training-value of each row under every class's net.

    A class without a net values every image at the mean of its MC estimates.
    Features are read ROWS_PER_READ rows at a time (they may be memory-mapped).
    """
    out = np.empty((rows.size, n_classes))
    fallback = {k: float(est.mean[est.labels == k].mean()) if np.any(est.labels == k) else 0.0
                for k in range(n_classes) if k not in nets}
    with_net = [k for k in range(n_classes) if k in nets]
    for k, value in fallback.items():
        out[:, k] = value
    stack = NetStack([nets[k] for k in with_net])
    for start in range(0, rows.size, ROWS_PER_READ):
        part = rows[start:start + ROWS_PER_READ]
        out[start:start + part.size, with_net] = stack.predict(features[part])
    return out


def predict_values(features: Any, labels: np.ndarray, rows: np.ndarray, est: Estimates,
                   nets: dict[int, ValueNet], n_classes: int) -> np.ndarray:
    """Predicted training-value of `rows` with their class's net (NaN for other rows).

    A class without a net uses its MC estimates, and their mean for rows outside the subset.
    """
    values = np.full(labels.size, np.nan)
    for k in range(n_classes):
        class_rows = rows[labels[rows] == k]
        if k in nets:
            values[class_rows] = _predict_rows(nets[k], features, class_rows)
        else:
            in_class = est.labels == k
            values[class_rows] = est.mean[in_class].mean() if in_class.any() else 0.0
            values[est.rows[in_class]] = est.mean[in_class]
    return values


def _predict_rows(net: ValueNet, features: Any, rows: np.ndarray) -> np.ndarray:
    out = np.empty(rows.size)
    for start in range(0, rows.size, ROWS_PER_READ):
        part = rows[start:start + ROWS_PER_READ]
        out[start:start + part.size] = net.predict(features[part])
    return out


def suggest_labels(features: Any, labels: np.ndarray, rows: np.ndarray, own_scores: np.ndarray,
                   est: Estimates, nets: dict[int, ValueNet], n_classes: int,
                   config: FilterConfig) -> np.ndarray:
    """For each row, the other class whose net values the image most, where that is
    confident: the value under it, less confidence_z x that class's typical standard error,
    clears the threshold and the image's own score (else NO_SUGGESTION).

    own_scores: (len(rows),) the score the decision used for each row.
    """
    suggestion = np.full(rows.size, NO_SUGGESTION, np.int64)
    if rows.size == 0:
        return suggestion
    values = class_values(features, rows, est, nets, n_classes)
    values -= config.confidence_z * class_stderr(est, n_classes)[None, :]
    values[np.arange(rows.size), labels[rows]] = -np.inf
    best = values.argmax(axis=1)
    best_value = values[np.arange(rows.size), best]
    confident = (best_value >= config.threshold) & (best_value > own_scores)
    suggestion[confident] = best[confident]
    return suggestion


def class_stderr(est: Estimates, n_classes: int) -> np.ndarray:
    """(K,) median standard error of each class's Monte-Carlo estimates (0 without any)."""
    stderr = np.nan_to_num(est.stderr, nan=0.0)
    return np.array([np.median(stderr[est.labels == k]) if np.any(est.labels == k) else 0.0
                     for k in range(n_classes)])


def decision_scores(predicted: np.ndarray, labels: np.ndarray, est: Estimates,
                    config: FilterConfig, n_classes: int) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """(values, stderr, scores): score = value + confidence_z x standard error.

    Images in the Monte-Carlo subset use their own estimate and standard error
    (decide_by "mc") or the regressor's value; images outside it use the
    regressor's value and the median standard error of their class's estimates.
    """
    stderr_mc = np.nan_to_num(est.stderr, nan=0.0)
    values = predicted.copy()
    stderr = class_stderr(est, n_classes)[labels]
    if config.decide_by == "mc":
        values[est.rows] = est.mean
        stderr[est.rows] = stderr_mc
    stderr = np.where(np.isnan(predicted), np.nan, stderr)
    return values, stderr, values + config.confidence_z * stderr


def decide(scores: np.ndarray, threshold: float) -> np.ndarray:
    decisions = np.where(scores < threshold, "dirty", "clean").astype(object)
    decisions[np.isnan(scores)] = "error"
    return decisions


@dataclass
class Validation:
    """The trusted images the posterior rule learns from: raw features and true labels."""

    features: np.ndarray  # (m, D) as extracted (not normalised)
    labels: np.ndarray  # (m,) int64
    reviewed: int = 0  # the last rows are reviewed training images (chosen, not sampled)
    # (training rows, right): the reviewed training images a person put in a class and whether
    # the given label was right (the person kept it under that label)
    verdicts: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def of(cls, val: Any, train: Any,
           reviewed: tuple[np.ndarray, np.ndarray] | None = None) -> Validation:
        """The usable rows of a validation split (features, labels, ok_rows), the training
        images a person says are labeled correctly (reviewed = (rows, their labels); train:
        the training split, features and given labels) and the verdicts on their labels."""
        rows = val.ok_rows
        parts, labels = [np.asarray(val.features[rows])], [val.labels[rows]]
        n_reviewed = 0 if reviewed is None else int(reviewed[0].size)
        if reviewed is not None and n_reviewed:
            parts.append(np.asarray(train.features[reviewed[0]]))
            labels.append(reviewed[1])
        verdicts = None if reviewed is None else _verdicts(reviewed, train.labels)
        return cls(features=np.concatenate(parts), labels=np.concatenate(labels),
                   reviewed=n_reviewed, verdicts=verdicts)


def _verdicts(kept: tuple[np.ndarray, np.ndarray], given: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, whether the given label was right) from the rows a person kept or
    relabelled and their labels (kept). Discarded rows are left out: an image of no class
    says nothing about whether labels in the set follow the class."""
    rows, labels = np.asarray(kept[0], np.int64), np.asarray(kept[1], np.int64)
    return rows, labels == np.asarray(given)[rows]


def score_training_set(features: FeatureView, labels: np.ndarray, ok_rows: np.ndarray,
                       est: Estimates, nets: dict[int, ValueNet], n_classes: int,
                       config: FilterConfig, validation: Validation | None = None,
                       seed: int = 0) -> Scored:
    """Values, scores, decisions and suggestions of every training row.

    features: the (n, D) training features as the value nets see them (a
    FeatureView with the heads' centre); labels (n,) given labels; ok_rows:
    the usable rows (others get "error"). validation: needed by the posterior
    rule (filter.method "posterior").
    """
    predicted = predict_values(features, labels, ok_rows, est, nets, n_classes)
    values, stderr, scores = decision_scores(predicted, labels, est, config, n_classes)
    if config.method == "posterior":
        if validation is None:
            raise TvcleanError("filter.method \"posterior\" needs the validation set")
        return posterior_scored(features, labels, ok_rows, est, nets, n_classes, config,
                                validation, values, seed)
    decisions = decide(scores, config.threshold)
    suggested = np.full(labels.size, NO_SUGGESTION, np.int64)
    suggested[ok_rows] = suggest_labels(features, labels, ok_rows, scores[ok_rows], est, nets,
                                        n_classes, config)
    return Scored(values=values, stderr=stderr, scores=scores, decisions=decisions,
                  suggested=suggested)


class RowSubset:
    """Rows `rows` of a (possibly memory-mapped) matrix, read only when sliced."""

    def __init__(self, matrix: Any, rows: np.ndarray):
        self.matrix, self.rows = matrix, np.asarray(rows, np.int64)
        self.shape = (self.rows.size, matrix.shape[1])

    def __getitem__(self, index: Any) -> np.ndarray:
        return np.asarray(self.matrix[self.rows[index]])

    def __len__(self) -> int:
        return int(self.rows.size)


def posterior_scored(features: FeatureView, labels: np.ndarray, ok_rows: np.ndarray,
                     est: Estimates, nets: dict[int, ValueNet], n_classes: int,
                     config: FilterConfig, validation: Validation, values: np.ndarray,
                     seed: int, extra: dict[str, Any] | None = None) -> Scored:
    """The posterior rule (tvcore.engine.posterior.label_decisions) on the usable rows.

    The value nets see the features as the heads did; the rule itself works on
    centred unit-length features (centre: the heads' one, else the training mean).
    The score's standard error is not defined (NaN): its distance from the
    threshold, in log-odds, is the decision's certainty. extra: further
    DecisionOptions fields (the benchmark's ablations).
    """
    raw = features.features
    center = features.center if features.center is not None else fit_center(raw, ok_rows)
    val_raw = np.asarray(validation.features)
    val_view = FeatureView(val_raw, features.center)
    scale = np.array([np.abs(est.mean[est.labels == k]).mean() if np.any(est.labels == k)
                      else 1.0 for k in range(n_classes)])
    options = DecisionOptions(neighbours=config.neighbours, outliers=config.outliers,
                              relabel=config.relabel,
                              relabel_confidence=config.relabel_confidence,
                              threshold=config.threshold, seed=seed, **(extra or {}))
    made = label_decisions(
        RowSubset(raw, ok_rows), labels[ok_rows], val_raw, validation.labels, n_classes,
        train_values=class_values(features, ok_rows, est, nets, n_classes),
        val_values=class_values(val_view, np.arange(val_raw.shape[0]), est, nets, n_classes),
        value_scale=scale, center=center, options=options, reviewed=validation.reviewed,
        verdicts=_ok_positions(validation.verdicts, ok_rows))
    n = labels.size
    scores = np.full(n, np.nan)
    decisions = np.full(n, "error", dtype=object)
    suggested = np.full(n, NO_SUGGESTION, np.int64)
    scores[ok_rows], decisions[ok_rows] = made.score, made.decisions
    # a suggestion for every set-aside image of some class, and where another class is more
    # likely than the given one
    rows = np.arange(ok_rows.size)
    better = (made.suggested >= 0) & (
        (made.class_posterior[rows, np.maximum(made.suggested, 0)] > made.p_label)
        | (made.decisions != CLEAN))
    suggested[ok_rows] = np.where(better, made.suggested, NO_SUGGESTION)
    info = {**made.info, "noise_rate": np.round(made.noise_rate, 4).tolist(),
            "outliers": int((made.decisions == OUTLIER).sum())}
    stderr = np.full(n, np.nan)
    return Scored(values=values, stderr=stderr, scores=scores, decisions=decisions,
                  suggested=suggested, info=info)


def _ok_positions(verdicts: tuple[np.ndarray, np.ndarray] | None, ok_rows: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """Verdicts on training rows as positions among the usable rows (ok_rows, sorted)."""
    if verdicts is None:
        return None
    rows, right = verdicts
    position = np.minimum(np.searchsorted(ok_rows, rows), max(ok_rows.size - 1, 0))
    usable = ok_rows.size > 0 and np.asarray(ok_rows[position] == rows)
    return position[usable], np.asarray(right, bool)[usable]

