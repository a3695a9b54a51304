"""The run's CSV tables: the feature indexes and training_values.csv, written and read here only.

features/<split>_index.csv, one row per image of the split (row i = row i of
<split>.npy):
    path        as the user gave it (relative to the split's folder, or as in the manifest)
    abs_path    absolute path
    label       given class name;  label_index: its index (classes sorted by name)
    status      "ok" or "error";   error: why the image could not be used

training_values.csv, one row per training image (the index's rows, in order):
    path, abs_path      as above
    given_label         class name;  given_label_index: its index
    decision            "clean", "dirty" (discarded), "relabel" (kept under another class:
                        reviewed_label) or "error" (unreadable)
    is_label_issue      the given label is wrong: decision "dirty" or "relabel"
    score               the number the decision compares with the threshold
                        (value + confidence_z x stderr); blank where unreadable
    value               training-value used: the image's own Monte-Carlo estimate or its
                        class's value net's prediction
    stderr              standard error that went into the score
    mc_value, mc_stderr the image's Monte-Carlo estimate (blank outside the subset)
    mc_count            how many loss drops it averages (0 outside the subset)
    suggested_label     the class whose value net values the image most, where that value
                        clears the threshold ("" otherwise)
    rank                1 = most likely mislabeled (lowest score); unreadable images last
    decision_source     "computed", or "reviewed" where RUN/review.csv decided
    reviewed_label      the class a person gave the image ("" where none)

`TrainingValues.frame()` gives the same columns as a pandas DataFrame, as
`tvcore.find_label_issues` does for arrays.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomicfile import atomic_write_csv
from ..errors import TvcleanError, one_line

if TYPE_CHECKING:
    import pandas as pd

DECISIONS = ("clean", "dirty", "relabel", "outlier", "error")
ISSUE_DECISIONS = ("dirty", "relabel", "outlier")
SOURCES = ("computed", "reviewed")
INDEX_COLUMNS = ("path", "abs_path", "label", "label_index", "status", "error")
TRAINING_VALUES_COLUMNS = (
    "path", "abs_path", "given_label", "given_label_index", "decision", "is_label_issue",
    "score", "value", "stderr", "mc_value", "mc_stderr", "mc_count", "suggested_label", "rank",
    "decision_source", "reviewed_label")


# --- feature index -------------------------------------------------------------------------

@dataclass
class IndexRows:
    """One split's index: aligned lists and arrays."""

    paths: list[str]  # as given
    abs_paths: list[str]
    labels: np.ndarray  # (n,) int64
    ok: np.ndarray  # (n,) bool
    errors: list[str]


def write_index(path: Path, given: Sequence[str], absolute: Sequence[str], labels: Sequence[int],
                classes: Sequence[str], errors: dict[int, str]) -> None:
    rows = ((g, a, classes[y], int(y), "error" if i in errors else "ok", errors.get(i, ""))
            for i, (g, a, y) in enumerate(zip(given, absolute, labels)))
    atomic_write_csv(path, INDEX_COLUMNS, rows)


def read_index(path: Path, classes: Sequence[str]) -> IndexRows:
    """Read an index (also the older layout: path absolute, label an index, class_name)."""
    rows = _read_rows(path)
    legacy = bool(rows) and "abs_path" not in rows[0]
    paths, absolute, labels, ok, errors = [], [], [], [], []
    for line, row in enumerate(rows, start=2):
        try:
            index = int(row["label" if legacy else "label_index"])
            if legacy:
                paths.append(row["path"])
                absolute.append(row["path"])
            else:
                paths.append(row["path"])
                absolute.append(row["abs_path"])
        except (KeyError, ValueError, TypeError):
            raise TvcleanError(f"{path}, line {line}: malformed row; re-run `tvclean extract`") \
                from None
        if not 0 <= index < len(classes):
            raise TvcleanError(f"{path}, line {line}: label index {index} is not one of the "
                               f"{len(classes)} classes; re-run `tvclean extract`")
        labels.append(index)
        ok.append(row.get("status") == "ok")
        errors.append(row.get("error") or "")
    return IndexRows(paths=paths, abs_paths=absolute, labels=np.array(labels, np.int64),
                     ok=np.array(ok, bool), errors=errors)


def _read_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except FileNotFoundError:
        raise TvcleanError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TvcleanError(f"{path}: unreadable ({one_line(exc)})") from None


# --- training_values.csv -------------------------------------------------------------------

