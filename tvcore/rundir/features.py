"""RUN/features/: the feature matrices and indexes of both splits, written resumably, read back.

<split>.npy is float32 (rows, D), one row per row of <split>_index.csv (rows
of images that could not be decoded are zero). While a split is being
extracted its rows go into <split>.npy.partial (memory-mapped, its space
reserved up front so that a full disk is an error, not a crash) and
<split>.progress.json records which row ranges are done, after those rows
reached the file; a re-run continues from there, locally or on a cluster.
<split>_files.npy records every image file's size and modification time as
they were when its extraction began, so a finished run can tell that an image
was overwritten since (its features would be of the old picture).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomicfile import atomic_save_npy, atomic_write_json, load_npy, read_json
from ..errors import TvcleanError, os_error_cause
from .ownership import check_no_overlap
from .run import RunDir
from .tables import read_index, write_index


@dataclass
class Split:
    """One split's features and index.

    features: (rows, D) float32, memory-mapped; row i belongs to index row i.
    labels: (rows,) int64 class index (given label).
    paths: absolute image path of every row; given: the path as the user gave it.
    ok: (rows,) bool, False where the image could not be decoded (errors: why).
    """

    features: np.ndarray
    labels: np.ndarray
    paths: list[str]
    ok: np.ndarray
    given: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

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


def load_split(run: RunDir, name: str, class_names: Sequence[str]) -> Split:
    index_path = run.require(f"features/{name}_index.csv", "extract")
    index = read_index(index_path, class_names)
    features = load_npy(run.features / f"{name}.npy", mmap=True)
    if features.ndim != 2 or features.shape[0] != len(index.paths):
        raise TvcleanError(
            f"{run.features / (name + '.npy')}: shape {features.shape} does not match "
            f"{len(index.paths)} rows of {name}_index.csv; re-run `tvclean extract`")
    return Split(features=features, labels=index.labels, paths=index.abs_paths, ok=index.ok,
                 given=index.paths, errors=index.errors)


def load_features(run: str | Path | RunDir) -> FeatureSet:
    """Load RUN/features as a FeatureSet (features memory-mapped)."""
    run = RunDir.of(run)
    meta = read_json(run.require("features/meta.json", "extract"))
    classes = list(meta["classes"])
    return FeatureSet(class_names=classes, train=load_split(run, "train", classes),
                      val=load_split(run, "val", classes), meta=meta)


def check_inputs_outside(run: RunDir, features: FeatureSet | None = None) -> None:
    """Refuse a run whose recorded input folders overlap it (every stage checks)."""
    if features is None and not (run.features / "meta.json").exists():
        return  # nothing extracted: no inputs recorded
    meta = features.meta if features is not None else read_json(run.features / "meta.json")
    folders = [meta[k] for k in ("train_root", "val_root")
               if meta.get(k) and Path(meta[k]).suffix.lower() != ".csv"]
    check_no_overlap(run.root, [*folders, *meta.get("input_folders", [])])


def file_stats(paths: Sequence[str]) -> np.ndarray:
    """(n, 2) int64: each file's size and modification time in ns (-1, -1: cannot be read)."""
    stats = np.full((len(paths), 2), -1, np.int64)
    for i, path in enumerate(paths):
        try:
            found = os.stat(path)
        except OSError:
            continue
        stats[i] = found.st_size, found.st_mtime_ns
    return stats


def save_file_stats(run: RunDir, split: str, stats: np.ndarray) -> None:
    """Record the split's file_stats as they were when its extraction began."""
    atomic_save_npy(run.features / f"{split}_files.npy", stats)


def changed_file(run: RunDir, split: str, paths: Sequence[str]) -> str | None:
    """The first of `paths` whose size or modification time differs from the record made
    when the split was extracted; None when none does, or for a run made before the
    record existed."""
    record = run.features / f"{split}_files.npy"
    if not record.exists():
        return None
    before = load_npy(record)
    if before.shape != (len(paths), 2):
        return paths[0] if paths else None
    differs = np.flatnonzero((file_stats(paths) != before).any(axis=1))
    return paths[int(differs[0])] if differs.size else None


