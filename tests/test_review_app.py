"""`tvclean review`: the review queue (against a naive reference), the views and paging, saving
and undo, thumbnails, the server's token, paths and headers, start-up errors, the CLI."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tvclean.main import cli
from tvcore.atomicfile import atomic_save_npy, atomic_write_json
from tvcore.errors import TvcleanError
from tvcore.review import ReviewState, decision_margin, open_review, review_queue
from tvcore.review.queue import BAND
from tvcore.review.state import MAX_PAGE, label_probability, margin_text, plain_number
from tvcore.rundir import RunDir, read_training_values
from tvcore.rundir.ownership import claim
from tvcore.rundir.review import append_review, read_reviews, review_path
from tvcore.rundir.tables import TrainingValues, ranks, write_index, write_training_values

CLASSES = ["cat", 'd<b>&"og', "eel"]
NASTY_FILE = '<img src=x onerror="document.title=1">.png'  # shown as text, never as HTML
UNREADABLE = (5,)
UNREADABLE_ERROR = "not a readable image (corrupt or unsupported format)"
ROOT = Path(__file__).resolve().parents[1]


# --- a run to review ------------------------------------------------------------------------


def table_of(labels, score, stderr, classes, paths=None, decision=None,
             suggested=None) -> TrainingValues:
    """A TrainingValues with the given scores (decision by the sign; NaN score: unreadable)."""
    n = len(labels)
    paths = paths or [f"{classes[y]}/img{i:06d}.png" for i, y in enumerate(labels)]
    score = np.asarray(score, np.float64)
    if decision is None:
        decision = ["error" if np.isnan(s) else ("dirty" if s < 0 else "clean") for s in score]
    return TrainingValues(
        path=list(paths), abs_path=[f"/data/train/{p}" for p in paths],
        given_label=[classes[y] for y in labels],
        given_label_index=np.asarray(labels, np.int64), decision=list(decision),
        is_label_issue=np.array([d == "dirty" for d in decision]), score=score,
        value=score - np.asarray(stderr), stderr=np.asarray(stderr, np.float64),
        mc_value=np.full(n, np.nan), mc_stderr=np.full(n, np.nan),
        mc_count=np.zeros(n, np.int64), suggested_label=suggested or [""] * n,
        rank=ranks(score), decision_source=["computed"] * n, reviewed_label=[""] * n)


def write_run(run_root: Path, table: TrainingValues, classes, errors: dict[int, str]) -> RunDir:
    """A run holding features/ (index, zero features, meta) and training_values.csv."""
    run = RunDir(run_root)
    claim(run.root)
    labels = [int(y) for y in table.given_label_index]
    write_index(run.features / "train_index.csv", table.path, table.abs_path, labels, classes,
                errors)
    atomic_save_npy(run.features / "train.npy", np.zeros((len(table), 1), np.float32))
    val = [k for k in range(len(classes)) for _ in range(2)]
    write_index(run.features / "val_index.csv", [f"v{i}.png" for i in range(len(val))],
                [f"/data/val/v{i}.png" for i in range(len(val))], val, classes, {})
    atomic_save_npy(run.features / "val.npy", np.zeros((len(val), 1), np.float32))
    atomic_write_json(run.features / "meta.json", {"classes": list(classes), "dim": 1})
    write_training_values(run.training_values, table)
    return run


def make_review_run(root: Path, per_class: int = 8) -> RunDir:
    """A run of real image files in 3 classes (one with HTML in its name), one file named with
    HTML, one unreadable file; scores fixed by a seed, suggested labels for the discarded."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    n = labels.size
    data = root / "data" / "train"
    paths = []
    for i, y in enumerate(labels):
        relative = f"{CLASSES[y]}/{NASTY_FILE if i == 1 else f'img{i:03d}.png'}"
        path = data / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if i in UNREADABLE:
            path.write_bytes(b"not an image")
        else:
            pixels = np.zeros((48, 64, 3), np.uint8)
            pixels[..., y] = 60 + 7 * i
            pixels[8:40, 8 + i % 40:24 + i % 40] = 255  # a white bar, a little further each image
            Image.fromarray(pixels).save(path)
        paths.append(relative)
    score = np.round(rng.normal(0.0, 0.01, n), 6)
    score[0] = -0.0123  # the first image: discarded
    stderr = np.round(rng.uniform(0.002, 0.01, n), 6)
    score[list(UNREADABLE)] = np.nan
    suggested = [CLASSES[(y + 1) % len(CLASSES)] if s < 0 else "" for s, y in zip(score, labels)]
    table = table_of(labels, score, stderr, CLASSES, paths=paths, suggested=suggested)
    table.abs_path = [str(data / p) for p in paths]
    return write_run(root / "run", table, CLASSES, {i: UNREADABLE_ERROR for i in UNREADABLE})


