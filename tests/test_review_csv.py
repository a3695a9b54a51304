"""RUN/review.csv: append-only decisions, last one wins, undo, torn lines, bad values."""

from __future__ import annotations

import pytest

from tvcore.errors import TvcleanError
from tvcore.rundir import RunDir
from tvcore.rundir.ownership import claim
from tvcore.rundir.review import append_review, read_reviews, review_path


@pytest.fixture
def run(tmp_path):
    claim(tmp_path / "run")
    return RunDir(tmp_path / "run")


def test_last_decision_wins_and_undo_forgets(run):
    append_review(run, "cat/a.png", "dirty")
    append_review(run, "cat/b.png", "relabel", "dog", classes=["cat", "dog"])
    append_review(run, "cat/a.png", "clean", "cat")
    append_review(run, "cat/c.png", "dirty")
    append_review(run, "cat/c.png", "")  # undo
    reviews = read_reviews(run)
    assert set(reviews) == {"cat/a.png", "cat/b.png"}
    assert (reviews["cat/a.png"].decision, reviews["cat/a.png"].label) == ("clean", "cat")
    assert (reviews["cat/b.png"].decision, reviews["cat/b.png"].label) == ("relabel", "dog")
    lines = review_path(run).read_text().splitlines()
    assert lines[0] == "time,path,decision,label" and len(lines) == 6  # nothing rewritten


def test_names_with_commas_quotes_and_html_round_trip(run):
    name = 'a "b",<i>c</i>.png'
    append_review(run, name, "dirty")
    assert read_reviews(run)[name].decision == "dirty"


def test_a_torn_last_line_is_ignored(run):
    append_review(run, "cat/a.png", "dirty")
    with open(review_path(run), "a") as fh:
        fh.write("2026-01-01T00:00:00,cat/b.png,dir")  # the writer died mid-line
    assert set(read_reviews(run)) == {"cat/a.png"}


def test_bad_values_are_refused(run):
    with pytest.raises(TvcleanError, match="one of clean, dirty, relabel"):
        append_review(run, "x.png", "maybe")
    with pytest.raises(TvcleanError, match="not one of the run's classes"):
        append_review(run, "x.png", "relabel", "eel", classes=["cat"])
    review_path(run).write_text("time,path,decision,label\nt,x.png,maybe,\n")
    with pytest.raises(TvcleanError, match=r"review.csv, line 2: decision 'maybe'"):
        read_reviews(run)