@dataclass
class TrainingValues:
    """training_values.csv as typed, aligned columns (see the module docstring)."""

    path: list[str]
    abs_path: list[str]
    given_label: list[str]
    given_label_index: np.ndarray  # int64
    decision: list[str]
    is_label_issue: np.ndarray  # bool
    score: np.ndarray  # float64, NaN where unreadable
    value: np.ndarray  # float64
    stderr: np.ndarray  # float64
    mc_value: np.ndarray  # float64, NaN outside the subset
    mc_stderr: np.ndarray  # float64
    mc_count: np.ndarray  # int64, 0 outside the subset
    suggested_label: list[str]
    rank: np.ndarray  # int64, 1 = most likely mislabeled
    decision_source: list[str]  # "computed" or "reviewed"
    reviewed_label: list[str]

    def __len__(self) -> int:
        return len(self.path)

    def frame(self, with_paths: bool = True) -> pd.DataFrame:
        """The columns as a pandas DataFrame (integer and bool columns keep their types)."""
        import pandas as pd

        columns = {f.name: getattr(self, f.name) for f in fields(self)}
        if not with_paths:
            del columns["path"], columns["abs_path"]
        return pd.DataFrame(columns)


def ranks(scores: np.ndarray) -> np.ndarray:
    """1 for the lowest score, ...; NaN scores (unreadable images) come last, in row order."""
    order = np.argsort(np.where(np.isnan(scores), np.inf, scores), kind="stable")
    rank = np.empty(scores.size, np.int64)
    rank[order] = np.arange(1, scores.size + 1)
    return rank


def write_training_values(path: Path, table: TrainingValues) -> None:
    def rows() -> Iterator[tuple[Any, ...]]:
        for i in range(len(table)):
            yield (table.path[i], table.abs_path[i], table.given_label[i],
                   int(table.given_label_index[i]), table.decision[i],
                   "true" if table.is_label_issue[i] else "false", _number(table.score[i]),
                   _number(table.value[i]), _number(table.stderr[i]), _number(table.mc_value[i]),
                   _number(table.mc_stderr[i]), int(table.mc_count[i]), table.suggested_label[i],
                   int(table.rank[i]), table.decision_source[i], table.reviewed_label[i])

    atomic_write_csv(path, TRAINING_VALUES_COLUMNS, rows())


def _number(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


_FLOAT_COLUMNS = ("score", "value", "stderr", "mc_value", "mc_stderr")
_INT_COLUMNS = ("given_label_index", "mc_count", "rank")


def read_training_values(path: Path) -> TrainingValues:
    """Read training_values.csv, checking every column; errors name the line.

    Parsed by pandas' C reader and converted column by column (100,000 rows in a
    fraction of a second); a file with a bad value is read again row by row, to
    name the line.
    """
    import pandas as pd

    types: dict[str, Any] = {name: str for name in TRAINING_VALUES_COLUMNS}
    types.update({name: "float64" for name in _FLOAT_COLUMNS})
    types.update({name: "int64" for name in _INT_COLUMNS})
    try:  # the single-threaded C parser: pandas' parallel one waits on locks on a busy machine
        frame = pd.read_csv(path, dtype=types, keep_default_na=False, engine="c",
                            na_values={name: [""] for name in _FLOAT_COLUMNS}, encoding="utf-8")
        header = list(frame.columns)
    except FileNotFoundError:
        raise TvcleanError(f"{path} not found") from None
    except pd.errors.EmptyDataError:
        header, frame = [], None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError):
        header, frame = _read_table(path)[0], None  # _read_table names the bad line
    missing = sorted(set(TRAINING_VALUES_COLUMNS) - set(header))
    if missing:
        raise TvcleanError(f"{path}: missing columns {', '.join(missing)} (written by an older "
                           f"tvclean?); re-run `tvclean filter`")
    try:
        assert frame is not None
        return _from_columns({name: frame[name].to_numpy() if name in _FLOAT_COLUMNS
                              + _INT_COLUMNS else frame[name].tolist()
                              for name in TRAINING_VALUES_COLUMNS})
    except (ValueError, AssertionError):
        header, rows = _read_table(path)
        return _read_slowly(path, [dict(zip(header, row)) for row in rows])


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            rows = list(reader)
    except FileNotFoundError:
        raise TvcleanError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TvcleanError(f"{path}: unreadable ({one_line(exc)})") from None
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise TvcleanError(f"{path}, line {line}: {len(row)} fields, the header has "
                               f"{len(header)}; re-run `tvclean filter`")
    return header, rows


def _from_columns(text: dict[str, Any]) -> TrainingValues:
    """The table from its columns (numbers already parsed); ValueError on a value out of place."""
    numbers = {name: np.asarray(text[name], np.float64) for name in _FLOAT_COLUMNS}
    numbers.update({name: np.asarray(text[name], np.int64) for name in _INT_COLUMNS})
    issue = np.array(text["is_label_issue"], dtype=object)
    if not set(issue) <= {"true", "false"} or not set(text["decision"]) <= set(DECISIONS) \
            or not set(text["decision_source"]) <= set(SOURCES):
        raise ValueError("a value out of place")
    unscored = (np.array(text["decision"], dtype=object) != "error") & \
        ~np.isfinite(numbers["score"])
    if unscored.any():
        raise ValueError("a readable image without a score")
    return TrainingValues(
        path=text["path"], abs_path=text["abs_path"], given_label=text["given_label"],
        given_label_index=numbers["given_label_index"], decision=text["decision"],
        is_label_issue=issue == "true", score=numbers["score"], value=numbers["value"],
        stderr=numbers["stderr"], mc_value=numbers["mc_value"], mc_stderr=numbers["mc_stderr"],
        mc_count=numbers["mc_count"], suggested_label=text["suggested_label"],
        rank=numbers["rank"], decision_source=text["decision_source"],
        reviewed_label=text["reviewed_label"])