class SplitWriter:
    """Writes one split's features/<split>.npy and <split>_index.csv, resumably.

    Rows arrive as ranges [first, stop) in any order (the local path sends
    them in order, a cluster as they finish); `remaining(step)` lists the
    ranges still to do, cut at multiples of `step` (batch boundaries).
    """

    def __init__(self, run: RunDir, name: str, given: Sequence[str], paths: Sequence[str],
                 labels: Sequence[int], classes: Sequence[str], fingerprint: str, dim: int):
        self.run, self.name, self.classes = run, name, list(classes)
        self.given, self.paths, self.labels = list(given), list(paths), list(labels)
        self.final = run.features / f"{name}.npy"
        self.partial = run.features / f"{name}.npy.partial"
        self.state_path = run.features / f"{name}.progress.json"
        self.state = self._load_state(fingerprint, dim)
        self.matrix: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def complete(self) -> bool:
        return bool(self.state["complete"])

    def _load_state(self, fingerprint: str, dim: int) -> dict[str, Any]:
        """The record of an earlier, interrupted run of this same work, or a fresh one."""
        fresh = {"fingerprint": fingerprint, "rows": len(self), "dim": dim, "done": [],
                 "errors": {}, "complete": False}
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return fresh
        if not isinstance(state, dict):
            return fresh
        if "done" not in state:  # the older record: contiguous rows_done plus shards_done
            state["done"] = _merge([[0, int(state.get("rows_done", 0))],
                                    *state.get("shards_done", [])])
        same = all(state.get(key) == fresh[key] for key in ("fingerprint", "rows", "dim"))
        usable = self.partial.exists() or (state.get("complete") and self.final.exists())
        return state if same and usable else fresh

    def remaining(self, step: int) -> list[tuple[int, int]]:
        """Row ranges still to extract, cut at multiples of step; opens the .partial matrix."""
        if self.complete:
            return []
        if not self.state["done"] or not self.partial.exists():
            self.state.update(done=[], errors={})
            self.matrix = _new_matrix(self.partial, (len(self), self.state["dim"]))
        else:
            self.matrix = np.lib.format.open_memmap(self.partial, mode="r+")
        return gaps(len(self), self.state["done"], step)

    def write(self, first: int, features: np.ndarray, errors: dict[int, str]) -> None:
        """Store rows first..first+len(features) and their decoding errors (by row offset)."""
        assert self.matrix is not None, "remaining() opens the matrix"
        stop = first + len(features)
        self.matrix[first:stop] = features
        for row in range(first, stop):
            self.state["errors"].pop(str(row), None)
        self.state["errors"].update({str(first + i): message for i, message in errors.items()})
        self.state["done"] = _merge(self.state["done"] + [[first, stop]])

    @property
    def rows_done(self) -> int:
        return sum(stop - first for first, stop in self.state["done"])

    def checkpoint(self) -> None:
        if self.matrix is not None and not self.complete:
            self.matrix.flush()  # rows reach the file before the record that says they are done
            atomic_write_json(self.state_path, self.state)

    def finish(self) -> None:
        """Write the index, mark the split complete, and move the matrix to its final name."""
        if not self.complete:
            if self.rows_done != len(self):
                raise AssertionError(f"{self.name}: {self.rows_done} of {len(self)} rows done")
            if self.matrix is not None:
                self.matrix.flush()
                self.matrix = None
            write_index(self.run.features / f"{self.name}_index.csv", self.given, self.paths,
                        self.labels, self.classes, self.error_rows())
            self.state["complete"] = True
            atomic_write_json(self.state_path, self.state)
        if self.partial.exists():
            os.replace(self.partial, self.final)

    def error_rows(self) -> dict[int, str]:
        return {int(row): message for row, message in self.state["errors"].items()}

    def discard_progress(self) -> None:
        self.state_path.unlink(missing_ok=True)


def _new_matrix(path: Path, shape: tuple[int, int]) -> np.memmap:
    """A zeroed .npy memory map whose disk space is reserved now: writing pages of a sparse
    file on a full disk would kill the process with SIGBUS."""
    matrix = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    try:
        with open(path, "r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, os.path.getsize(path))
    except OSError as exc:
        del matrix
        path.unlink(missing_ok=True)
        raise TvcleanError(f"cannot reserve {shape[0] * shape[1] * 4 / 2**20:.0f} MiB for "
                           f"{path}: {os_error_cause(exc)}") from None
    return matrix


def _merge(ranges: list) -> list[list[int]]:
    """Sorted, merged [first, stop) ranges (empty ones dropped)."""
    merged: list[list[int]] = []
    for first, stop in sorted((int(a), int(b)) for a, b in ranges if int(b) > int(a)):
        if merged and first <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([first, stop])
    return merged


def gaps(rows: int, done: list, step: int) -> list[tuple[int, int]]:
    """Ranges of 0..rows not in `done`, cut at multiples of step."""
    todo, row = [], 0
    for first, stop in _merge(done) + [[rows, rows]]:
        if first > row:
            cuts = list(range((row // step + 1) * step, first, step))
            todo += list(zip([row] + cuts, cuts + [first]))
        row = max(row, stop)
    return todo
