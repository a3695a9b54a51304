"""Finding the images of a data set: class folders or a CSV manifest.

Layouts:
    TRAIN_DIR/<class>/...  and  VAL_DIR/<class>/...   (nested folders included)
    ROOT/train/<class>/... and  ROOT/val/<class>/...  (one root)
    a CSV manifest with columns path,label (paths relative to the manifest),
    one per split, or one with a `split` column (train/val) for both.
Classes are sorted by name; label k is the k-th class. Hidden and non-image
files are skipped and counted; symbolic links to folders are followed
wherever they are (a link back to a folder already walked is skipped and
counted). User files are only ever read.

Class names become folder names in RUN/clean/ and RUN/dirty/, so they are
checked: no empty names, path separators, "..", NUL or control characters,
and no two that differ only in case. A data set needs two classes or more,
no image listed twice, and no image that is in both splits (the same file,
or one with identical bytes): the validation set must be independent.
"""

from __future__ import annotations

import csv
import hashlib
import os
import stat
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TvcleanError, one_line

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff",
    ".webp", ".ppm", ".pgm", ".pbm", ".pnm",
})
SPLITS = ("train", "val")
LOOP = "symbolic-link loop"


@dataclass
class SplitFiles:
    """The images of one split, grouped by class (folder images sorted by path,
    manifest rows in file order).

    paths: absolute path of every image; given: the path as the user gave it
    (relative to the split's folder, or as written in the manifest).
    labels: (n,) int64 class index. skipped: files passed over, by reason
    ("hidden", "not an image", "outside class folders", "symbolic-link loop").
    """

    name: str
    source: Path
    paths: list[str]
    labels: np.ndarray
    skipped: Counter = field(default_factory=Counter)
    given: list[str] = field(default_factory=list)
    linked: list[Path] = field(default_factory=list)  # real paths of folders reached by a link

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Dataset:
    """Train and validation images with their sorted class names."""

    classes: list[str]
    train: SplitFiles
    val: SplitFiles
    root: Path | None = None  # the folder given as TRAIN when it holds train/ and val/

    @property
    def splits(self) -> tuple[SplitFiles, SplitFiles]:
        return (self.train, self.val)

    @property
    def folders(self) -> list[Path]:
        """Every input folder: the class-folder roots (manifests excluded), the root given
        for both, and the real folders that symbolic links inside them lead to."""
        folders = [s.source for s in self.splits if not _is_manifest(s.source)]
        folders += [self.root] if self.root is not None else []
        return folders + [p for s in self.splits for p in s.linked]

    @property
    def manifests(self) -> list[Path]:
        return sorted({s.source for s in self.splits if _is_manifest(s.source)})


# (given path, absolute path) of every image, by class name
Images = dict[str, list[tuple[str, str]]]


def discover(train: str | Path, val: str | Path | None = None) -> Dataset:
    """Find the images of both splits and check them (see the module docstring).

    train, val: a class-folder root or a .csv manifest each; val may be None
    when train is a root holding train/ and val/, or a manifest with a
    `split` column.
    """
    given = Path(train)
    train, val = _split_sources(Path(train), None if val is None else Path(val))
    train_items, train_skipped, train_links = _read_source("train", train)
    val_items, val_skipped, val_links = _read_source("val", val)
    classes = _check_classes(train_items, train, val_items, val)
    index = {name: k for k, name in enumerate(classes)}
    dataset = Dataset(classes=classes,
                      train=_split_files("train", train, train_items, train_skipped, index,
                                         train_links),
                      val=_split_files("val", val, val_items, val_skipped, index, val_links),
                      root=given if train != given and given.is_dir() else None)
    check_splits_apart(dataset)
    return dataset


def _split_sources(train: Path, val: Path | None) -> tuple[Path, Path]:
    """Resolve the two sources; (source, source) means one manifest with a split column."""
    if not train.exists():
        raise TvcleanError(f"training data not found: {train}")
    if val is not None:
        if not val.exists():
            raise TvcleanError(f"validation data not found: {val}")
        if _is_manifest(train) and "split" in _header(train):
            raise TvcleanError(f"{train} has a split column, so it lists the validation images "
                               f"too: give it alone, without VAL ({val})")
        if os.path.realpath(train) == os.path.realpath(val) and not _is_manifest(train):
            raise TvcleanError(f"the training and validation data are the same folder ({train}); "
                               f"the validation set must be separate, correctly labeled images")
        return train, val
    if _is_manifest(train):
        return train, train
    if (train / "train").is_dir() and (train / "val").is_dir():
        return train / "train", train / "val"
    raise TvcleanError(f"no validation data: give VAL_DIR, or a TRAIN_DIR holding train/ and "
                       f"val/ folders, or a manifest with a split column ({train})")


def _is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".csv"


def _header(manifest: Path) -> list[str]:
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # read properly (with a clear error) below


def _read_source(split: str, source: Path) -> tuple[Images, Counter, list[Path]]:
    """Images by class name, counts of skipped files, and the real paths of the folders
    reached through symbolic links, from a folder or manifest."""
    if _is_manifest(source):
        return (*_read_manifest(split, source), [])
    if source.is_dir():
        return _read_folders(split, source)
    raise TvcleanError(f"{split} data must be a folder or a .csv manifest: {source}")


