"""The one set-up of the algorithm's inputs, for arrays and for run directories alike.

`from_arrays` validates what a Python user passes, as scikit-learn does at its
boundary: array-likes and DataFrames, labels of any hashable type (strings,
integers with gaps), matching lengths and widths, finite values (the error
names the row, and its file where there is one). `from_feature_set` wraps a
run's memory-mapped features without copying them. `monte_carlo_problem`
then picks the subset and builds the engine's problem for either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import EstimateConfig
from ..errors import TvcleanError
from .featurenorm import FeatureView, fit_center
from .montecarlo import MonteCarloProblem, Subset, select_subset

CHUNK_ROWS = 8192  # rows per pass when checking (memory-mapped) features


@dataclass
class LabeledSplit:
    """One split: features (n, D) (an array or a memory map), labels (n,) int64 class
    indices, ok (n,) bool usable rows, and names[i] of row i for messages (or None)."""

    features: Any
    labels: np.ndarray
    ok: np.ndarray
    names: Sequence[str] | None = None

    def __len__(self) -> int:
        return int(self.labels.size)

    @property
    def ok_rows(self) -> np.ndarray:
        return np.flatnonzero(self.ok)

    def name(self, row: int) -> str:
        return f"row {row}" if self.names is None else str(self.names[row])


@dataclass
class ValuationInputs:
    """Training and validation splits over one list of classes (index k = classes[k])."""

    classes: list[Any]
    train: LabeledSplit
    val: LabeledSplit
    warnings: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [str(c) for c in self.classes]

    @property
    def dim(self) -> int:
        return int(self.train.features.shape[1])


def from_arrays(features: Any, labels: Any, val_features: Any, val_labels: Any,
                classes: Sequence[Any] | None = None) -> ValuationInputs:
    """Check and encode array inputs.

    features (n, D), val_features (m, D): array-likes or DataFrames of numbers;
    labels (n,), val_labels (m,): class labels of any one hashable type (the
    classes, sorted, unless `classes` gives them in order).
    """
    train_x = _matrix(features, "features")
    val_x = _matrix(val_features, "val_features")
    train_y = _labels(labels, "labels", train_x.shape[0], "features")
    val_y = _labels(val_labels, "val_labels", val_x.shape[0], "val_features")
    if train_x.shape[1] != val_x.shape[1]:
        raise TvcleanError(f"features have {train_x.shape[1]} columns but val_features have "
                           f"{val_x.shape[1]}; both must come from the same model")
    classes = _classes(train_y, val_y, classes)
    index = {c: k for k, c in enumerate(classes)}
    inputs = ValuationInputs(
        classes=classes,
        train=LabeledSplit(train_x, _encode(train_y, index, "labels"),
                           np.ones(train_x.shape[0], bool)),
        val=LabeledSplit(val_x, _encode(val_y, index, "val_labels"), np.ones(val_x.shape[0], bool)))
    check_inputs(inputs)
    return inputs


def from_feature_set(feature_set: Any) -> ValuationInputs:
    """The inputs of a run directory (a tvcore.rundir.FeatureSet; nothing is copied)."""
    train, val = feature_set.train, feature_set.val
    inputs = ValuationInputs(
        classes=list(feature_set.class_names),
        train=LabeledSplit(train.features, train.labels, train.ok, train.paths),
        val=LabeledSplit(val.features, val.labels, val.ok, val.paths))
    check_inputs(inputs)
    return inputs


def check_inputs(inputs: ValuationInputs) -> None:
    """Two classes or more, every class in both splits, finite usable rows."""
    if inputs.n_classes < 2:
        raise TvcleanError(f"need at least two classes to find mislabeled images, got "
                           f"{inputs.n_classes} ({', '.join(inputs.class_names) or 'none'})")
    for split, what in ((inputs.train, "training"), (inputs.val, "validation")):
        counts = np.bincount(split.labels[split.ok], minlength=inputs.n_classes)
        missing = [inputs.class_names[k] for k in np.flatnonzero(counts == 0)]
        if missing:
            raise TvcleanError(f"class {missing[0]!r} has no usable {what} image"
                               + (f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""))
        check_finite(split, what)


def check_finite(split: LabeledSplit, what: str) -> None:
    """Fail naming the first usable row whose features contain NaN or inf."""
    rows = split.ok_rows
    for start in range(0, rows.size, CHUNK_ROWS):
        chunk = rows[start:start + CHUNK_ROWS]
        bad = ~np.isfinite(np.asarray(split.features[chunk])).all(axis=1)
        if bad.any():
            raise TvcleanError(f"{what} features of {split.name(int(chunk[np.argmax(bad)]))} "
                               f"contain NaN or inf")


def feature_center(inputs: ValuationInputs, config: EstimateConfig) -> np.ndarray | None:
    """The centre used by feature normalisation (None: raw features)."""
    if config.feature_norm == "none":
        return None
    return fit_center(inputs.train.features, inputs.train.ok_rows)


def monte_carlo_problem(inputs: ValuationInputs, config: EstimateConfig,
                        exclude: np.ndarray | None = None,
                        extra_val: tuple[np.ndarray, np.ndarray] | None = None
                        ) -> tuple[Subset, MonteCarloProblem, np.ndarray | None]:
    """Select the subset and build the Monte-Carlo problem: (subset, problem, centre).

    exclude: training rows never drawn into the subset (e.g. reviewed images);
    extra_val: (rows, labels) of training images known to be labeled correctly
    (a person reviewed them), added to the validation images.
    """
    train, val = inputs.train, inputs.val
    eligible = train.ok_rows if exclude is None else np.setdiff1d(train.ok_rows, exclude)
    subset = select_subset(train.labels, val.labels, inputs.n_classes, config, eligible,
                           val.ok_rows, inputs.class_names)
    center = feature_center(inputs, config)
    val_feats = FeatureView(val.features, center)[subset.val_rows]
    val_labels = val.labels[subset.val_rows]
    if extra_val is not None and extra_val[0].size:
        rows, labels = extra_val
        val_feats = np.vstack([val_feats, FeatureView(train.features, center)[rows]])
        val_labels = np.concatenate([val_labels, np.asarray(labels, np.int64)])
    problem = MonteCarloProblem(
        FeatureView(train.features, center)[subset.train_rows], train.labels[subset.train_rows],
        val_feats, val_labels, inputs.n_classes, config)
    return subset, problem, center


# --- array checks ---------------------------------------------------------------------------

def _matrix(data: Any, name: str) -> np.ndarray:
    values = data.to_numpy() if hasattr(data, "to_numpy") else data
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise TvcleanError(f"{name} must be a 2-D array of numbers ({exc})") from None
    if array.ndim != 2:
        raise TvcleanError(f"{name} must be a 2-D array (rows, features), got shape "
                           f"{array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise TvcleanError(f"{name} is empty (shape {array.shape})")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise TvcleanError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    return array


def _labels(data: Any, name: str, rows: int, of: str) -> np.ndarray:
    values = data.to_numpy() if hasattr(data, "to_numpy") else data
    array = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    if array.ndim == 2 and 1 in array.shape:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise TvcleanError(f"{name} must be 1-D (one label per row), got shape {array.shape}")
    if array.size != rows:
        raise TvcleanError(f"{name} has {array.size} entries but {of} has {rows} rows")
    for i, label in enumerate(array.tolist()):
        if label is None or (isinstance(label, float) and not np.isfinite(label)):
            raise TvcleanError(f"{name}[{i}] is missing ({label!r})")
    return array


def _classes(train_y: np.ndarray, val_y: np.ndarray, given: Sequence[Any] | None) -> list[Any]:
    if given is not None:
        classes = list(given)
        if len(set(classes)) != len(classes):
            raise TvcleanError("classes must not repeat a class")
        return classes
    seen = set(train_y.tolist()) | set(val_y.tolist())
    try:
        return sorted(seen)
    except TypeError:
        kinds = sorted({type(label).__name__ for label in seen})
        raise TvcleanError(f"labels must be of one kind to be sorted into classes, got "
                           f"{', '.join(kinds)}; or pass classes=[...]") from None


def _encode(labels: np.ndarray, index: dict[Any, int], name: str) -> np.ndarray:
    try:
        return np.array([index[label] for label in labels.tolist()], np.int64)
    except KeyError as exc:
        raise TvcleanError(f"{name} holds {exc.args[0]!r}, which is not one of the "
                           f"classes") from None
