"""Feature normalisation for the Monte-Carlo heads and the value nets.

"center-l2": subtract the mean training feature, then scale every vector to
length 1. The heads then see features of one scale whatever the CNN, so one
learning rate fits every model, and dot products are cosine similarities of
centred features (on raw ReLU features every dot product is positive and
dominated by vector lengths).
"""

from __future__ import annotations

from typing import Any

import numpy as np

CHUNK_ROWS = 64  # rows per pass: a pass's float64 buffers (1 MiB at D=2048) stay in cache
CENTER_CHUNK_ROWS = 512  # the mean's partial sums (a change would move its last bits)


def fit_center(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mean (D,) float64 of features[rows], read in chunks."""
    total = np.zeros(features.shape[1])
    for start in range(0, rows.size, CENTER_CHUNK_ROWS):
        chunk = rows[start:start + CENTER_CHUNK_ROWS]
        total += np.asarray(features[chunk], np.float64).sum(axis=0)
    return total / max(rows.size, 1)


def normalize(features: np.ndarray, center: np.ndarray | None, rows: Any = None) -> np.ndarray:
    """(n, D) float32 centred, unit-length rows of features[rows] (rows None: every row);
    center None: the rows unchanged (float32).

    Gathers and normalises CHUNK_ROWS rows at a time in two float64 buffers, so
    no copy of the whole selection and no large temporary is ever made.
    """
    if isinstance(rows, slice):
        features, rows = features[rows], None
    elif rows is not None:
        rows = np.asarray(rows)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows
    n = features.shape[0] if rows is None else len(rows)
    out = np.empty((n, features.shape[1]), np.float32)
    width = min(CHUNK_ROWS, n)
    centred, squares = np.empty((width, features.shape[1])), np.empty((width, features.shape[1]))
    for start in range(0, n, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n)
        part = features[start:stop] if rows is None else features[rows[start:stop]]
        if center is None:
            out[start:stop] = part
            continue
        x = centred[:stop - start]
        np.subtract(part, center, out=x)
        # the same sum as np.linalg.norm(x, axis=1), so the values do not change
        norms = np.sqrt(np.add.reduce(np.multiply(x, x, out=squares[:stop - start]), axis=1))
        x /= np.where(norms > 0, norms, 1.0)[:, None]
        out[start:stop] = x
    return out


class FeatureView:
    """Rows of a feature matrix, normalised on access (memory-mapped input stays on disk).

    Supports `view[rows]` (rows: an index array or a slice) and `.shape`, which
    is all the value nets and the Monte-Carlo set-up need.
    """

    def __init__(self, features: np.ndarray, center: np.ndarray | None):
        self.features = features
        self.center = center
        self.shape = features.shape
        self.ndim = 2
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, rows: Any) -> np.ndarray:
        return normalize(self.features, self.center, rows)

    def __len__(self) -> int:
        return self.shape[0]