def _read_folders(split: str, root: Path) -> tuple[Images, Counter, list[Path]]:
    skipped: Counter = Counter()
    images: Images = {}
    visited = {_identity(root)}
    linked: list[Path] = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise TvcleanError(f"cannot read the {split} folder {root}: "
                           f"{exc.strerror or one_line(exc)}") from None
    for entry in entries:
        if entry.name.startswith("."):
            skipped["hidden"] += 1
        elif entry.is_dir():
            check_class_name(entry.name, f"class folder {entry.path!r}")
            if entry.is_symlink():
                linked.append(Path(os.path.realpath(entry.path)))
            images[entry.name] = _images_below(root, Path(entry.path), skipped, visited, linked)
            if not images[entry.name]:
                raise TvcleanError(f"class {entry.name!r} of the {split} split has no images: "
                                   f"{entry.path}")
        else:
            skipped["outside class folders"] += 1
    if not images:
        raise TvcleanError(f"the {split} split has no class folders: {root}")
    _check_case_collisions(images, f"class folders of {root}")
    return images, skipped, linked


def _identity(folder: Path) -> tuple[int, int]:
    info = os.stat(folder)
    return info.st_dev, info.st_ino


def _images_below(root: Path, folder: Path, skipped: Counter, visited: set[tuple[int, int]],
                  linked: list[Path]) -> list[tuple[str, str]]:
    """(path below root, absolute path) of the image files in folder and its subfolders,
    sorted; symbolic links to folders are followed, each real folder once (their real
    paths are added to `linked`); the same file reached twice is taken once."""
    if _identity(folder) in visited:
        skipped[LOOP] += 1
        return []
    visited.add(_identity(folder))
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=_walk_error):
        keep = []
        for name in sorted(dirnames):
            path = Path(dirpath, name)
            identity = _identity(path)
            if name.startswith("."):
                skipped["hidden"] += 1
            elif _bad_name(name):
                skipped[_bad_name(name)] += 1
            elif identity in visited:  # a link to a folder walked already (or an ancestor)
                skipped[LOOP] += 1
            else:
                visited.add(identity)
                keep.append(name)
                if path.is_symlink():
                    linked.append(Path(os.path.realpath(path)))
        dirnames[:] = keep
        for name in filenames:
            absolute = os.path.abspath(os.path.join(dirpath, name))
            reason = _skip_reason(name) or _bad_name(name) or _not_regular(absolute)
            if reason:
                skipped[reason] += 1
            else:
                found.append((os.path.relpath(absolute, os.path.abspath(root)), absolute))
    unique, seen = [], set()
    for item in sorted(found, key=lambda item: item[1]):
        real = os.path.realpath(item[1])
        if real in seen:
            skipped["the same file again (through a link)"] += 1
        else:
            seen.add(real)
            unique.append(item)
    return unique


