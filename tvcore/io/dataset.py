"""Finding the images of a data set: class folders or a CSV manifest.

Layouts:
    TRAIN_DIR/<class>/...  and  VAL_DIR/<class>/...   (nested folders included)
    ROOT/train/<class>/... and  ROOT/val/<class>/...  (one root)
    a CSV manifest with columns path,label (paths relative to the manifest),
    one per split, or one with a `split` column (train/val) for both.
Classes are sorted by name; label k is the k-th class. Hidden and non-image
files are skipped and counted. User files are only ever read.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TvcleanError

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff",
    ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
})
SPLITS = ("train", "val")


@dataclass
class SplitFiles:
    """The images of one split, grouped by class (folder images sorted by path,
    manifest rows in file order).

    paths: absolute path of every image. labels: (n,) int64 class index.
    skipped: files passed over, by reason ("hidden", "not an image",
    "outside class folders").
    """

    name: str
    source: Path
    paths: list[str]
    labels: np.ndarray
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Dataset:
    """Train and validation images with their sorted class names."""

    classes: list[str]
    train: SplitFiles
    val: SplitFiles

    @property
    def splits(self) -> tuple[SplitFiles, SplitFiles]:
        return (self.train, self.val)


def discover(train: str | Path, val: str | Path | None = None) -> Dataset:
    """Find the images of both splits.

    train, val: a class-folder root or a .csv manifest each; val may be None
    when train is a root holding train/ and val/, or a manifest with a
    `split` column.
    """
    train, val = _split_sources(Path(train), None if val is None else Path(val))
    train_items, train_skipped = _read_source("train", train)
    val_items, val_skipped = _read_source("val", val)
    classes = _check_classes(train_items, train, val_items, val)
    index = {name: k for k, name in enumerate(classes)}
    return Dataset(classes=classes,
                   train=_split_files("train", train, train_items, train_skipped, index),
                   val=_split_files("val", val, val_items, val_skipped, index))


def _split_sources(train: Path, val: Path | None) -> tuple[Path, Path]:
    """Resolve the two sources; (source, source) means one manifest with a split column."""
    if not train.exists():
        raise TvcleanError(f"training data not found: {train}")
    if val is not None:
        if not val.exists():
            raise TvcleanError(f"validation data not found: {val}")
        return train, val
    if _is_manifest(train):
        return train, train
    if (train / "train").is_dir() and (train / "val").is_dir():
        return train / "train", train / "val"
    raise TvcleanError(f"no validation data: give VAL_DIR, or a TRAIN_DIR holding train/ and "
                       f"val/ folders, or a manifest with a split column ({train})")


def _is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".csv"


def _read_source(split: str, source: Path) -> tuple[dict[str, list[str]], Counter]:
    """Images by class name, and counts of skipped files, from a folder or manifest."""
    if _is_manifest(source):
        return _read_manifest(split, source)
    if source.is_dir():
        return _read_folders(split, source)
    raise TvcleanError(f"{split} data must be a folder or a .csv manifest: {source}")


def _read_folders(split: str, root: Path) -> tuple[dict[str, list[str]], Counter]:
    skipped: Counter = Counter()
    images: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):
            skipped["hidden"] += 1
        elif entry.is_dir():
            images[entry.name] = _images_below(Path(entry.path), skipped)
            if not images[entry.name]:
                raise TvcleanError(f"class {entry.name!r} of the {split} split has no images: "
                                   f"{entry.path}")
        else:
            skipped["outside class folders"] += 1
    if not images:
        raise TvcleanError(f"the {split} split has no class folders: {root}")
    return images, skipped


def _images_below(folder: Path, skipped: Counter) -> list[str]:
    """Absolute paths of the image files in folder and its subfolders, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        hidden_dirs = [d for d in dirnames if d.startswith(".")]
        if hidden_dirs:
            skipped["hidden"] += len(hidden_dirs)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            reason = _skip_reason(name)
            if reason:
                skipped[reason] += 1
            else:
                found.append(os.path.abspath(os.path.join(dirpath, name)))
    return sorted(found)


def _skip_reason(name: str) -> str | None:
    if name.startswith("."):
        return "hidden"
    if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
        return "not an image"
    return None


def _read_manifest(split: str, manifest: Path) -> tuple[dict[str, list[str]], Counter]:
    """Rows of a path,label CSV (optionally with a split column) for one split."""
    skipped: Counter = Counter()
    images: dict[str, list[str]] = {}
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or ())
        if not {"path", "label"} <= columns:
            raise TvcleanError(f"{manifest}: needs a header with columns path,label, "
                               f"found {', '.join(reader.fieldnames or ['nothing'])}")
        for line, row in enumerate(reader, start=2):
            if "split" in columns and _row_split(row, manifest, line) != split:
                continue
            path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
            if not path or not label:
                raise TvcleanError(f"{manifest}, line {line}: empty path or label")
            reason = _skip_reason(os.path.basename(path))
            if reason:
                skipped[reason] += 1
                continue
            images.setdefault(label, []).append(os.path.abspath(manifest.parent / path))
    if not images:
        raise TvcleanError(f"the {split} split has no images: {manifest}")
    return images, skipped


def _row_split(row: dict, manifest: Path, line: int) -> str:
    value = (row.get("split") or "").strip()
    if value not in SPLITS:
        raise TvcleanError(f"{manifest}, line {line}: split must be train or val, got {value!r}")
    return value


def _check_classes(train: dict[str, list[str]], train_source: Path,
                   val: dict[str, list[str]], val_source: Path) -> list[str]:
    """The sorted class names; every class must be in both splits."""
    for name in sorted(train):
        if name not in val:
            raise TvcleanError(f"class {name!r} is in the train split but not in the val split "
                               f"({val_source})")
    for name in sorted(val):
        if name not in train:
            raise TvcleanError(f"class {name!r} is in the val split but not in the train split "
                               f"({train_source})")
    return sorted(train)


def _split_files(name: str, source: Path, images: dict[str, list[str]], skipped: Counter,
                 index: dict[str, int]) -> SplitFiles:
    paths: list[str] = []
    labels: list[int] = []
    for class_name in sorted(images):
        paths.extend(images[class_name])
        labels.extend([index[class_name]] * len(images[class_name]))
    return SplitFiles(name=name, source=source, paths=paths,
                      labels=np.array(labels, dtype=np.int64), skipped=skipped)
