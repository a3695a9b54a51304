"""The Monte-Carlo training-values of a subset of the training set (one container for every path)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Estimates:
    """Monte-Carlo training-values of the subset examples (aligned arrays)."""

    rows: np.ndarray  # (n,) int64 row numbers into the training features
    labels: np.ndarray  # (n,) int64 given labels
    mean: np.ndarray  # (n,) float64 mean validation-loss drop
    stderr: np.ndarray  # (n,) float64 standard error of the mean (NaN where count < 2)
    count: np.ndarray  # (n,) int64 number of drops averaged
    val_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (m,)
    episodes: int = 0
    history: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    history_episodes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    center: np.ndarray | None = None  # (D,) feature-normalisation centre; None: raw features
    # (r,) int64 training rows a person reviewed as correctly labeled, used as validation
    review_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
