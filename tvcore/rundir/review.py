"""RUN/review.csv: the decisions a person made, appended one line at a time.

    time,path,decision,label,sha256
    2026-12-02T14:03:11,shirt/img00017.png,dirty,,9f86d0...
    2026-12-02T14:03:15,shirt/img00020.png,relabel,pullover,60303a...
    2026-12-02T14:03:19,shirt/img00017.png,,,            <- undo: back to the computed decision

path is the image as training_values.csv gives it (`path`); decision is
"clean" (the given label is right: keep), "dirty" (discard), "relabel" (keep
it under `label`, a class name) or "" (no review: the computed decision
applies again); sha256 is the image file's content when it was reviewed (empty:
not recorded, as in files written by hand or before it existed): a review of a
file that has changed since is of another picture and is not applied. The
last line of an image wins. Each line is written with one
append and flushed to disk before the call returns, so a crash or kill -9 of
the writer loses no saved decision; a torn last line (a power cut mid-write)
is ignored when read and cut off by the next append. A line that is not a
whole row anywhere else, or a relabel to a name that is not a class, is an
error naming the line (the file is also edited by hand).
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import os
import stat
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import TvcleanError, os_error_cause
from ..io.modelzoo import sha256_file
from .run import RunDir
from .tables import ISSUE_DECISIONS, TrainingValues

REVIEW = "review.csv"
COLUMNS = ("time", "path", "decision", "label")  # needed; WRITTEN adds the optional ones
WRITTEN = (*COLUMNS, "sha256")
REVIEW_DECISIONS = ("clean", "dirty", "relabel")
_APPEND_LOCK = threading.Lock()  # one writer thread at a time within a process


@dataclass(frozen=True)
class Review:
    """The reviewed decision of one image (the last line about it)."""

    path: str
    decision: str  # "clean", "dirty" or "relabel"
    label: str  # the class the person says it is (the given one for "clean"); "" for "dirty"
    time: str
    sha256: str = ""  # the file's content when reviewed ("" = not recorded)

    def is_of(self, image: str | Path) -> bool:
        """Whether this review is of the file `image` as it is now (True when no content
        was recorded; False when the file changed or is gone)."""
        return not self.sha256 or content_of(image) == self.sha256


def content_of(image: str | Path) -> str:
    """The sha256 of the file `image` ("" when it cannot be read)."""
    try:
        return sha256_file(image)
    except OSError:
        return ""


def drop_changed(reviews: dict[str, Review], images: Mapping[str, str | Path]
                 ) -> tuple[dict[str, Review], int]:
    """(the reviews still of their picture, how many were not): a review of a path in
    `images` (path -> its file) whose file changed since is left out; reviews of other
    paths are kept for the caller to match."""
    kept = {path: review for path, review in reviews.items()
            if path not in images or review.is_of(images[path])}
    return kept, len(reviews) - len(kept)


def review_path(run: RunDir) -> Path:
    return run.root / REVIEW


def append_review(run: RunDir, path: str, decision: str, label: str = "",
                  classes: Iterable[str] | None = None, sha256: str = "") -> None:
    """Append one decision ("" = undo) for the image `path` (as in training_values.csv).

    classes: the run's class names, to check a relabel's target; sha256: the image
    file's content (sha256_file), so that a later picture under the same name is not
    taken as reviewed. Writers (threads, or two review servers) take turns by a lock
    on the file; an unterminated last line is ended first if it is a whole row, else
    (a torn write) cut off, so the new line never runs into it.
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
        try:
            fd = _open_regular(target, os.O_RDWR | os.O_APPEND | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, _append_bytes(fd, (time.strftime("%Y-%m-%dT%H:%M:%S"), path,
                                                decision, label, sha256)))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise TvcleanError(f"cannot save the review in {target}: {os_error_cause(exc)}") \
                from None