@pytest.fixture
def run(tmp_path) -> RunDir:
    return make_review_run(tmp_path)


# --- the review queue -----------------------------------------------------------------------


def naive_queue(table: TrainingValues, reviewed: set[str], threshold: float = 0.0) -> list[int]:
    """The queue's definition, literally: bands of half a standard error, most uncertain first;
    in a band, the i-th most uncertain of every class before any class's (i+1)-th."""
    entries = []
    for i in range(len(table)):
        if table.decision[i] == "error":
            continue
        distance = abs(table.score[i] - threshold)
        se = table.stderr[i]
        if np.isfinite(se) and se > 0:
            margin, band, near = distance / se, int(np.floor(distance / se / BAND)), distance / se
        else:
            margin = np.inf if distance > 0 else 0.0
            band = int(np.floor(margin / BAND)) if np.isfinite(margin) else 10**18
            near = margin if np.isfinite(margin) else distance
        entries.append((band, int(table.given_label_index[i]), near, i))
    order = []
    for band in sorted({e[0] for e in entries}):
        classes: dict[int, list] = {}
        for e in sorted(x for x in entries if x[0] == band):
            classes.setdefault(e[1], []).append(e)
        turn = 0
        while any(len(c) > turn for c in classes.values()):
            order += [e[3] for e in sorted((c[turn] for c in classes.values() if len(c) > turn),
                                           key=lambda e: (e[2], e[3]))]
            turn += 1
    return [i for i in order if table.path[i] not in reviewed]


def random_table(rng, n, n_classes) -> TrainingValues:
    labels = rng.integers(0, n_classes, n)
    score = rng.normal(0, 0.01, n)
    stderr = rng.uniform(0.001, 0.02, n)
    score[rng.random(n) < 0.1] = np.nan  # unreadable
    stderr[rng.random(n) < 0.05] = 0.0  # no standard error: a certain decision
    score[rng.random(n) < 0.05] = 0.0  # on the threshold
    score = np.where(rng.random(n) < 0.1, np.round(score, 3), score)  # ties
    return table_of(labels, score, stderr, [f"c{k}" for k in range(n_classes)])


@pytest.mark.parametrize("n,n_classes", [(0, 2), (1, 2), (7, 1), (50, 3), (400, 10), (1000, 4)])
def test_queue_matches_the_naive_definition(n, n_classes):
    rng = np.random.default_rng(n + n_classes)
    table = random_table(rng, n, n_classes)
    reviewed = {table.path[i] for i in range(n) if rng.random() < 0.2}
    for threshold in (0.0, 0.004):
        assert list(review_queue(table, reviewed, threshold)) == \
            naive_queue(table, reviewed, threshold)


def test_queue_leaves_out_reviewed_and_unreadable_and_does_not_reshuffle():
    table = random_table(np.random.default_rng(3), 300, 4)
    full = review_queue(table)
    readable = [i for i in range(300) if table.decision[i] != "error"]
    assert sorted(full.tolist()) == readable  # every readable image once
    reviewed = {table.path[i] for i in full[:40:3]} | {table.path[i] for i in full[-5:]}
    rest = review_queue(table, reviewed)
    assert rest.tolist() == [i for i in full if table.path[i] not in reviewed]
    assert review_queue(table, read_like(reviewed)).tolist() == rest.tolist()  # a dict works


def read_like(paths):
    return {p: object() for p in paths}


def test_queue_goes_round_the_classes_inside_a_band():
    # class 0: six images 0.01..0.06 se off; class 1: two at 0.3, 0.4 and one at 0.7 (band 1)
    score = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, -0.3, 0.4, 0.7]) * 0.01
    labels = [0, 0, 0, 0, 0, 0, 1, 1, 1]
    table = table_of(labels, score, np.full(9, 0.01), ["a", "b"])
    assert review_queue(table).tolist() == [0, 6, 1, 7, 2, 3, 4, 5, 8]


