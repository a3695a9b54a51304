"""Scoring a run's decisions and value ranking against known label noise (`tvclean evaluate`).

The truth is either a CSV (a `path` column plus `is_mislabeled` or `true_label`)
or the original Training-ValueNet evaluation layout `<class>/clean/...`,
`<class>/dirty/...` (dirty = mislabeled). Truth entries are matched to the rows
of RUN/training_values.csv by absolute path, then resolved path, then
`<class>/<file>`, then file name; the fallbacks only pair keys that are unique
on both sides.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..atomicfile import atomic_write_json
from ..errors import TvcleanError
from ..rundir import RunDir, read_training_values
from ..rundir.features import check_inputs_outside
from ..rundir.run import EVALUATION

EVALUATION_FILE = EVALUATION  # written into the run directory
_TRUE = frozenset({"1", "true", "yes"})
_FALSE = frozenset({"0", "false", "no"})
# Match strategies: key in Evaluation.matched_by -> how the table names it.
_PATH, _CLASS_FILE, _FILE_NAME = "path", "class_file", "file_name"
_STRATEGY_NAMES = {_PATH: "absolute path", _CLASS_FILE: "<class>/<file>",
                   _FILE_NAME: "unique file name"}


def detection_metrics(is_mislabeled: npt.ArrayLike, discarded: npt.ArrayLike,
                      values: npt.ArrayLike) -> dict:
    """Detection quality of a discarded set and a value ranking against the truly mislabeled.

    is_mislabeled: (n,) bool, True where the given label is wrong.
    discarded: (n,) bool, True where the image was removed.
    values: (n,) float, predicted training-values; lower = more likely mislabeled,
        so the ranking score is -value.
    Returns a dict of counts (n, mislabeled, discarded, tp, fp, fn, tn) and rates
    (noise_rate, fraction_removed, precision, recall, f1, roc_auc, average_precision);
    a rate that is undefined for these inputs (e.g. precision with nothing
    discarded, ROC-AUC with a single kind of example) is None.
    """
    # Imported here: sklearn.metrics takes ~1 s to import, too much for every `import tvcore`.
    from sklearn.metrics import average_precision_score, roc_auc_score

    truth = _as_1d(is_mislabeled, "is_mislabeled").astype(bool)
    removed = _as_1d(discarded, "discarded").astype(bool)
    values = _as_1d(values, "values").astype(np.float64)
    if not (len(truth) == len(removed) == len(values)):
        raise TvcleanError(f"detection_metrics: lengths differ (is_mislabeled {len(truth)}, "
                           f"discarded {len(removed)}, values {len(values)})")
    if not np.all(np.isfinite(values)):
        raise TvcleanError("detection_metrics: values must be finite")
    n, positives = len(truth), int(truth.sum())
    tp, fp = int(np.sum(truth & removed)), int(np.sum(~truth & removed))
    fn, tn = int(np.sum(truth & ~removed)), int(np.sum(~truth & ~removed))
    both_kinds = 0 < positives < n
    return {
        "n": n, "mislabeled": positives, "discarded": tp + fp,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "noise_rate": _ratio(positives, n),
        "fraction_removed": _ratio(tp + fp, n),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        # 2tp/(2tp+fp+fn): 0 when mislabeled images exist and none was caught.
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": float(roc_auc_score(truth, -values)) if both_kinds else None,
        "average_precision": float(average_precision_score(truth, -values)) if positives else None,
    }


def _as_1d(array: npt.ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 1:
        raise TvcleanError(f"detection_metrics: {name} must be 1-D, got shape {array.shape}")
    return array


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass
class Evaluation:
    """A run scored against the truth.

    overall: detection_metrics of every evaluated training image.
    per_class: one dict per given class: label, class_name and its detection_metrics.
    errors: unreadable training images (decision "error"), excluded from the metrics.
    train_without_truth: readable training images the truth says nothing about.
    truth_without_train: truth entries that matched no training image.
    matched_by: number of matches per strategy: path (absolute or resolved),
        class_file (<class>/<file>), file_name (unique file name).
    """

    run: str
    truth: str
    overall: dict
    per_class: list[dict]
    errors: int
    train_without_truth: int
    truth_without_train: int
    matched_by: dict[str, int]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _TrainingValues:
    """The rows of RUN/training_values.csv as arrays (n rows)."""

    paths: list[str]
    labels: np.ndarray  # (n,) int64 given label
    class_names: list[str]  # (n,) given class name
    values: np.ndarray  # (n,) float64; NaN on error rows
    discarded: np.ndarray  # (n,) bool
    error: np.ndarray  # (n,) bool


@dataclass
class _TruthEntry:
    """One truth row: where it points, and either a verdict or the true label."""

    path: str  # absolute
    class_key: str  # "<class>/<file>"
    mislabeled: bool | None
    true_label: str | None


def evaluate(run: str | Path | RunDir, truth: str | Path, save: bool = True) -> Evaluation:
    """Score RUN's decisions (dirty = discarded) and value ranking against the truth at `truth`.

    save: also write the result to RUN/evaluation.json (the report shows it).
    """
    run = RunDir.of(run)
    if not save:
        return _evaluate(run, truth)
    run.require_stages("filter")
    check_inputs_outside(run)
    with run.writing("evaluate"):
        result = _evaluate(run, truth)
        atomic_write_json(run.evaluation, result.to_dict())
    return result


def _evaluate(run: RunDir, truth: str | Path) -> Evaluation:
    train = load_training_values(run)
    entries = load_truth(truth)
    train_of_truth, matched_by = match_truth(train.paths, entries)
    matched = train_of_truth >= 0
    if not matched.any():
        raise TvcleanError(
            f"no entry of {truth} matches a training image in {run.training_values} "
            f"(tried absolute paths, <class>/<file> and unique file names; e.g. truth "
            f"{entries[0].path!r} vs training {train.paths[0]!r})")
    mislabeled = _mislabeled_per_row(train, entries, train_of_truth)
    has_truth = mislabeled >= 0
    used = has_truth & ~train.error
    return Evaluation(
        run=str(run.root), truth=str(truth),
        overall=_metrics(train, mislabeled, used),
        per_class=_per_class(train, mislabeled, used),
        errors=int(train.error.sum()),
        train_without_truth=int(np.sum(~has_truth & ~train.error)),
        truth_without_train=int(np.sum(~matched)),
        matched_by=matched_by)


def _metrics(train: _TrainingValues, mislabeled: np.ndarray, rows: np.ndarray) -> dict:
    return detection_metrics(mislabeled[rows] == 1, train.discarded[rows], train.values[rows])


def _per_class(train: _TrainingValues, mislabeled: np.ndarray, used: np.ndarray) -> list[dict]:
    out = []
    for label in np.unique(train.labels):
        in_class = train.labels == label
        name = train.class_names[int(np.flatnonzero(in_class)[0])]
        metrics = _metrics(train, mislabeled, used & in_class)
        out.append({"label": int(label), "class_name": name, **metrics})
    return out


def _mislabeled_per_row(train: _TrainingValues, entries: list[_TruthEntry],
                        train_of_truth: np.ndarray) -> np.ndarray:
    """(n_train,) int8: 1 mislabeled, 0 correct, -1 no truth."""
    known_names = set(train.class_names)
    out = np.full(len(train.paths), -1, dtype=np.int8)
    for entry, row in zip(entries, train_of_truth):
        if row < 0:
            continue
        if entry.mislabeled is not None:
            out[row] = int(entry.mislabeled)
        else:
            out[row] = int(_differs(entry.true_label or "", int(train.labels[row]),
                                    train.class_names[row], known_names))
    return out


def _differs(true_label: str, label: int, class_name: str, known_names: set[str]) -> bool:
    """Whether a true label (class name, else class index) differs from the given one."""
    if true_label in known_names:  # names win, so classes named "0".."9" compare by name
        return true_label != class_name
    try:
        return int(true_label) != label
    except ValueError:
        return True  # a class outside the training classes: open-set noise


# --- reading RUN/training_values.csv -------------------------------------------------------


def load_training_values(run: RunDir) -> _TrainingValues:
    """RUN/training_values.csv (the typed reader of tvcore.rundir.tables) as evaluation arrays:
    ranked by the number the decision used, the score."""
    table = read_training_values(run.require(run.training_values.name, "filter"))
    if not len(table):
        raise TvcleanError(f"{run.training_values}: no rows")
    error = np.array([d == "error" for d in table.decision])
    return _TrainingValues(paths=table.abs_path, labels=table.given_label_index,
                           class_names=table.given_label,
                           values=np.where(error, np.nan, table.score),
                           discarded=table.is_label_issue, error=error)


def _read_table(path: Path, required: Iterable[str],
                hint: str = "") -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a CSV file with the `required` columns, or a one-line error."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            # Short rows give None: treat a missing cell as empty.
            rows = [{k: v or "" for k, v in row.items()} for row in reader]
            header = list(reader.fieldnames or [])
    except FileNotFoundError:
        raise TvcleanError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TvcleanError(f"{path}: not a readable CSV file ({exc})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise TvcleanError(f"{path}: missing column(s) {', '.join(missing)}"
                           + (f"; {hint}" if hint else ""))
    if not rows:
        raise TvcleanError(f"{path}: no rows")
    return header, rows


# --- reading the truth ----------------------------------------------------------------------


def load_truth(truth: str | Path) -> list[_TruthEntry]:
    """Read a truth CSV or a `<class>/clean`, `<class>/dirty` folder."""
    truth = Path(truth)
    if truth.is_dir():
        return _truth_from_folder(truth)
    if truth.is_file():
        return _truth_from_csv(truth)
    raise TvcleanError(f"--truth {truth}: no such file or folder")


def _truth_from_csv(path: Path) -> list[_TruthEntry]:
    """Entries of a truth CSV; is_mislabeled wins over true_label when both are present.

    Relative paths are relative to the CSV's folder.
    """
    header, rows = _read_table(path, ("path",))
    column = next((c for c in ("is_mislabeled", "true_label") if c in header), None)
    if column is None:
        raise TvcleanError(f"{path}: needs an is_mislabeled or a true_label column "
                           f"besides path; found {', '.join(header)}")
    base = str(path.resolve().parent)
    entries: list[_TruthEntry] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        if not row["path"]:
            raise TvcleanError(f"{path} line {line}: empty path")
        full = os.path.abspath(os.path.join(base, row["path"]))
        if full in seen:
            raise TvcleanError(f"{path} line {line}: {row['path']!r} already given on "
                               f"line {seen[full]}")
        seen[full] = line
        verdict, true_label = _verdict(row[column], column, path, line)
        entries.append(_TruthEntry(full, _last_two(full), verdict, true_label))
    return entries


def _verdict(text: str, column: str, path: Path, line: int) -> tuple[bool | None, str | None]:
    text = text.strip()
    if column == "true_label":
        if not text:
            raise TvcleanError(f"{path} line {line}: empty true_label")
        return None, text
    if text.lower() in _TRUE:
        return True, None
    if text.lower() in _FALSE:
        return False, None
    raise TvcleanError(f"{path} line {line}: is_mislabeled must be 0/1/true/false, got {text!r}")


def _truth_from_folder(root: Path) -> list[_TruthEntry]:
    entries, layout_found = [], False
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for part, mislabeled in (("clean", False), ("dirty", True)):
            folder = class_dir / part
            if not folder.is_dir():
                continue
            layout_found = True
            for file in _files_below(folder):
                entries.append(_TruthEntry(os.path.abspath(file), f"{class_dir.name}/{file.name}",
                                           mislabeled, None))
    if not layout_found:
        raise TvcleanError(f"--truth {root}: expected <class>/clean and <class>/dirty folders "
                           f"(or a CSV file); found none")
    if not entries:
        raise TvcleanError(f"--truth {root}: the clean/dirty folders hold no files")
    return entries


def _files_below(folder: Path) -> list[Path]:
    """Regular files below `folder`, skipping hidden ones (.DS_Store and the like)."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".")
                                             for part in p.relative_to(folder).parts))


