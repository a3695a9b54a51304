"""The `filter` stage: Training-ValueNets, predicted values, decisions and the split data set.

Reads RUN/features and RUN/estimates; writes RUN/valuenets, RUN/training_values.csv
and RUN/clean, RUN/dirty, RUN/outlier (see tvcore.rundir).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..engine.decisions import Validation, fit_class_valuenets, score_training_set
from ..engine.estimates import Estimates
from ..engine.featurenorm import FeatureView
from ..engine.valuenet import ValueNet, load_valuenets, save_valuenets
from ..rundir import FeatureSet, RunDir, load_estimates, load_features
from ..rundir.features import check_inputs_outside
from ..rundir.review import (
    Review,
    apply_reviews,
    drop_changed,
    final_label,
    read_reviews,
    review_path,
)
from ..rundir.splitdata import placements, relative_name, write_split_dataset
from ..rundir.tables import DECISIONS, TrainingValues, training_values_table, write_training_values
from .estimate import reviewed_rows


@dataclass
class FilterResult:
    """Values and decisions of every training image (aligned with train_index.csv)."""

    table: TrainingValues
    counts: dict[str, int]
    per_class: dict[str, dict[str, int]]
    foreign: list[str] = field(default_factory=list)  # files in clean/, dirty/ left in place
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)  # what the posterior rule estimated

    @property
    def values(self) -> np.ndarray:
        return self.table.value

    @property
    def scores(self) -> np.ndarray:
        return self.table.score

    @property
    def decisions(self) -> list[str]:
        return self.table.decision

    @property
    def suggested(self) -> list[str]:
        return self.table.suggested_label


def _fingerprint(est: Estimates, config: Config) -> str:
    digest = hashlib.sha256(json.dumps(vars(config.valuenet), sort_keys=True).encode())
    for array in (est.rows, est.mean, np.zeros(0) if est.center is None else est.center):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def train_valuenets(run: RunDir, features: FeatureSet, est: Estimates, config: Config,
                    warnings: list[str]) -> dict[int, ValueNet]:
    """One regressor per class from its MC estimates; reused if RUN/valuenets is up to date.

    The nets see the features as the Monte-Carlo heads did (normalised if they were).
    """
    fingerprint = _fingerprint(est, config)
    if (run.valuenets / "meta.json").exists():
        nets, meta = load_valuenets(run.valuenets)
        if meta.get("fingerprint") == fingerprint:
            return nets
    nets = fit_class_valuenets(FeatureView(features.train.features, est.center), est,
                               features.class_names, config, warnings)
    save_valuenets(run.valuenets, nets, {"fingerprint": fingerprint,
                                         "classes": features.class_names,
                                         "config": vars(config.valuenet)})
    return nets


def _per_class(features: FeatureSet, decisions: list[str]) -> dict[str, dict[str, int]]:
    table = {name: {d: 0 for d in DECISIONS} for name in features.class_names}
    for label, decision in zip(features.train.labels, decisions):
        table[features.class_names[label]][decision] += 1
    return table


def filter_run(run: str | Path | RunDir,
               config: Config | Mapping[str, Mapping[str, Any]] | None = None,
               progress: bool | None = None) -> FilterResult:
    """Train the value nets, predict every image's value, decide, write the outputs.

    config: a Config, or {section: {option: value}} overrides of the run's
    config.toml (see tvcore.config.resolve_config).
    """
    run = RunDir.of(run)
    check_inputs_outside(run)
    run.require_stages("extract", "estimate")
    with run.writing("filter"):
        return _filter(run, run.resolve(config), progress)


# Above this share of images called of no class, say what else it can mean.
_MANY_OUTLIERS = 0.10


def _outlier_warning(counts: Mapping[str, int], run: RunDir) -> list[str]:
    """A validation set collected a little apart from the training set (another source,
    other photographers, a later crawl) can look to the outlier test like many images of
    no class; a shift too small to be told apart from them moves nothing, one just
    larger can move many images (README, Cleaning quality: "Open set")."""
    outliers = counts["outlier"]
    readable = sum(counts.values()) - counts["error"]
    if not readable or outliers <= _MANY_OUTLIERS * readable:
        return []
    return [f"{outliers} of {readable} images ({outliers / readable:.0%}) read as of no class "
            f"({run.root / 'outlier'}): if your validation images were collected apart from "
            f"the training images, that difference can look like this; if they belong to "
            f"their classes, rerun `tvclean filter {run.root} --no-outliers`"]


def _filter(run: RunDir, full: Config, progress: bool | None) -> FilterResult:
    started = time.perf_counter()
    features = load_features(run)
    est = load_estimates(run, features)
    warnings: list[str] = []
    nets = train_valuenets(run, features, est, full, warnings)
    train = features.train
    view = FeatureView(train.features, est.center)
    # read once (a page may save meanwhile), each reviewed file hashed once
    reviews, changed = drop_changed(read_reviews(run, features.class_names),
                                    dict(zip(features.train.given, features.train.paths)))
    trusted = trusted_images(run, features, full, reviews)
    scored = score_training_set(view, train.labels, train.ok_rows, est, nets, features.n_classes,
                                full.filter, trusted, full.valuenet.seed)
    if full.filter.method == "posterior":
        scored.info["trusted_reviewed"] = int(trusted.labels.size - features.val.ok_rows.size)
    table = training_values_table(train.labels, features.class_names, scored, est, train.given,
                                  train.paths)
    unknown = apply_reviews(table, reviews) + changed
    counts = {d: table.decision.count(d) for d in DECISIONS}
    warnings.extend(_outlier_warning(counts, run))
    if unknown:
        warnings.append(f"{unknown} review(s) in {review_path(run)} name images that are not in "
                        f"this run's training set, or files changed since they were reviewed; "
                        f"they were ignored")
    # The split first: if it fails (a full disk, a name in the way), training_values.csv and
    # config.toml still describe the folders as they are.
    split = write_split_dataset(run, _placements(features, table, full.filter.prefix_values),
                                full.filter.output, progress)
    write_training_values(run.training_values, table)
    if split.foreign:
        warnings.append(f"{len(split.foreign)} file(s) in {run.root} that tvclean did not "
                        f"create were left in place, e.g. {split.foreign[0]}")
    result = FilterResult(table=table, counts=counts,
                          per_class=_per_class(features, table.decision), foreign=split.foreign,
                          warnings=warnings, seconds=time.perf_counter() - started,
                          info=scored.info)
    run.save_config(full, ["valuenet", "filter"])
    for warning in warnings:
        run.log(f"filter: warning: {warning}")
    if scored.info:
        run.log(f"filter: posterior rule: {json.dumps(scored.info)}")
    run.log(f"filter: {result.counts['clean']} clean, {result.counts['dirty']} dirty, "
            f"{result.counts['outlier']} outlier, "
            f"{result.counts['relabel']} relabelled, {result.counts['error']} unreadable, "
            f"{sum(s == 'reviewed' for s in table.decision_source)} reviewed (method "
            f"{full.filter.method}, threshold {full.filter.threshold}, "
            f"output {full.filter.output}), {result.seconds:.2f}s")
    run.record_stage("filter", result.seconds, **result.counts)
    return result


def trusted_images(run: RunDir, features: FeatureSet, config: Config,
                   reviews: dict[str, Review] | None = None) -> Validation:
    """What the posterior rule may trust: the readable validation images and, with
    estimate.use_reviews, the training images a person kept or relabelled (`reviews`, as
    reviewed_rows takes them; None: read RUN/review.csv)."""
    if not config.estimate.use_reviews:
        return Validation.of(features.val, features.train)
    return Validation.of(features.val, features.train, reviewed_rows(run, features, reviews)[1])


def _placements(features: FeatureSet, table: TrainingValues, prefix_values: bool) -> Any:
    """Where every image goes: clean/, dirty/ or outlier/, under its final class (a relabelled image
    under its new one), at its path below its class folder."""
    roots = [r for r in (features.meta.get("train_root"),) if r]
    names, folders, classes = [], [], []
    for i, path in enumerate(features.train.paths):
        name = relative_name(path, table.given_label[i], roots)
        if prefix_values and not np.isnan(table.score[i]):
            head, _, leaf = name.rpartition("/")
            name = (head + "/" if head else "") + f"{table.score[i]:+.6e}_{leaf}"
        names.append(name)
        folders.append("clean" if table.decision[i] == "relabel" else table.decision[i])
        classes.append(final_label(table, i))
    return placements(features.train.paths, folders, classes, names)


def load_training_values(run: str | Path | RunDir) -> Any:
    """RUN/training_values.csv as a pandas DataFrame (the columns of
    tvcore.rundir.tables; the same shape as tvcore.find_label_issues' frame, plus paths)."""
    from ..rundir.tables import read_training_values

    run = RunDir.of(run)
    return read_training_values(run.require("training_values.csv", "filter")).frame()