def _read_slowly(path: Path, rows: list[dict[str, str]]) -> TrainingValues:
    """Parse cell by cell, to name the first bad line."""
    parsed: dict[str, list[Any]] = {name: [] for name in TRAINING_VALUES_COLUMNS}
    for line, row in enumerate(rows, start=2):
        for name in TRAINING_VALUES_COLUMNS:
            parsed[name].append(_PARSERS[name](row[name] or "", path, line, name))
        if parsed["decision"][-1] != "error" and not math.isfinite(parsed["score"][-1]):
            raise _bad(path, line, "score", row["score"], "a finite number")
    return TrainingValues(
        path=parsed["path"], abs_path=parsed["abs_path"], given_label=parsed["given_label"],
        given_label_index=np.array(parsed["given_label_index"], np.int64),
        decision=parsed["decision"], is_label_issue=np.array(parsed["is_label_issue"], bool),
        score=np.array(parsed["score"], np.float64), value=np.array(parsed["value"], np.float64),
        stderr=np.array(parsed["stderr"], np.float64),
        mc_value=np.array(parsed["mc_value"], np.float64),
        mc_stderr=np.array(parsed["mc_stderr"], np.float64),
        mc_count=np.array(parsed["mc_count"], np.int64),
        suggested_label=parsed["suggested_label"], rank=np.array(parsed["rank"], np.int64),
        decision_source=parsed["decision_source"], reviewed_label=parsed["reviewed_label"])


def _bad(path: Path, line: int, column: str, text: str, what: str) -> TvcleanError:
    return TvcleanError(f"{path}, line {line}: {column} {text!r} is not {what}; "
                        f"re-run `tvclean filter`")


def _float(text: str, path: Path, line: int, column: str) -> float:
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise _bad(path, line, column, text, "a number") from None


def _int(text: str, path: Path, line: int, column: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _bad(path, line, column, text, "an integer") from None


def _bool(text: str, path: Path, line: int, column: str) -> bool:
    if text not in ("true", "false"):
        raise _bad(path, line, column, text, "true or false")
    return text == "true"


def _decision(text: str, path: Path, line: int, column: str) -> str:
    if text not in DECISIONS:
        raise _bad(path, line, column, text, f"one of {', '.join(DECISIONS)}")
    return text


def _text(text: str, path: Path, line: int, column: str) -> str:
    return text


def _source(text: str, path: Path, line: int, column: str) -> str:
    if text not in SOURCES:
        raise _bad(path, line, column, text, f"one of {', '.join(SOURCES)}")
    return text


_PARSERS = {
    "given_label_index": _int, "mc_count": _int, "rank": _int, "is_label_issue": _bool,
    "score": _float, "value": _float, "stderr": _float, "mc_value": _float,
    "mc_stderr": _float, "decision": _decision, "path": _text, "abs_path": _text,
    "given_label": _text, "suggested_label": _text, "decision_source": _source,
    "reviewed_label": _text,
}


def training_values_table(labels: np.ndarray, class_names: Sequence[str], scored: Any,
                          est: Any, paths: Sequence[str] | None = None,
                          abs_paths: Sequence[str] | None = None) -> TrainingValues:
    """The table of every training row from its decisions (a tvcore.engine.decisions.Scored)
    and the Monte-Carlo estimates (paths: as given, None for arrays: the row number)."""
    n = int(labels.size)
    paths = list(paths) if paths is not None else [str(i) for i in range(n)]
    mc_value, mc_stderr = np.full(n, np.nan), np.full(n, np.nan)
    mc_count = np.zeros(n, np.int64)
    mc_value[est.rows], mc_stderr[est.rows], mc_count[est.rows] = est.mean, est.stderr, est.count
    names = list(class_names)
    decisions = [str(d) for d in scored.decisions]
    return TrainingValues(
        path=paths, abs_path=list(abs_paths) if abs_paths is not None else list(paths),
        given_label=[names[y] for y in labels], given_label_index=labels.astype(np.int64),
        decision=decisions, is_label_issue=np.isin(decisions, ISSUE_DECISIONS),
        score=scored.scores, value=scored.values, stderr=scored.stderr, mc_value=mc_value,
        mc_stderr=mc_stderr, mc_count=mc_count,
        suggested_label=[names[s] if s >= 0 else "" for s in scored.suggested],
        rank=ranks(scored.scores), decision_source=["computed"] * n, reviewed_label=[""] * n)