def _open_regular(target: Path, flags: int) -> int:
    """os.open that never follows a link or waits on a pipe, and refuses what is not a file."""
    try:
        fd = os.open(target, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TvcleanError(f"{target} is a symbolic link; tvclean reads and writes only "
                               f"its own file there: move the link out of the run") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TvcleanError(f"{target} is not a regular file; move it out of the run")
    return fd


def _append_bytes(fd: int, row: tuple[str, ...]) -> bytes:
    """The bytes to append for `row`: the header first in an empty file; a newline first
    after an unterminated whole row; a torn unterminated line cut off (ftruncate)."""
    size = os.fstat(fd).st_size
    prefix = b""
    if size == 0:
        prefix = _csv_line(WRITTEN)
    else:
        tail_start = _last_line_start(fd, size)
        if tail_start < size:  # the file does not end with a newline
            head = os.pread(fd, min(size, 65536), 0).decode("utf-8-sig", "replace")
            tail = os.pread(fd, size - tail_start, tail_start).decode("utf-8", "replace")
            try:
                complete = _complete(tail, _header(head.split("\n", 1)[0]))
            except ValueError:
                complete = False
            if complete:
                prefix = b"\n"
            else:
                os.ftruncate(fd, tail_start)
                prefix = b"" if tail_start else _csv_line(WRITTEN)
    return prefix + _csv_line(row)


def _csv_line(fields: Iterable[str]) -> bytes:
    line = io.StringIO()
    csv.writer(line, lineterminator="\n").writerow(fields)
    return line.getvalue().encode("utf-8")


def _last_line_start(fd: int, size: int) -> int:
    """Offset just past the file's last newline (0 if it has none)."""
    end = size
    while end > 0:
        start = max(0, end - 4096)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def _header(line: str) -> dict[str, int]:
    """Column name -> position, from the header line; ValueError without the columns."""
    try:
        names = _fields(line)
    except ValueError as exc:
        raise ValueError(f"its header {exc}") from None
    if set(COLUMNS) - set(names):
        raise ValueError(f"needs the columns {', '.join(COLUMNS)}")
    return {name: names.index(name) for name in WRITTEN if name in names}


def _fields(line: str) -> list[str]:
    """The CSV fields of one line; ValueError when it is not one CSV record."""
    try:
        return next(csv.reader([line.rstrip("\r")], strict=True), [])
    except csv.Error as exc:
        raise ValueError(f"cannot be read as CSV ({exc})") from None


def _row(fields: list[str], header: dict[str, int]) -> tuple[str, str, str, str, str]:
    """(time, path, decision, label, sha256) of one line's fields; ValueError saying what
    is wrong with them."""
    width = max(header[name] for name in COLUMNS) + 1  # an optional last one may be missing
    if len(fields) < width:
        raise ValueError(f"has {len(fields)} fields; the header names {width}")
    time_, path, decision, label = (fields[header[name]] for name in COLUMNS)
    where = header.get("sha256", len(fields))
    sha256 = fields[where] if where < len(fields) else ""
    if decision not in (*REVIEW_DECISIONS, "") and (time_, path, decision, label) != COLUMNS:
        raise ValueError(f"decision {decision!r} is not one of "
                         f"{', '.join(REVIEW_DECISIONS)} or empty")
    return time_, path, decision, label, sha256


def _complete(line: str, header: dict[str, int]) -> bool:
    """Whether an unterminated last line is a whole row, not a torn write: every column of
    the header there, and a recorded sha256 of full length."""
    try:
        fields = _fields(line)
        *_, sha256 = _row(fields, header)
    except ValueError:
        return False
    return len(fields) > max(header.values()) and len(sha256) in (0, 64)


def read_reviews(run: RunDir, classes: Iterable[str] | None = None) -> dict[str, Review]:
    """The current review of every reviewed image, by path (undone images are left out).

    classes: the run's class names; a relabel to any other name is an error naming
    the line. An unterminated last line counts if it is a whole row; else it is a
    torn write and is ignored.
    """
    target = review_path(run)
    text = _read_text(target)
    if not text:
        return {}
    lines = text.split("\n")
    known = None if classes is None else set(classes)
    try:
        header = _header(lines[0])
    except ValueError as exc:
        raise TvcleanError(f"{target}: {exc}") from None
    current: dict[str, Review] = {}
    last = len(lines) - 1
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        if number - 1 == last and not _complete(line, header):
            break  # an unterminated last line that is not a whole row: a torn write
        try:
            time_, path, decision, label, sha256 = _row(_fields(line), header)
            if decision == "relabel" and known is not None and label not in known:
                raise ValueError(f"relabels {path} as {label!r}, which is not a class of this "
                                 f"run")
        except ValueError as exc:
            raise TvcleanError(f"{target}, line {number}: {exc}; correct or delete that "
                               f"line") from None
        if (time_, path, decision, label) == COLUMNS:
            continue  # a header written again by a second writer process
        if decision == "":
            current.pop(path, None)
        else:
            current[path] = Review(path=path, decision=decision, label=label, time=time_,
                                   sha256=sha256)
    return current


def _read_text(target: Path) -> str:
    """review.csv's text ("" when there is none), a byte-order mark dropped."""
    try:
        fd = _open_regular(target, os.O_RDONLY)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise TvcleanError(f"cannot read {target}: {os_error_cause(exc)}") from None
    try:
        with os.fdopen(fd, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise TvcleanError(f"cannot read {target}: {os_error_cause(exc)}") from None
    return data.decode("utf-8-sig", errors="replace")


def apply_reviews(table: TrainingValues, reviews: dict[str, Review]) -> int:
    """Let the reviewed decisions override the computed ones in `table` (in place).

    clean: kept under its given label; dirty: discarded; relabel: kept under
    the reviewed label. Unreadable images keep "error". Returns how many
    reviews name no image of the table (the data changed since). Reviews of files
    changed since are left out before (drop_changed).
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
