"""RUN/review.csv: the decisions a person made, appended one line at a time.

    time,path,decision,label
    2026-12-02T14:03:11,shirt/img00017.png,dirty,
    2026-12-02T14:03:15,shirt/img00020.png,relabel,pullover
    2026-12-02T14:03:19,shirt/img00017.png,,            <- undo: back to the computed decision

path is the image as training_values.csv gives it (`path`); decision is
"clean" (the given label is right: keep), "dirty" (discard), "relabel" (keep
it under `label`, a class name) or "" (no review: the computed decision
applies again). The last line of an image wins. Each line is written with one
append and flushed to disk before the call returns, so a crash or kill -9 of
the writer loses no saved decision; a torn last line (a power cut mid-write)
is ignored when read.
"""

from __future__ import annotations

import csv
import io
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import TvcleanError, os_error_cause
from .run import RunDir
from .tables import ISSUE_DECISIONS, TrainingValues

REVIEW = "review.csv"
COLUMNS = ("time", "path", "decision", "label")
REVIEW_DECISIONS = ("clean", "dirty", "relabel")
_APPEND_LOCK = threading.Lock()  # one writer thread at a time within a process


@dataclass(frozen=True)
class Review:
    """The reviewed decision of one image (the last line about it)."""

    path: str
    decision: str  # "clean", "dirty" or "relabel"
    label: str  # the class the person says it is (the given one for "clean"); "" for "dirty"
    time: str


def review_path(run: RunDir) -> Path:
    return run.root / REVIEW


def append_review(run: RunDir, path: str, decision: str, label: str = "",
                  classes: Iterable[str] | None = None) -> None:
    """Append one decision ("" = undo) for the image `path` (as in training_values.csv).

    classes: the run's class names, to check a relabel's target.
    """
    if decision not in (*REVIEW_DECISIONS, ""):
        raise TvcleanError(f"a review decision is one of {', '.join(REVIEW_DECISIONS)} (or "
                           f"empty to undo), got {decision!r}")
    if decision == "relabel" and classes is not None and label not in set(classes):
        raise TvcleanError(f"cannot relabel {path} as {label!r}: not one of the run's classes")
    if decision != "relabel" and decision != "clean":
        label = ""
    if "\n" in path or "\r" in path:
        raise TvcleanError(f"cannot review {path!r}: its name holds a line break")
    target = review_path(run)
    with _APPEND_LOCK:
        line = io.StringIO()
        writer = csv.writer(line, lineterminator="\n")
        if not target.exists() or target.stat().st_size == 0:
            writer.writerow(COLUMNS)
        writer.writerow((time.strftime("%Y-%m-%dT%H:%M:%S"), path, decision, label))
        data = line.getvalue().encode("utf-8")
        try:
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            try:
                os.write(fd, data)  # one append: whole lines only, even with other writers
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise TvcleanError(f"cannot save the review in {target}: {os_error_cause(exc)}") \
                from None


def read_reviews(run: RunDir) -> dict[str, Review]:
    """The current review of every reviewed image, by path (undone images are left out)."""
    target = review_path(run)
    if not target.exists():
        return {}
    try:
        text = target.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise TvcleanError(f"cannot read {target}: {os_error_cause(exc)}") from None
    if not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]  # a torn last line: never fully written
    current: dict[str, Review] = {}
    for line, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        if set(COLUMNS) - set(row):
            raise TvcleanError(f"{target}: needs the columns {', '.join(COLUMNS)}")
        decision, path = row["decision"] or "", row["path"] or ""
        if (row["time"], path, decision, row["label"]) == COLUMNS:
            continue  # a header written again by a second writer process
        if decision == "":
            current.pop(path, None)
        elif decision in REVIEW_DECISIONS:
            current[path] = Review(path=path, decision=decision, label=row["label"] or "",
                                   time=row["time"] or "")
        else:
            raise TvcleanError(f"{target}, line {line}: decision {decision!r} is not one of "
                               f"{', '.join(REVIEW_DECISIONS)} or empty")
    return current


def apply_reviews(table: TrainingValues, reviews: dict[str, Review]) -> int:
    """Let the reviewed decisions override the computed ones in `table` (in place).

    clean: kept under its given label; dirty: discarded; relabel: kept under
    the reviewed label. Unreadable images keep "error". Returns how many
    reviews name no image of the table (the data changed since).
    """
    rows = {path: i for i, path in enumerate(table.path)}
    unknown = 0
    for path, review in reviews.items():
        i = rows.get(path)
        if i is None:
            unknown += 1
            continue
        if table.decision[i] == "error":
            continue
        relabel = review.decision == "relabel" and review.label != table.given_label[i]
        decision = "relabel" if relabel else ("dirty" if review.decision == "dirty" else "clean")
        table.decision[i] = decision
        table.is_label_issue[i] = decision in ISSUE_DECISIONS
        table.decision_source[i] = "reviewed"
        table.reviewed_label[i] = review.label if decision != "dirty" else ""
    return unknown


def final_label(table: TrainingValues, i: int) -> str:
    """The class an image is kept under: the reviewed label, else for a computed
    relabel the suggested one, else the given one."""
    if table.decision[i] == "relabel":
        return table.reviewed_label[i] or table.suggested_label[i]
    return table.given_label[i]