def _bad_name(name: str) -> str | None:
    """Why a file or folder name cannot be used (written to CSV files and folders), or None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "name not valid UTF-8"
    if "\n" in name or "\r" in name:
        return "line break in the name"
    return None


def _not_regular(path: str) -> str | None:
    """A FIFO, socket or device named like an image would hang or flood the decoder."""
    try:
        return None if stat.S_ISREG(os.stat(path).st_mode) else "not a regular file"
    except OSError:
        return None  # missing or unreadable: reported when it is decoded


def _walk_error(exc: OSError) -> None:
    raise TvcleanError(f"cannot read the folder {exc.filename}: {exc.strerror or one_line(exc)}")


def _skip_reason(name: str) -> str | None:
    if name.startswith("."):
        return "hidden"
    if os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
        return "not an image"
    return None


def _read_manifest(split: str, manifest: Path) -> tuple[Images, Counter]:
    """Rows of a path,label CSV (optionally with a split column) for one split."""
    skipped: Counter = Counter()
    images: Images = {}
    seen: dict[str, int] = {}
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = set(reader.fieldnames or ())
            if not {"path", "label"} <= columns:
                raise TvcleanError(f"{manifest}: needs a header with columns path,label, "
                                   f"found {', '.join(reader.fieldnames or ['nothing'])}")
            for row in reader:
                line = reader.line_num
                if "split" in columns and _row_split(row, manifest, line) != split:
                    continue
                path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
                if not path or not label:
                    raise TvcleanError(f"{manifest}, line {line}: empty path or label")
                if "\0" in path or "\n" in path or "\r" in path:
                    raise TvcleanError(f"{manifest}, line {line}: the path {path!r} holds a NUL "
                                       f"or line-break character")
                check_class_name(label, f"{manifest}, line {line}: label")
                reason = _skip_reason(os.path.basename(path))
                if reason:
                    skipped[reason] += 1
                    continue
                absolute = os.path.abspath(manifest.parent / path)
                real = os.path.realpath(absolute)
                if real in seen:
                    raise TvcleanError(f"{manifest}, line {line}: {path} is listed twice "
                                       f"(also on line {seen[real]})")
                seen[real] = line
                images.setdefault(label, []).append((path, absolute))
    except UnicodeDecodeError as exc:
        raise TvcleanError(f"{manifest}: not UTF-8 text ({one_line(exc)}); save the manifest "
                           f"as UTF-8") from None
    except csv.Error as exc:
        raise TvcleanError(f"{manifest}: not a readable CSV file ({one_line(exc)})") from None
    if not images:
        raise TvcleanError(f"the {split} split has no images: {manifest}")
    _check_case_collisions(images, str(manifest))
    return images, skipped


def _row_split(row: dict, manifest: Path, line: int) -> str:
    value = (row.get("split") or "").strip()
    if value not in SPLITS:
        raise TvcleanError(f"{manifest}, line {line}: split must be train or val, got {value!r}")
    return value


MAX_CLASS_NAME_BYTES = 200  # a folder name, with room for tvclean's prefixes and suffixes


def check_class_name(name: str, where: str) -> None:
    """Refuse a class name that could not be a folder of its own inside RUN/clean/."""
    why = None
    if _bad_name(name) == "name not valid UTF-8":
        why = "is not valid UTF-8"
        name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    elif not name.strip():
        why = "is empty"
    elif len(name.encode("utf-8")) > MAX_CLASS_NAME_BYTES:
        why = f"is longer than {MAX_CLASS_NAME_BYTES} bytes"
    elif "/" in name or "\\" in name:
        why = "contains a path separator"
    elif name in (".", "..") or name.startswith(".."):
        why = "is a relative path"
    elif any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name):
        why = "contains NUL or control characters"
    elif os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        why = "is an absolute path"
    elif name.startswith("."):
        why = "starts with a dot (hidden)"
    if why:
        raise TvcleanError(f"{where} {name!r} {why}; class names become folder names, so "
                           f"they must be plain names")


def _check_case_collisions(images: Images, where: str) -> None:
    by_fold: dict[str, list[str]] = defaultdict(list)
    for name in images:
        by_fold[unicodedata.normalize("NFC", name).casefold()].append(name)
    for names in by_fold.values():
        if len(names) > 1:
            raise TvcleanError(f"classes {', '.join(repr(n) for n in sorted(names))} in {where} "
                               f"differ only in case or Unicode form; their folders would "
                               f"collide on many file systems")


def _check_classes(train: Images, train_source: Path, val: Images, val_source: Path) -> list[str]:
    """The sorted class names; every class must be in both splits, and there must be two."""
    for name in sorted(train):
        if name not in val:
            raise TvcleanError(f"class {name!r} is in the train split but not in the val split "
                               f"({val_source})")
    for name in sorted(val):
        if name not in train:
            raise TvcleanError(f"class {name!r} is in the val split but not in the train split "
                               f"({train_source})")
    if len(train) < 2:
        raise TvcleanError(f"the data has one class only ({next(iter(train))!r}); tvclean needs "
                           f"two classes or more to tell mislabeled images apart")
    return sorted(train)


def _split_files(name: str, source: Path, images: Images, skipped: Counter,
                 index: dict[str, int], linked: list[Path]) -> SplitFiles:
    given: list[str] = []
    paths: list[str] = []
    labels: list[int] = []
    for class_name in sorted(images):
        given.extend(g for g, _ in images[class_name])
        paths.extend(a for _, a in images[class_name])
        labels.extend([index[class_name]] * len(images[class_name]))
    return SplitFiles(name=name, source=source, paths=paths, given=given,
                      labels=np.array(labels, dtype=np.int64), skipped=skipped, linked=linked)


def check_splits_apart(dataset: Dataset) -> None:
    """Refuse training images that are also validation images: the same file, or a file with
    identical bytes (only files of equal size are read)."""
    train_real = {os.path.realpath(p): p for p in dataset.train.paths}
    same = [(train_real[r], v) for v in dataset.val.paths
            if (r := os.path.realpath(v)) in train_real]
    if not same:
        same = _identical_files(dataset.train.paths, dataset.val.paths)
    if same:
        example = f"{same[0][0]} = {same[0][1]}"
        raise TvcleanError(f"{len(same)} training image(s) are also validation images (the same "
                           f"file or identical bytes), e.g. {example}; the validation set must "
                           f"be independent of the training set: remove them from one split")


def _identical_files(train: list[str], val: list[str]) -> list[tuple[str, str]]:
    val_by_size: dict[int, list[str]] = defaultdict(list)
    for path in val:
        size = _size(path)
        if size is not None:
            val_by_size[size].append(path)
    candidates = [(p, s) for p in train if (s := _size(p)) is not None and s in val_by_size]
    if not candidates:
        return []
    val_digest: dict[str, str] = {}
    for size in {s for _, s in candidates}:
        for path in val_by_size[size]:
            digest = _digest(path)
            if digest:
                val_digest.setdefault(digest, path)
    pairs = []
    for path, _ in candidates:
        digest = _digest(path)
        if digest and digest in val_digest:
            pairs.append((path, val_digest[digest]))
    return pairs


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None  # a missing or unreadable file is reported when it is decoded


def _digest(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()
