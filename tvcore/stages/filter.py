"""The `filter` stage: Training-ValueNets, predicted values, decisions and the split data set.

Reads RUN/features and RUN/estimates; writes RUN/valuenets, RUN/training_values.csv
and RUN/clean, RUN/dirty (see tvcore.rundir).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import Config, FilterConfig
from .estimate import Estimates, load_estimates
from ..rundir.featureset import FeatureSet, load_features
from ..rundir import RunDir, atomic_write_csv, read_csv
from ..rundir.splitdata import check_outside_inputs, relative_name, write_split_dataset
from ..engine.valuenet import ValueNet, load_valuenets, save_valuenets
from ..engine.featurenorm import FeatureView
from ..engine.decisions import decision_scores, fit_class_valuenets, predict_values, suggest_labels

# score: the number the decision compares with the threshold (see values.decision_scores)
TRAINING_VALUES_HEADER = ("path", "label", "class_name", "predicted_value", "mc_value",
                          "mc_stderr", "mc_count", "score", "decision", "suggested_label")


@dataclass
class FilterResult:
    """Predicted values and decisions of every training image (aligned with train_index.csv)."""

    values: np.ndarray  # (n,) float64 predicted training-value, NaN for unreadable images
    scores: np.ndarray  # (n,) float64 decision score (value + z x stderr), NaN likewise
    decisions: list[str]  # "clean", "dirty" or "error"
    suggested: list[str]  # suggested class name for dirty images ("" if none)
    counts: dict[str, int]
    per_class: dict[str, dict[str, int]]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


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


def decide(scores: np.ndarray, threshold: float) -> list[str]:
    return ["error" if np.isnan(v) else ("dirty" if v < threshold else "clean") for v in scores]


def _per_class(features: FeatureSet, decisions: list[str]) -> dict[str, dict[str, int]]:
    table = {name: {"clean": 0, "dirty": 0, "error": 0} for name in features.class_names}
    for label, decision in zip(features.train.labels, decisions):
        table[features.class_names[label]][decision] += 1
    return table


def _write_training_values(run: RunDir, features: FeatureSet, est: Estimates,
                           result: FilterResult) -> None:
    mc = {int(r): (m, s, c) for r, m, s, c in zip(est.rows, est.mean, est.stderr, est.count)}
    train, names = features.train, features.class_names

    def rows():
        for i, (path, label) in enumerate(zip(train.paths, train.labels)):
            m, s, c = mc.get(i, ("", "", ""))
            yield (path, int(label), names[label], _number(result.values[i]),
                   "" if m == "" else repr(float(m)), "" if s == "" else repr(float(s)),
                   c if c == "" else int(c), _number(result.scores[i]), result.decisions[i],
                   result.suggested[i])

    atomic_write_csv(run.training_values, TRAINING_VALUES_HEADER, rows())


def _number(value: float) -> str:
    return "" if np.isnan(value) else repr(float(value))


def _split_items(features: FeatureSet, result: FilterResult, prefix_values: bool):
    meta = features.meta
    roots = [r for r in (meta.get("train_root"),) if r]
    items = []
    for i, (path, label) in enumerate(zip(features.train.paths, features.train.labels)):
        decision = result.decisions[i]
        if decision == "error":
            continue
        class_name = features.class_names[label]
        name = relative_name(path, class_name, roots)
        if prefix_values:
            name = name.with_name(f"{result.scores[i]:+.6e}_{name.name}")
        items.append((path, decision, class_name, str(name)))
    return items


def filter_run(run: str | Path | RunDir, config: FilterConfig | Config | None = None,
               progress: bool | None = None) -> FilterResult:
    """Train the value nets, predict every image's value, decide, write the outputs."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    full = config if isinstance(config, Config) else Config(filter=config or FilterConfig())
    full.filter.validate()
    full.valuenet.validate()
    started = time.perf_counter()
    features = load_features(run)
    est = load_estimates(run, features)
    if full.filter.output != "none":
        check_outside_inputs(run.root, [features.meta[k] for k in ("train_root", "val_root")
                                        if features.meta.get(k)])
    warnings: list[str] = []
    nets = train_valuenets(run, features, est, full, warnings)
    train = features.train
    view = FeatureView(train.features, est.center)
    values = predict_values(view, train.labels, train.ok_rows, est, nets, features.n_classes)
    scores = decision_scores(values, train.labels, est, full.filter, features.n_classes)
    decisions = decide(scores, full.filter.threshold)
    dirty_rows = np.array([i for i, d in enumerate(decisions) if d == "dirty"], np.int64)
    suggested = [""] * len(decisions)
    for row, label in zip(dirty_rows, suggest_labels(view, train.labels, dirty_rows, nets,
                                                     full.filter.threshold)):
        suggested[row] = features.class_names[label] if label >= 0 else ""
    result = FilterResult(values=values, scores=scores, decisions=decisions, suggested=suggested,
                          counts={d: decisions.count(d) for d in ("clean", "dirty", "error")},
                          per_class=_per_class(features, decisions), warnings=warnings)
    _write_training_values(run, features, est, result)
    write_split_dataset(run.root, _split_items(features, result, full.filter.prefix_values),
                        full.filter.output, progress)
    result.seconds = time.perf_counter() - started
    run.save_config(full, ["valuenet", "filter"])
    for warning in warnings:
        run.log(f"filter: warning: {warning}")
    run.log(f"filter: {result.counts['clean']} clean, {result.counts['dirty']} dirty, "
            f"{result.counts['error']} unreadable (threshold {full.filter.threshold}, "
            f"output {full.filter.output}), {result.seconds:.2f}s")
    return result


def load_training_values(run: str | Path | RunDir) -> list[dict[str, str]]:
    """The rows of RUN/training_values.csv."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    return read_csv(run.require("training_values.csv", "filter"))