def test_decision_margin():
    margin = decision_margin(np.array([-0.02, 0.01, 0.0, 0.5, np.nan]),
                             np.array([0.01, 0.0, 0.0, np.nan, 0.1]), threshold=0.0)
    assert margin[0] == pytest.approx(2.0)
    assert margin[1] == np.inf and margin[2] == 0.0
    assert margin[3] == 0.5  # no standard error (the posterior's log-odds): the distance
    assert np.isnan(margin[4])
    assert decision_margin(np.array([0.03]), np.array([0.01]), 0.01)[0] == pytest.approx(2.0)


def test_numbers_are_plain_decimals():
    assert plain_number(-0.0123, sign=True) == "-0.0123"
    assert plain_number(0.0123, sign=True) == "+0.0123"
    assert plain_number(0.000012345) == "0.0000123"
    assert plain_number(123.456) == "123"
    assert plain_number(1.5) == "1.50"
    assert plain_number(0.0) == "0"
    assert plain_number(float("nan")) == ""
    assert plain_number(1e-15) == "0"
    assert "e" not in plain_number(-3.2e-9, sign=True)
    assert [margin_text(m) for m in (0.00007, 2.345, 140.2, np.inf, np.nan)] == \
        ["0.00", "2.35", "140", "", ""]


# --- views, paging, decisions ---------------------------------------------------------------


def test_views_hold_the_rows_the_table_says(run):
    state = ReviewState(run)
    t = state.table
    by_rank = sorted(range(len(t)), key=lambda i: t.rank[i])
    assert state.order("discarded").tolist() == [i for i in by_rank if t.decision[i] == "dirty"]
    assert state.order("all").tolist() == by_rank
    assert state.order("unreadable").tolist() == list(UNREADABLE)
    margins = [abs(t.score[i]) / t.stderr[i] for i in state.order("borderline")]
    assert margins == sorted(margins) and len(margins) == len(t) - len(UNREADABLE)
    for name in CLASSES:
        assert state.order("class", name).tolist() == [i for i in by_rank
                                                       if t.given_label[i] == name]
        assert state.order("suggested", name).tolist() == [i for i in by_rank
                                                           if t.suggested_label[i] == name]
    assert state.order("next").tolist() == review_queue(t).tolist()
    with pytest.raises(TvcleanError, match="no class 'bird'"):
        state.order("class", "bird")
    item = state.item(UNREADABLE[0])
    assert item["error"] == UNREADABLE_ERROR and item["score"] == ""
    first = state.item(0)
    assert (first["score"], first["given"], first["suggested"]) == ("-0.0123", "cat", CLASSES[1])
    assert first["name"] == "img000.png" and first["path"] == "cat/img000.png"


def test_pages_and_search(run):
    state = ReviewState(run)
    pages, offset = [], 0
    while offset is not None:
        page = state.page("all", offset=offset, size=5)
        assert len(page.items) <= 5 and page.total == len(state)
        pages += [item["row"] for item in page.items]
        offset = page.next_offset
    assert pages == state.order("all").tolist()
    found = state.page("all", query="ONERROR")
    assert [item["row"] for item in found.items] == [1] and found.total == 1
    assert found.items[0]["name"] == NASTY_FILE
    assert state.page("discarded", query="zzz").items == []
    assert len(state.page("all", size=10**6).items) == min(MAX_PAGE, len(state))


def test_reviewing_a_page_of_the_queue_does_not_move_the_next(run):
    state = ReviewState(run)
    first = state.page("next", size=4)
    second = state.page("next", offset=first.next_offset, size=4)
    for item in first.items:
        state.decide(item["row"], "clean")
    again = state.page("next", offset=first.next_offset, size=4)
    assert [i["row"] for i in again.items] == [i["row"] for i in second.items]
    assert again.total == first.total - 4 and again.before == 0
    assert [i["row"] for i in state.page("next", size=4).items] == \
        [i["row"] for i in second.items]  # the head of the queue is what is left