def _last_two(path: str) -> str:
    """"<parent folder>/<file>" of a path (string operations: this runs once per image)."""
    folder, name = os.path.split(path)
    return f"{os.path.basename(folder)}/{name}"


def _path_resolver() -> Callable[[str], str]:
    """os.path.realpath that resolves each folder once (images share few folders)."""
    folders: dict[str, str] = {}

    def resolve(path: str) -> str:
        if os.path.islink(path):
            return os.path.realpath(path)
        folder, name = os.path.split(os.path.abspath(path))
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        return os.path.join(folders[folder], name)

    return resolve


# --- matching truth entries to training rows -------------------------------------------------


def match_truth(train_paths: list[str], entries: list[_TruthEntry]) -> tuple[np.ndarray, dict]:
    """Pair truth entries with training rows.

    train_paths: (n_train,) image paths from training_values.csv.
    Returns (train_of_truth (n_truth,) int64 row number or -1, matches per strategy).
    """
    train_of_truth = np.full(len(entries), -1, dtype=np.int64)
    taken = np.zeros(len(train_paths), dtype=bool)
    resolve = _path_resolver()
    strategies: list[tuple[str, Callable[[str], str], Callable[[_TruthEntry], str]]] = [
        (_PATH, os.path.abspath, lambda e: e.path),
        (_PATH, resolve, lambda e: resolve(e.path)),
        (_CLASS_FILE, _last_two, lambda e: e.class_key),
        (_FILE_NAME, os.path.basename, lambda e: os.path.basename(e.path)),
    ]
    matched_by = {_PATH: 0, _CLASS_FILE: 0, _FILE_NAME: 0}
    for name, train_key, truth_key in strategies:
        if taken.all() or np.all(train_of_truth >= 0):
            break
        matched_by[name] += _match_by_key(train_paths, entries, train_key, truth_key,
                                          train_of_truth, taken)
    return train_of_truth, matched_by


