"""Training-ValueNet on arrays (no files): `find_label_issues` and `training_values`.

    issues = tvcore.find_label_issues(features, labels, val_features, val_labels)
    issues.frame            # one row per training example, as training_values.csv
    issues.ranked           # row numbers, most likely mislabeled first
    issues.is_label_issue   # (n,) bool

Inputs are validated as scikit-learn does (see tvcore.engine.problem); the
run-directory stages go through the same set-up and the same decisions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import Config, resolve_config
from .engine import montecarlo
from .engine.decisions import (
    NO_SUGGESTION,
    Scored,
    Validation,
    fit_class_valuenets,
    score_training_set,
)
from .engine.estimates import Estimates
from .engine.featurenorm import FeatureView
from .engine.problem import ValuationInputs, from_arrays, monte_carlo_problem
from .engine.valuenet import ValueNet
from .errors import TvcleanError


@dataclass
class ValueResult:
    """Predicted values and decisions of every training row, with the MC estimates."""

    values: np.ndarray  # (n,) float64 training-value the decision used, NaN for unusable rows
    scores: np.ndarray  # (n,) float64 decision scores (value + confidence_z x stderr)
    dirty: np.ndarray  # (n,) bool: score below the threshold
    mc: Estimates
    nets: dict[int, ValueNet]
    scored: Scored
    inputs: ValuationInputs
    warnings: list[str] = field(default_factory=list)
    reviewed: dict[int, int | None] = field(default_factory=dict)  # row -> class, None: discard


def training_values(train_features: Any, train_labels: Any, val_features: Any, val_labels: Any,
                    config: Config | Mapping[str, Mapping[str, Any]] | None = None,
                    classes: Sequence[Any] | None = None,
                    reviewed: Mapping[int, int | None] | None = None) -> ValueResult:
    """The whole Training-ValueNet algorithm on arrays.

    train_features (n, D), train_labels (n,) weak labels, val_features (m, D),
    val_labels (m,) correct labels; config: a Config, or {section: {option:
    value}} overrides of the defaults. reviewed: what a person decided,
    {training row: its class index, or None to discard}: as in a run
    directory, those images are left out of the Monte-Carlo subset, the ones
    with a class join the validation set (with that class) of the
    Monte-Carlo phase and of the decision rule's trusted classifier (not the
    rule's calibration: they are chosen, not sampled), and their decisions
    are the person's.
    """
    config = _config(config)
    inputs = from_arrays(train_features, train_labels, val_features, val_labels, classes)
    reviewed = dict(reviewed or {})
    exclude, extra = _review_rows(reviewed, inputs) if config.estimate.use_reviews and reviewed \
        else (None, None)
    subset, problem, center = monte_carlo_problem(inputs, config.estimate, exclude, extra)
    acc = montecarlo.estimate_values(problem)
    train = inputs.train
    est = Estimates(rows=subset.train_rows, labels=train.labels[subset.train_rows],
                    mean=acc.mean, stderr=acc.stderr, count=acc.count, val_rows=subset.val_rows,
                    episodes=acc.episodes, center=center, warnings=list(subset.warnings))
    warnings = list(subset.warnings)
    view = FeatureView(train.features, center)
    nets = fit_class_valuenets(view, est, inputs.class_names, config, warnings)
    scored = score_training_set(view, train.labels, train.ok_rows, est, nets, inputs.n_classes,
                                config.filter, Validation.of(inputs.val, train, extra),
                                config.valuenet.seed)
    apply_reviews(scored, train.labels, reviewed)
    return ValueResult(values=scored.values, scores=scored.scores, dirty=scored.dirty, mc=est,
                       nets=nets, scored=scored, inputs=inputs, warnings=warnings,
                       reviewed=reviewed)


def apply_reviews(scored: Scored, given: np.ndarray, reviewed: Mapping[int, int | None]) -> None:
    """Make a person's decisions the reviewed rows' decisions (in place): a class keeps the
    image (relabelled when it is not the given one), None discards it."""
    for row, label in reviewed.items():
        scored.decisions[row] = "dirty" if label is None else (
            "clean" if label == int(given[row]) else "relabel")
        if label is not None and label != int(given[row]):
            scored.suggested[row] = label


def _review_rows(reviewed: dict[int, int | None], inputs: ValuationInputs
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    n, k = len(inputs.train), inputs.n_classes
    for row, label in reviewed.items():
        if not 0 <= row < n or (label is not None and not 0 <= label < k):
            raise TvcleanError(f"reviewed: row {row} (of {n}) or class {label} (of {k}) is out "
                               f"of range")
    correct = sorted(r for r, label in reviewed.items() if label is not None)
    return (np.array(sorted(reviewed), np.int64),
            (np.array(correct, np.int64), np.array([reviewed[r] for r in correct], np.int64)))


def _config(config: Config | Mapping[str, Mapping[str, Any]] | None) -> Config:
    if isinstance(config, Config):
        return resolve_config(None, config)
    return resolve_config(None, None, {k: dict(v) for k, v in (config or {}).items()}, "config")


@dataclass
class LabelIssues:
    """The result of `find_label_issues`.

    frame: a pandas DataFrame, one row per training example (index = row
    number) with the columns of training_values.csv but the paths:
    given_label, given_label_index, decision, is_label_issue, score, value,
    stderr, mc_value, mc_stderr, mc_count, suggested_label, rank.
    ranked: row numbers sorted from most to least likely mislabeled.
    """

    frame: Any
    ranked: np.ndarray
    result: ValueResult

    @property
    def is_label_issue(self) -> np.ndarray:
        return self.frame["is_label_issue"].to_numpy()

    @property
    def issues(self) -> np.ndarray:
        """Row numbers of the label issues, most likely first (cleanlab's ranked indices)."""
        mask = self.is_label_issue
        return self.ranked[mask[self.ranked]]


def find_label_issues(features: Any, labels: Any, val_features: Any, val_labels: Any, *,
                      config: Config | Mapping[str, Mapping[str, Any]] | None = None,
                      classes: Sequence[Any] | None = None, episodes: int | None = None,
                      seed: int | None = None, threshold: float | None = None) -> LabelIssues:
    """Find the training examples whose labels do harm, from features and a clean validation set.

    features (n, D), val_features (m, D): arrays, lists or DataFrames;
    labels (n,), val_labels (m,): class labels of any hashable type.
    config: a Config, or {section: {option: value}} overrides; episodes, seed
    and threshold are shortcuts for estimate.episodes, estimate.seed (and
    valuenet.seed) and filter.threshold.
    """
    config = _config(config)
    if episodes is not None:
        config.estimate.episodes = episodes
    if seed is not None:
        config.estimate.seed = config.valuenet.seed = seed
    if threshold is not None:
        config.filter.threshold = threshold
    result = training_values(features, labels, val_features, val_labels, config.validate(),
                             classes)
    frame = result_table(result).frame(with_paths=False)
    return LabelIssues(frame=frame, ranked=np.argsort(frame["rank"].to_numpy(), kind="stable"),
                       result=result)


def result_table(result: ValueResult, paths: Sequence[str] | None = None,
                 abs_paths: Sequence[str] | None = None) -> Any:
    """The training_values table (tvcore.rundir.tables.TrainingValues) of a result."""
    from .rundir.tables import ISSUE_DECISIONS, training_values_table

    table = training_values_table(result.inputs.train.labels, result.inputs.class_names,
                                  result.scored, result.mc, paths, abs_paths)
    for row, label in result.reviewed.items():
        table.decision_source[row] = "reviewed"
        table.is_label_issue[row] = table.decision[row] in ISSUE_DECISIONS
        table.reviewed_label[row] = "" if label is None else result.inputs.class_names[label]
    return table


__all__ = ["LabelIssues", "ValueResult", "find_label_issues", "training_values",
           "NO_SUGGESTION"]