def test_decisions_are_saved_at_once_and_undo_restores_the_one_before(run):
    state = ReviewState(run)
    state.decide(0, "dirty")
    state.decide(2, "relabel", CLASSES[2])
    state.decide(3, "clean")
    state.decide(3, "dirty")
    state.decide(4, "relabel", "cat")  # relabelled as its own class: kept
    saved = read_reviews(run)
    assert {p: (r.decision, r.label) for p, r in saved.items()} == {
        "cat/img000.png": ("dirty", ""), "cat/img002.png": ("relabel", CLASSES[2]),
        "cat/img003.png": ("dirty", ""), "cat/img004.png": ("clean", "cat")}
    assert state.counts()["reviewed"] == 4 and state.counts()["discarded"] == 2
    assert state.undo()["row"] == 4
    assert state.undo()["review"] == {"decision": "clean", "label": "cat"}  # 3: back to keep
    assert read_reviews(run)["cat/img003.png"].decision == "clean"
    assert "cat/img004.png" not in read_reviews(run)
    state.undo(), state.undo(), state.undo()
    assert read_reviews(run) == {} and state.undo() is None
    with pytest.raises(TvcleanError, match="not one of the run's classes"):
        state.decide(0, "relabel", "bird")
    with pytest.raises(TvcleanError, match="a decision is one of"):
        state.decide(0, "maybe")
    lines = review_path(run).read_text().splitlines()
    assert len(lines) == 1 + 5 + 5  # header, 5 decisions, 5 undos: only ever appended


def test_saved_reviews_are_shown_when_the_run_is_opened_again(run):
    state = ReviewState(run)
    state.decide(7, "dirty")
    state.decide(0, "clean")
    append_review(run, "not/in/this/run.png", "dirty")  # a stale review: ignored
    again = ReviewState(run)
    assert again.item(7)["review"] == {"decision": "dirty", "label": ""}
    assert again.counts()["reviewed"] == 2
    assert again.counts()["remaining"] == len(again) - len(UNREADABLE) - 2
    assert again.order("reviewed").tolist() == [0, 7]  # the latest first
    assert 7 not in again.order("next") and 0 not in again.order("next")


# --- start-up -------------------------------------------------------------------------------


def test_start_up_errors_name_what_to_do(tmp_path):
    with pytest.raises(TvcleanError, match="not found"):
        ReviewState(tmp_path / "nothing")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    with pytest.raises(TvcleanError, match="is not a tvclean run directory"):
        ReviewState(tmp_path / "mine")
    claim(tmp_path / "fresh")
    with pytest.raises(TvcleanError, match=r"meta.json not found: run `tvclean extract`"):
        ReviewState(tmp_path / "fresh")
    atomic_write_json(tmp_path / "fresh" / "features" / "meta.json", {"classes": CLASSES})
    with pytest.raises(TvcleanError, match=r"training_values.csv not found: run `tvclean filter`"):
        ReviewState(tmp_path / "fresh")
    runner = CliRunner()
    result = runner.invoke(cli, ["review", str(tmp_path / "fresh"), "--no-open"])
    assert result.exit_code == 1 and "run `tvclean filter`" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


# --- the server -----------------------------------------------------------------------------


@pytest.fixture
def server(run):
    server = open_review(run)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


