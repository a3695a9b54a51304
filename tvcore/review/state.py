"""What the review page shows and changes: one run's table, its views, and the saved reviews.

The run's training_values.csv is read once; every view is an order of its row
numbers, computed once (views do not change as images are reviewed, except
"next", which leaves reviewed images out). The page fetches one page of a view
at a time, so a run of 100,000 images costs no more to show than one of 100.
Every decision goes to RUN/review.csv at once (tvcore.rundir.review), before
the call returns; this object only mirrors the file.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomicfile import read_json
from ..engine.decisions import SET_ASIDE
from ..engine.posterior import label_probability
from ..errors import TvcleanError
from ..rundir import RunDir, TrainingValues, load_features, read_training_values
from ..rundir.ownership import marker_path
from ..rundir.review import (
    REVIEW_DECISIONS,
    Review,
    append_review,
    content_of,
    drop_changed,
    read_reviews,
    review_path,
)
from .queue import decision_margin, review_queue

VIEWS = ("next", "discarded", "borderline", "class", "suggested", "unreadable", "reviewed", "all")
MAX_PAGE = 200  # images per page at most (the page asks for fewer)


def plain_number(value: float, digits: int = 3, sign: bool = False) -> str:
    """`value` with `digits` significant digits and no exponent: -0.0123, 0.000456, 12.3.

    "" for NaN (no value)."""
    if not math.isfinite(value):
        return "" if math.isnan(value) else ("+" if sign and value > 0 else "") + str(value)
    if value == 0:
        return "0"
    decimals = min(12, max(0, digits - 1 - math.floor(math.log10(abs(value)))))
    text = f"{value:{'+' if sign else ''}.{decimals}f}"
    if text.lstrip("+-").strip("0.") == "":  # rounded away at 12 decimals
        return "0"
    return text


def check_review_run(run: str | Path | RunDir) -> RunDir:
    """The run, if it is a tvclean run with a training_values.csv; else a one-line error
    naming what to run."""
    run = RunDir.of(run)
    if not run.root.is_dir():
        raise TvcleanError(f"{run.root} not found: give a run directory of `tvclean clean`")
    if not run.exists():
        raise TvcleanError(f"{run.root} is not a tvclean run directory (no "
                           f"{marker_path(run.root).relative_to(run.root)}): run "
                           f"`tvclean clean` first")
    run.require("features/meta.json", "extract")
    run.require("training_values.csv", "filter")
    return run


def margin_text(margin: float) -> str:
    """Standard errors from the threshold as the page shows them: 0.07, 2.35, 140; "" where
    there is none (unreadable, or a certain decision: no standard error)."""
    if not math.isfinite(margin):
        return ""
    return f"{margin:.2f}" if margin < 100 else f"{margin:.0f}"


@dataclass
class Page:
    """One page of a view: `items` from position `offset`; `next_offset` None at the end."""

    view: str
    total: int
    offset: int
    before: int  # images of the view before this page (the position of the first one)
    next_offset: int | None
    items: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"view": self.view, "total": self.total, "offset": self.offset,
                "before": self.before, "next_offset": self.next_offset, "items": self.items}


NOT_EXTRACTED = "training_values.csv names another file than extraction read for this row"


class ReviewState:
    """One run opened for review: its table, the orders of its views and its reviews.

    Reads RUN/training_values.csv, the class names (features/meta.json), the
    filter's threshold and RUN/review.csv; the feature index, which holds the
    errors of unreadable images, is read when one is first shown. Does not take
    the run's writer lock: other tvclean commands may run meanwhile.
    """

    def __init__(self, run: str | Path | RunDir):
        run = check_review_run(run)
        self.run = run
        table = read_training_values(run.training_values)
        self.table: TrainingValues = table
        self.classes: list[str] = list(read_json(run.features / "meta.json")["classes"])
        self.threshold = float(run.resolve().filter.threshold)
        self.lock = threading.Lock()
        self._errors: list[str] | None = None
        self._extracted: list[str] | None = None  # each row's file, as extraction read it
        self._errors_lock = threading.Lock()
        self.reviews: dict[int, Review] = {}  # row -> its current review, oldest first
        # a review of a file changed since is of an earlier picture: not shown as reviewed
        current, _ = drop_changed(read_reviews(run, self.classes),
                                  dict(zip(table.path, table.abs_path)))
        saved = sorted(current.values(), key=lambda r: r.time)  # stable: file order
        if saved:
            row_of = {path: i for i, path in enumerate(table.path)}
            for review in saved:
                if review.path in row_of:
                    self.reviews[row_of[review.path]] = review
        self.reviewed = np.zeros(len(table), bool)
        self.reviewed[list(self.reviews)] = True
        self.history: list[tuple[int, Review | None]] = []  # (row, review before) for undo
        self._orders = self._make_orders()
        self._names: list[str] | None = None
        self._search: tuple[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.table)

    @property
    def errors(self) -> list[str]:
        """Why each image is unreadable ("" where it is not), from features/train_index.csv."""
        return self.load_index()

    def load_index(self) -> list[str]:
        """Read the feature index once (each row's file and error); returns the errors."""
        with self._errors_lock:  # not self.lock: item() runs under it
            if self._errors is None:
                features = load_features(self.run)
                if len(features.train.errors) != len(self.table):
                    raise TvcleanError(
                        f"{self.run.training_values} has {len(self.table)} rows but "
                        f"features/train_index.csv has {len(features.train.errors)}: re-run "
                        f"`tvclean filter` on {self.run.root}")
                self._extracted = list(features.train.paths)
                self._errors = features.train.errors
            return self._errors

    def image_path(self, row: int) -> str | None:
        """The file behind a row, or None when training_values.csv names another file than
        extraction read for it (an edited or foreign table: never served)."""
        self.load_index()
        path = self.table.abs_path[row]
        return path if self._extracted is not None and self._extracted[row] == path else None

    # --- views --------------------------------------------------------------------------

    def _make_orders(self) -> dict[str, np.ndarray]:
        t = self.table
        index = {name: k for k, name in enumerate(self.classes)}
        decision = np.array(t.decision)
        self.margin = decision_margin(t.score, t.stderr, self.threshold)
        by_rank = np.argsort(t.rank, kind="stable").astype(np.int64)
        readable = decision[by_rank] != "error"
        margin = np.where(np.isnan(self.margin), np.inf, self.margin)
        borderline = np.lexsort((np.arange(len(t)), margin))
        return {
            "next": review_queue(t, (), self.threshold),
            "discarded": by_rank[np.isin(decision[by_rank], SET_ASIDE)],
            "borderline": borderline[decision[borderline] != "error"].astype(np.int64),
            "unreadable": np.flatnonzero(decision == "error").astype(np.int64),
            "all": by_rank, "readable": by_rank[readable],
            "given": np.asarray(t.given_label_index, np.int64),
            "suggested": np.array([index.get(s, -1) for s in t.suggested_label], np.int64),
        }

    def _class_index(self, name: str) -> int:
        try:
            return self.classes.index(name)
        except ValueError:
            return -1

    def order(self, view: str, label: str = "") -> np.ndarray:
        """The rows of a view, in the view's order (for "next": only the unreviewed ones).

        next: the review queue (tvcore.review.queue); discarded: computed "dirty",
        lowest score first; borderline: the smallest |score - threshold| / stderr
        first; class / suggested: given / suggested label `label`, lowest score
        first; unreadable: in table order; reviewed: the latest review first.
        """
        o = self._orders
        if view == "next":
            with self.lock:
                return o["next"][~self.reviewed[o["next"]]]
        if view in ("class", "suggested"):
            k = self._class_index(label)
            if k < 0:
                raise TvcleanError(f"no class {label!r} in this run")
            column = o["given" if view == "class" else "suggested"]
            return o["all"][column[o["all"]] == k]
        if view == "reviewed":
            with self.lock:
                return np.array(list(self.reviews)[::-1], np.int64)
        if view in o and view in VIEWS:
            return o[view]
        raise TvcleanError(f"no view {view!r}; one of {', '.join(VIEWS)}")

    def matching(self, query: str) -> np.ndarray:
        """(n,) bool: rows whose path holds `query` (case-insensitive)."""
        query = query.lower()
        cached = self._search
        if cached is not None and cached[0] == query:
            return cached[1]
        if self._names is None:
            self._names = [p.lower() for p in self.table.path]
        mask = np.fromiter((query in name for name in self._names), bool, len(self._names))
        self._search = (query, mask)
        return mask

    def page(self, view: str, label: str = "", query: str = "", offset: int = 0,
             size: int = 60) -> Page:
        """One page of a view (filtered by a file-name search), from position `offset`.

        For "next" the offset counts in the whole queue, reviewed images
        included, so that reviewing images on one page does not move the next."""
        size = max(1, min(int(size), MAX_PAGE))
        offset = max(0, int(offset))
        if view == "next":
            base = self._orders["next"]
            with self.lock:
                todo = ~self.reviewed[base]
            if query:
                todo &= self.matching(query)[base]
            positions = np.flatnonzero(todo)
            start = int(np.searchsorted(positions, offset))
            chosen = positions[start:start + size]
            more = start + size < positions.size
            return Page(view, int(positions.size), offset, start,
                        int(chosen[-1]) + 1 if more else None,
                        [self.item(int(r)) for r in base[chosen]])
        rows = self.order(view, label)
        if query:
            rows = rows[self.matching(query)[rows]]
        chosen = rows[offset:offset + size]
        more = offset + size < rows.size
        return Page(view, int(rows.size), offset, min(offset, int(rows.size)),
                    offset + size if more else None, [self.item(int(r)) for r in chosen])

    def item(self, row: int) -> dict[str, Any]:
        """What the page shows of one image (numbers as plain decimal text)."""
        t = self.table
        review = self.reviews.get(row)
        path = t.path[row]
        return {
            "row": row, "path": path, "name": path.replace("\\", "/").rpartition("/")[2],
            "given": t.given_label[row], "suggested": t.suggested_label[row],
            "decision": t.decision[row], "source": t.decision_source[row],
            "score": plain_number(float(t.score[row]), sign=True),
            "stderr": plain_number(float(t.stderr[row])),
            "p_right": label_probability(float(t.score[row]), float(t.stderr[row])),
            "value": plain_number(float(t.value[row]), sign=True),
            "margin": margin_text(float(self.margin[row])),
            "rank": int(t.rank[row]),
            "error": (self.errors[row] or "unreadable") if t.decision[row] == "error" else "",
            "review": None if review is None else {"decision": review.decision,
                                                   "label": review.label},
        }

    # --- counts -------------------------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        """Reviewed / remaining and the size of every view, for the page header."""
        o = self._orders
        with self.lock:
            decisions = [r.decision for r in self.reviews.values()]
            reviewed_readable = int(self.reviewed[o["readable"]].sum())
        given = np.bincount(o["given"], minlength=len(self.classes))
        suggested = np.bincount(o["suggested"][o["suggested"] >= 0], minlength=len(self.classes))
        return {
            "images": len(self), "reviewed": len(decisions),
            "remaining": int(o["readable"].size) - reviewed_readable,
            "kept": decisions.count("clean"), "discarded": decisions.count("dirty"),
            "relabelled": decisions.count("relabel"),
            "views": {"next": int(o["readable"].size) - reviewed_readable,
                      "discarded": int(o["discarded"].size),
                      "borderline": int(o["borderline"].size),
                      "unreadable": int(o["unreadable"].size), "reviewed": len(decisions),
                      "all": len(self)},
            "classes": [{"name": c, "given": int(given[k]), "suggested": int(suggested[k])}
                        for k, c in enumerate(self.classes)],
        }

    def summary(self) -> dict[str, Any]:
        """Everything the page needs once: the run, its classes, the counts."""
        return {"run": str(self.run.root), "name": self.run.root.name or str(self.run.root),
                "threshold": self.threshold, "review_file": str(review_path(self.run)),
                **self.counts()}

    # --- decisions ----------------------------------------------------------------------

    def decide(self, row: int, decision: str, label: str = "") -> dict[str, Any]:
        """Save a decision about image `row`: "clean" (keep), "dirty" (discard), "relabel"
        (to class `label`) or "" (no review: back to the computed decision)."""
        self.check_row(row)
        if self.table.decision[row] == "error":
            raise TvcleanError(f"{self.table.path[row]} could not be read: there is nothing "
                               f"to decide")
        if decision not in (*REVIEW_DECISIONS, ""):
            raise TvcleanError(f"a decision is one of {', '.join(REVIEW_DECISIONS)} or empty, "
                               f"got {decision!r}")
        if decision == "relabel" and label not in self.classes:
            raise TvcleanError(f"cannot relabel as {label!r}: not one of the run's classes")
        with self.lock:
            self.history.append((row, self.reviews.get(row)))
            self._save(row, decision, label)
            return self.item(row)

    def undo(self) -> dict[str, Any] | None:
        """Take back this session's last decision (the image's review before it returns);
        None when there is nothing to undo."""
        with self.lock:
            if not self.history:
                return None
            row, before = self.history.pop()
            self._save(row, before.decision if before else "", before.label if before else "")
            return self.item(row)

    def _save(self, row: int, decision: str, label: str) -> None:
        given = self.table.given_label[row]
        if decision == "relabel" and label == given:
            decision = "clean"  # "relabelled" as what it already is: kept
        if decision == "clean":
            label = given
        elif decision == "dirty":
            label = ""
        path = self.table.path[row]
        source = self.image_path(row)
        if decision and source is None:
            raise TvcleanError(f"{path}: {NOT_EXTRACTED}; re-run `tvclean filter` on "
                               f"{self.run.root}")
        content = content_of(source) if decision and source else ""  # "": counts
        append_review(self.run, path, decision, label, self.classes, content)  # on disk first
        self.reviews.pop(row, None)
        if decision:
            self.reviews[row] = Review(path=path, decision=decision, label=label, time="",
                                       sha256=content)
        self.reviewed[row] = bool(decision)

    def check_row(self, row: int) -> None:
        if not 0 <= row < len(self):
            raise IndexError(row)
