"""Reading the extracted features of a run (RUN/features/) back as arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import TvcleanError
from . import RunDir, load_npy, read_csv, read_json

INDEX_HEADER = ("path", "label", "class_name", "status", "error")


@dataclass
class Split:
    """One split's features and index.

    features: (rows, D) float32, memory-mapped; row i belongs to index row i.
    labels: (rows,) int64 class index (given label).
    paths: image path of every row.
    ok: (rows,) bool, False where the image could not be decoded.
    """

    features: np.ndarray
    labels: np.ndarray
    paths: list[str]
    ok: np.ndarray

    @property
    def ok_rows(self) -> np.ndarray:
        """Row numbers of the usable images, ascending."""
        return np.flatnonzero(self.ok)


@dataclass
class FeatureSet:
    """Train and validation features of a run, with the class names."""

    class_names: list[str]
    train: Split
    val: Split
    meta: dict

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def dim(self) -> int:
        return int(self.train.features.shape[1])


def load_split(run: RunDir, name: str) -> Split:
    run.require(f"features/{name}_index.csv", "extract")
    rows = read_csv(run.features / f"{name}_index.csv")
    features = load_npy(run.features / f"{name}.npy", mmap=True)
    if features.ndim != 2 or features.shape[0] != len(rows):
        raise TvcleanError(
            f"{run.features / (name + '.npy')}: shape {features.shape} does not match "
            f"{len(rows)} rows of {name}_index.csv; re-run `tvclean extract`")
    labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    ok = np.array([r["status"] == "ok" for r in rows], dtype=bool)
    return Split(features=features, labels=labels, paths=[r["path"] for r in rows], ok=ok)


def load_features(run: str | Path | RunDir) -> FeatureSet:
    """Load RUN/features as a FeatureSet (features memory-mapped)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    meta = read_json(run.require("features/meta.json", "extract"))
    return FeatureSet(class_names=list(meta["classes"]), train=load_split(run, "train"),
                      val=load_split(run, "val"), meta=meta)