def request(server, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def authed(server, path: str, method="GET", body=None, headers=None):
    cookie = {"Cookie": f"{server.cookie}={server.token}"}
    return request(server, method, path, body, {**cookie, **(headers or {})})


def post(server, path: str, obj) -> tuple[int, dict]:
    status, _, data = authed(server, path, "POST", json.dumps(obj).encode(),
                             {"Content-Type": "application/json"})
    return status, json.loads(data)


def test_the_page_builds_its_elements_from_text_and_needs_no_network():
    from tvcore.review import assets

    for name, (_kind, body) in assets.FILES.items():
        page = body.decode()
        for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert unsafe not in page, (name, unsafe)
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", page), name  # no CDN
    assert set(assets.FILES) == {"/", "/app.js", "/app.css"}


def test_server_listens_on_loopback_only(server):
    assert server.server_address[0] == "127.0.0.1"
    assert server.url.startswith(f"http://127.0.0.1:{server.port}/?token=")
    assert len(server.token) >= 40


@pytest.mark.parametrize("path", ["/", "/app.js", "/api/state", "/api/items?view=next",
                                  "/api/thumb?row=0&size=s", "/../../etc/passwd", "/nothing"])
def test_requests_without_the_token_are_refused(server, path):
    for headers in ({}, {"Cookie": f"{server.cookie}=wrong"},
                    {"Cookie": f"{server.cookie}={server.token[:-1]}"}):
        status, _, body = request(server, "GET", path, headers=headers)
        assert status == 403, (path, headers)
        assert b"img" not in body and b"cat" not in body
    assert request(server, "GET", path.replace("?", "?token=bad&") if "?" in path
                   else path + "?token=bad")[0] == 403


def test_a_post_without_the_token_saves_nothing(server, run):
    status, _, _ = request(server, "POST", "/api/review", json.dumps({"row": 0, "decision":
                           "dirty"}).encode(), {"Content-Type": "application/json"})
    assert status == 403 and not review_path(run).exists()


def test_the_token_url_sets_a_strict_cookie_and_leaves_the_token_out_of_the_address(server):
    status, headers, _ = request(server, "GET", f"/?token={server.token}")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"{server.cookie}={server.token};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, headers, body = authed(server, "/")
    assert status == 200 and body.startswith(b"<!DOCTYPE html>")
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


def test_a_foreign_host_name_is_refused(server):
    status, _, _ = authed(server, "/api/state", headers={"Host": "evil.example:80"})
    assert status == 403


@pytest.mark.parametrize("path", [
    "/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "//etc/passwd", "/etc/passwd",
    "/app.js/../../../etc/passwd", "/api/thumb/../../../etc/passwd", "/training_values.csv",
    "/review.csv", "/api/thumb?row=../../etc/passwd", "/api/thumb?row=%2Fetc%2Fpasswd",
    "/api/thumb?row=-1", "/api/thumb?row=1e1", "/api/thumb?row=+1", "/api/thumb?row=%201",
    "/api/thumb?row=999999", "/api/thumb?row=0&size=../../x", "/api/thumb?row=5",
])
def test_paths_and_bad_rows_get_404(server, path):
    status, _, body = authed(server, path)
    assert status == 404, path
    assert b"root:" not in body


def test_the_api_pages_and_saves(server, run):
    status, _, body = authed(server, "/api/items?view=discarded&size=3")
    page = json.loads(body)
    assert status == 200 and page["view"] == "discarded" and len(page["items"]) <= 3
    state = server.state
    assert [i["row"] for i in page["items"]] == state.order("discarded")[:3].tolist()
    assert authed(server, "/api/items?view=nope")[0] == 400
    assert authed(server, "/api/items?view=all&offset=x")[0] == 400
    assert authed(server, "/api/items?view=class&label=bird")[0] == 400
    status, answer = post(server, "/api/review", {"row": 2, "decision": "relabel",
                                                  "label": CLASSES[1]})
    assert status == 200 and answer["item"]["review"] == {"decision": "relabel",
                                                          "label": CLASSES[1]}
    assert answer["counts"]["reviewed"] == 1
    assert read_reviews(run)["cat/img002.png"].label == CLASSES[1]
    assert post(server, "/api/review", {"row": 2, "decision": "relabel", "label": "x"})[0] == 400
    assert post(server, "/api/review", {"row": "2", "decision": "maybe"})[0] == 400
    assert post(server, "/api/review", {"row": 10**6, "decision": "dirty"})[0] == 404
    assert post(server, "/api/review", {"row": True, "decision": "dirty"})[0] == 404
    status, answer = post(server, "/api/undo", {})
    assert status == 200 and answer["item"]["review"] is None and read_reviews(run) == {}
    assert post(server, "/api/undo", {})[0] == 409
    form = authed(server, "/api/review", "POST", b"row=0&decision=dirty",
                  {"Content-Type": "application/x-www-form-urlencoded"})
    assert form[0] == 415
    foreign = authed(server, "/api/review", "POST", b'{"row": 0, "decision": "dirty"}',
                     {"Content-Type": "application/json", "Origin": "http://evil.example"})
    assert foreign[0] == 403 and read_reviews(run) == {}


def test_thumbnails_are_made_once_and_cached_in_the_run(server, run):
    status, headers, body = authed(server, "/api/thumb?row=0&size=s")
    assert status == 200 and headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(body))
    assert image.size == (64, 48)  # small images are not enlarged
    cached = list((run.own / "thumbnails").rglob("*.png"))
    assert len(cached) == 1 and cached[0].read_bytes() == body
    assert authed(server, "/api/thumb?row=0&size=s")[2] == body
    assert len(list((run.own / "thumbnails").rglob("*.*"))) == 1
    status, _, body = authed(server, f"/api/thumb?row={UNREADABLE[0]}&size=l")
    assert status == 404 and json.loads(body)["error"] == UNREADABLE_ERROR


