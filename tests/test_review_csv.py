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
    assert lines[0] == "time,path,decision,label,sha256" and len(lines) == 6  # none rewritten


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


HEADER = "time,path,decision,label\n"


def test_the_next_decision_after_a_torn_line_is_saved_whole(run):
    """A torn tail is cut off by the next append: the new line never runs into it."""
    append_review(run, "cat/a.png", "dirty")
    with open(review_path(run), "a") as fh:
        fh.write("2026-01-01T00:00:00,cat/b.png,rel")  # the writer died mid-line
    append_review(run, "cat/c.png", "dirty")
    reviews = read_reviews(run)
    assert set(reviews) == {"cat/a.png", "cat/c.png"}
    lines = review_path(run).read_text().splitlines()
    assert len(lines) == 3 and lines[-1].endswith(",cat/c.png,dirty,,")


def test_a_torn_header_is_written_again(run):
    review_path(run).write_text("time,pa")
    append_review(run, "cat/a.png", "dirty")
    assert review_path(run).read_text().startswith("time,path,decision,label,sha256\n")
    assert set(read_reviews(run)) == {"cat/a.png"}


def test_an_unterminated_whole_row_counts_and_is_ended_before_the_next(run):
    review_path(run).write_text(HEADER + "t,cat/a.png,dirty,")  # typed by hand, no newline
    assert set(read_reviews(run)) == {"cat/a.png"}
    append_review(run, "cat/b.png", "clean", "cat")
    assert set(read_reviews(run)) == {"cat/a.png", "cat/b.png"}


@pytest.mark.parametrize("body, message", [
    ('t,"cat/a.png,dirty,\nt,cat/b.png,dirty,\n', "line 2: cannot be read as CSV"),
    ("t,cat/a.png\nt,cat/b.png,dirty,\n", "line 2: has 2 fields; the header names 4"),
    ("t,cat/b.png,dirty,\nt," + "x" * 140_000 + ",dirty,\n", "line 3: cannot be read as CSV"),
    ("t,cat/a.png,relabel,zebra\n", "line 2: relabels cat/a.png as 'zebra', which is not a "
                                    "class"),
    ("t,cat/a.png,relabel,\n", "line 2: relabels cat/a.png as '', which is not a class"),
])
def test_a_damaged_line_is_an_error_naming_it(run, body, message):
    """A stray quote would swallow every later line, a short row would read as an undo, a
    relabel to an unknown name would make a class folder: each stops with its line."""
    review_path(run).write_text(HEADER + body)
    with pytest.raises(TvcleanError, match=message + ".*correct or delete that line"):
        read_reviews(run, classes=["cat", "dog"])


def test_a_byte_order_mark_and_windows_line_ends_are_read(run):
    review_path(run).write_bytes(b"\xef\xbb\xbf" + (HEADER + "t,cat/a.png,dirty,\n")
                                 .replace("\n", "\r\n").encode())
    assert set(read_reviews(run, classes=["cat"])) == {"cat/a.png"}


def test_a_pipe_or_a_link_is_refused_at_once(run, tmp_path):
    import os
    outside = tmp_path / "elsewhere.csv"
    outside.write_text(HEADER + "t,cat/a.png,dirty,\n")
    review_path(run).symlink_to(outside)
    for call in (lambda: read_reviews(run), lambda: append_review(run, "cat/b.png", "dirty")):
        with pytest.raises(TvcleanError, match="review.csv is a symbolic link"):
            call()
    assert outside.read_text() == HEADER + "t,cat/a.png,dirty,\n"
    review_path(run).unlink()
    os.mkfifo(review_path(run))
    for call in (lambda: read_reviews(run), lambda: append_review(run, "cat/b.png", "dirty")):
        with pytest.raises(TvcleanError, match="is not a regular file"):
            call()


def test_a_review_is_of_the_picture_it_was_made_of(run, tmp_path):
    """Reviews are kept by name; the file's content says whether it is still that picture."""
    from tvcore.io.modelzoo import sha256_file
    image = tmp_path / "a.png"
    image.write_bytes(b"first picture")
    append_review(run, "cat/a.png", "dirty", sha256=sha256_file(image))
    review = read_reviews(run)["cat/a.png"]
    assert review.sha256 == sha256_file(image) and review.is_of(image)
    image.write_bytes(b"another picture, same name")
    assert not review.is_of(image)
    assert not review.is_of(tmp_path / "gone.png")
    review_path(run).write_text(HEADER + "t,cat/a.png,dirty,\n")  # written before the column
    assert read_reviews(run)["cat/a.png"].is_of(image)  # nothing recorded: it counts


@pytest.mark.parametrize("torn", ["t,cat/b.png,relabel,do", "t,cat/b.png,dirty,,9f86d0"])
def test_a_line_torn_inside_its_last_columns_is_not_taken_for_a_row(run, torn):
    """A line cut in its label or its sha256 parses, but lacks columns or hash digits."""
    append_review(run, "cat/a.png", "dirty", sha256="0" * 64)
    with open(review_path(run), "a") as fh:
        fh.write(torn)
    assert set(read_reviews(run, classes=["cat", "dog"])) == {"cat/a.png"}
    append_review(run, "cat/c.png", "dirty")
    assert set(read_reviews(run, classes=["cat", "dog"])) == {"cat/a.png", "cat/c.png"}