def _match_by_key(train_paths: list[str], entries: list[_TruthEntry],
                  train_key: Callable[[str], str], truth_key: Callable[[_TruthEntry], str],
                  train_of_truth: np.ndarray, taken: np.ndarray) -> int:
    """Link still-free truth entries and training rows whose keys are equal and unique on both sides."""
    train_index = _unique_keys((train_key(train_paths[i]), int(i)) for i in np.flatnonzero(~taken))
    truth_index = _unique_keys((truth_key(entries[j]), int(j))
                               for j in np.flatnonzero(train_of_truth < 0))
    linked = 0
    for key, j in truth_index.items():
        i = train_index.get(key)
        if i is not None:
            train_of_truth[j], taken[i] = i, True
            linked += 1
    return linked


def _unique_keys(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    """key -> index for the keys that occur once."""
    index: dict[str, int] = {}
    repeated: set[str] = set()
    for key, i in pairs:
        if key in index:
            repeated.add(key)
        index[key] = int(i)
    for key in repeated:
        del index[key]
    return index


# --- a readable table -------------------------------------------------------------------------

_COLUMNS = (  # (heading, metric key, format)
    ("images", "n", "d"), ("mislabeled", "mislabeled", "d"), ("removed", "discarded", "d"),
    ("removed%", "fraction_removed", "%"), ("tp", "tp", "d"), ("fp", "fp", "d"),
    ("fn", "fn", "d"), ("tn", "tn", "d"), ("precision", "precision", "f"),
    ("recall", "recall", "f"), ("F1", "f1", "f"), ("ROC-AUC", "roc_auc", "f"),
    ("AP", "average_precision", "f"),
)


def format_evaluation(ev: Evaluation) -> str:
    """The evaluation as a plain-text summary and table (one row per class, then overall)."""
    matched = ", ".join(f"{_STRATEGY_NAMES[key]} {count}" for key, count in ev.matched_by.items())
    lines = [
        f"truth: {ev.truth}",
        f"evaluated {ev.overall['n']} training images; {ev.train_without_truth} without truth, "
        f"{ev.errors} unreadable (excluded); {ev.truth_without_train} truth entries matched "
        f"no training image",
        f"matched by {matched}",
        "",
    ]
    table = [["class"] + [heading for heading, _, _ in _COLUMNS]]
    for row in ev.per_class:
        table.append([row["class_name"]] + _cells(row))
    table.append(["overall"] + _cells(ev.overall))
    widths = [max(len(r[c]) for r in table) for c in range(len(table[0]))]
    for r in table:
        lines.append("  ".join([r[0].ljust(widths[0])]
                               + [cell.rjust(w) for cell, w in zip(r[1:], widths[1:])]))
    return "\n".join(lines)


def _cells(metrics: dict) -> list[str]:
    return [_format(metrics[key], kind) for _, key, kind in _COLUMNS]


def _format(value: float | None, kind: str) -> str:
    if value is None:
        return "n/a"
    if kind == "d":
        return str(value)
    if kind == "%":
        return f"{100 * value:.1f}%"
    return f"{value:.3f}"