def test_large_images_are_scaled_down_as_jpeg(tmp_path):
    run = make_review_run(tmp_path)
    Image.new("RGB", (2000, 1000), (200, 30, 30)).save(run_table_path(run, 0))
    server = open_review(run)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for size, side in (("s", 256), ("l", 1024)):
            status, headers, body = authed(server, f"/api/thumb?row=0&size={size}")
            assert status == 200 and headers["content-type"] == "image/jpeg"
            assert Image.open(io.BytesIO(body)).size == (side, side // 2)
        Path(run_table_path(run, 2)).unlink()  # gone since the run was made
        status, _, body = authed(server, "/api/thumb?row=2&size=s")
        assert status == 404 and json.loads(body)["error"] == "file not found"
    finally:
        server.shutdown()
        server.server_close()


def run_table_path(run: RunDir, row: int) -> str:
    return read_training_values(run.training_values).abs_path[row]


def test_a_table_row_naming_another_file_than_extraction_read_is_not_served(tmp_path):
    from tvcore.rundir.tables import write_training_values

    run = make_review_run(tmp_path)
    elsewhere = tmp_path / "private" / "photo.png"
    elsewhere.parent.mkdir()
    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(elsewhere)
    table = read_training_values(run.training_values)
    table.abs_path[0] = str(elsewhere)  # an edited (or foreign) training_values.csv
    write_training_values(run.training_values, table)
    server = open_review(run)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        status, _, body = authed(server, "/api/thumb?row=0&size=s")
        assert status == 404 and b"another file than extraction read" in body
        assert authed(server, "/api/thumb?row=2&size=s")[0] == 200  # the other rows are served
        status, answer = post(server, "/api/review", {"row": 0, "decision": "dirty"})
        assert status == 400 and "another file" in answer["error"]
        assert not review_path(run).exists()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
    assert len(list((run.own / "thumbnails").rglob("*.*"))) == 1  # row 2's only


def test_the_server_does_not_hold_the_run_lock(server, run):
    with run.writing("filter"):  # `tvclean filter` may run while reviewing
        assert post(server, "/api/review", {"row": 0, "decision": "dirty"})[0] == 200


def test_the_first_page_of_a_100000_image_run_is_small(tmp_path):
    n = 100_000
    rng = np.random.default_rng(1)
    classes = [f"class{k}" for k in range(10)]
    labels = rng.integers(0, 10, n)
    table = table_of(labels, rng.normal(0.005, 0.01, n), rng.uniform(0.001, 0.01, n), classes)
    run = write_run(tmp_path / "run", table, classes, {})
    server = open_review(run)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for view in ("next", "discarded", "borderline", "all"):
            status, _, body = authed(server, f"/api/items?view={view}&size=60")
            page = json.loads(body)
            assert status == 200 and len(page["items"]) == 60
            assert len(body) < 40_000, (view, len(body))  # one page, not the table
        assert page["total"] == n
        status, _, body = authed(server, "/api/state")
        assert status == 200 and len(body) < 5_000
    finally:
        server.shutdown()
        server.server_close()


# --- the command ----------------------------------------------------------------------------


def start_command(run: RunDir, *args: str) -> tuple[subprocess.Popen, str]:
    """`tvclean review RUN --no-open` as a process of its own (Ctrl-C works: SIGINT default);
    returns it and the URL it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tvclean", "review", str(run.root), "--no-open", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    if not url:
        process.kill()
        raise AssertionError(process.communicate(timeout=20)[1])
    return process, url


def http_get(url: str) -> tuple[int, bytes]:
    match = re.match(r"http://127\.0\.0\.1:(\d+)(/.*)", url)
    assert match, url
    connection = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=20)
    connection.request("GET", match.group(2))
    response = connection.getresponse()
    return response.status, response.read()


def test_command_prints_the_url_and_stops_on_ctrl_c(run):
    process, url = start_command(run)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[\w-]{40,}", url)
        token = url.rpartition("=")[2]
        status, body = http_get(url.replace("/?token=", "/api/state?token="))
        assert status == 200 and json.loads(body)["images"] == len(CLASSES) * 8
        assert http_get(url.replace(token, "x" * len(token)))[0] == 403
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("review stopped: 0 reviewed, saved in ")


ROWS_12 = [row for row in range(13) if row not in UNREADABLE]  # 12 readable images


def test_kill_9_loses_no_saved_decision(run):
    process, url = start_command(run)
    token = url.rpartition("=")[2]
    port = int(re.search(r":(\d+)/", url).group(1))
    try:
        for row in ROWS_12:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            connection.request("POST", f"/api/review?token={token}",
                               json.dumps({"row": row, "decision": ("dirty", "clean")[row % 2]}),
                               {"Content-Type": "application/json"})
            assert connection.getresponse().status == 200
            connection.close()
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
    saved = read_reviews(run)
    paths = read_training_values(run.training_values).path
    assert {p: r.decision for p, r in saved.items()} == {
        paths[row]: ("dirty", "clean")[row % 2] for row in ROWS_12}
    process, url = start_command(run)  # starts again on the same file and shows them
    try:
        status, body = http_get(url.replace("/?token=", "/api/state?token="))
        assert json.loads(body)["reviewed"] == 12
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)


def test_a_port_in_use_is_one_line(run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["review", str(run.root), "--no-open", "--port",
                                          str(port)])
    assert result.exit_code == 1 and f"--port {port}: already in use" in result.output
    assert "Traceback" not in result.output


def test_help_names_the_keys_and_the_file():
    result = CliRunner().invoke(cli, ["review", "--help"])
    assert result.exit_code == 0
    for words in ("127.0.0.1", "token", "review.csv", "--no-open", "--port", "k keep"):
        assert words in result.output


def test_the_posterior_score_is_shown_as_a_probability():
    assert label_probability(0.0, float("nan")) == "0.50"
    assert label_probability(-2.0, float("nan")) == "0.12"
    assert label_probability(800.0, float("nan")) == "1.00"
    assert label_probability(0.3, 0.1) == ""  # the threshold rule: score ± stderr instead
    assert label_probability(float("nan"), float("nan")) == ""


def test_bad_posts_save_nothing_and_the_server_goes_on(server, run):
    """No decision key, JSON nested past Python's recursion limit, an unreadable image."""
    assert post(server, "/api/review", {"row": 0})[0] == 400
    deep = b'{"row": 0, "decision": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    status = authed(server, "/api/review", "POST", deep, {"Content-Type": "application/json"})[0]
    assert status == 400
    status, answer = post(server, "/api/review", {"row": UNREADABLE[0], "decision": "dirty"})
    assert status == 400 and "could not be read" in answer["error"]
    assert read_reviews(run) == {}
    assert post(server, "/api/review", {"row": 0, "decision": "dirty"})[0] == 200


def test_a_stalled_body_does_not_hold_a_thread_for_ever(server, monkeypatch):
    import socket

    from tvcore.review.server import ReviewHandler
    assert 0 < ReviewHandler.timeout <= 60  # the default: a stalled client is let go
    monkeypatch.setattr(ReviewHandler, "timeout", 0.5)
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    stalled.sendall(f"POST /api/review HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                    f"Cookie: {server.cookie}={server.token}\r\nContent-Type: application/json"
                    f"\r\nContent-Length: 100\r\n\r\n{{".encode())
    assert stalled.recv(1000) == b""  # closed by the server after its timeout
    stalled.close()


def test_one_review_app_per_run(run):
    first = open_review(run)
    try:
        with pytest.raises(TvcleanError, match="is being reviewed by PID .*stop that"):
            open_review(run)
    finally:
        first.server_close()
    open_review(run).server_close()  # the lock went with the first server


def test_ctrl_c_while_the_run_is_read_is_a_quiet_stop(run, monkeypatch):
    from tvcore.review import server as review_server

    def interrupted(self):
        raise KeyboardInterrupt
    monkeypatch.setattr(review_server.ReviewServer, "load", interrupted)
    assert review_server.serve_review(run, open_browser=False) is None
    monkeypatch.undo()
    open_review(run).server_close()  # nothing left held
