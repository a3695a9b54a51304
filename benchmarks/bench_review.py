"""Start-up and first-page times of `tvclean review` on a synthetic run of 100,000 images.

    python -m benchmarks.bench_review [--rows N] [--repeat R] [--no-browser] [--dir DIR]

A run directory with training_values.csv (written by the project's writer), a
feature index and a one-column feature matrix is made once (no image files:
the page shows placeholders, so only the table's cost is measured). Then:

  command          `tvclean review RUN --no-open` in a fresh process: until it prints its
                   URL (Python start-up, imports, binding the port), and until it answers
                   the first page of the review queue (+ reading the run; a browser
                   opened at the URL starts meanwhile)
  start-up parts   in this process: ReviewState (read training_values.csv, the feature
                   index, the views and the review queue), then binding the server
  API              GET /api/state, the first page (60 images) of each view (unreadable:
                   the first time, when the feature index is read), a file-name search
                   over every row, one saved decision (POST /api/review)
  page in Chromium driver.get(URL) until the first page's cards are in the DOM
                   (skipped without chromium, chromedriver and selenium)

Each figure is the median of R repeats (the first, cold, is shown separately for the
command). Timings on a busy machine are noisy: compare numbers taken in the same run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tvcore.atomicfile import atomic_save_npy, atomic_write_json
from tvcore.review import ReviewServer, ReviewState
from tvcore.rundir import RunDir, read_training_values
from tvcore.rundir.features import load_features
from tvcore.rundir.ownership import claim
from tvcore.rundir.tables import TrainingValues, ranks, write_index, write_training_values

CLASSES = [f"class{k:02d}" for k in range(20)]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def make_run(root: Path, rows: int, seed: int = 0) -> RunDir:
    """A filtered run of `rows` images in 20 classes, about 7% discarded, 0.5% unreadable."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), rows)
    score = rng.normal(0.02, 0.015, rows)
    stderr = rng.uniform(0.002, 0.02, rows)
    unreadable = rng.random(rows) < 0.005
    score[unreadable] = np.nan
    decision = ["error" if u else ("dirty" if s < 0 else "clean")
                for u, s in zip(unreadable, score)]
    paths = [f"{CLASSES[y]}/photo_{i:07d}.jpg" for i, y in enumerate(labels)]
    suggested = [CLASSES[(y + 1) % len(CLASSES)] if d == "dirty" and i % 3 else ""
                 for i, (y, d) in enumerate(zip(labels, decision))]
    table = TrainingValues(
        path=paths, abs_path=[f"/nonexistent/train/{p}" for p in paths],
        given_label=[CLASSES[y] for y in labels], given_label_index=labels.astype(np.int64),
        decision=decision, is_label_issue=np.array([d == "dirty" for d in decision]),
        score=score, value=score - stderr, stderr=stderr, mc_value=np.full(rows, np.nan),
        mc_stderr=np.full(rows, np.nan), mc_count=np.zeros(rows, np.int64),
        suggested_label=suggested, rank=ranks(score), decision_source=["computed"] * rows,
        reviewed_label=[""] * rows)
    run = RunDir(root)
    claim(run.root)
    write_index(run.features / "train_index.csv", paths, table.abs_path,
                [int(y) for y in labels], CLASSES,
                {i: "not a readable image (corrupt or unsupported format)"
                 for i in np.flatnonzero(unreadable)})
    atomic_save_npy(run.features / "train.npy", np.zeros((rows, 1), np.float32))
    val = [k for k in range(len(CLASSES)) for _ in range(5)]
    write_index(run.features / "val_index.csv", [f"v{i}.jpg" for i in range(len(val))],
                [f"/nonexistent/val/v{i}.jpg" for i in range(len(val))], val, CLASSES, {})
    atomic_save_npy(run.features / "val.npy", np.zeros((len(val), 1), np.float32))
    atomic_write_json(run.features / "meta.json", {"classes": CLASSES, "dim": 1})
    write_training_values(run.training_values, table)
    return run


def timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def command_to_first_page(run: RunDir) -> tuple[float, float]:
    """Seconds from starting `tvclean review` to its URL printed, and to the first page of
    the review queue answered."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "tvclean", "review", str(run.root),
                                "--no-open"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    assert process.stdout is not None
    url = process.stdout.readline().strip()
    printed = time.perf_counter() - started
    try:
        assert url.startswith("http://127.0.0.1:"), url
        port, token = url.split(":")[2].split("/")[0], url.rpartition("=")[2]
        connection = http.client.HTTPConnection("127.0.0.1", int(port), timeout=120)
        connection.request("GET", f"/api/items?view=next&size=60&token={token}")
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        answered = time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(30)
    return printed, answered


def get(server: ReviewServer, path: str, body: dict | None = None) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"Cookie": f"{server.cookie}={server.token}"}
    if body is None:
        connection.request("GET", path, headers=headers)
    else:
        connection.request("POST", path, json.dumps(body),
                           {**headers, "Content-Type": "application/json"})
    response = connection.getresponse()
    data = response.read()
    assert response.status == 200, (path, response.status, data[:200])
    connection.close()
    return data


def browser_first_page(url: str) -> float | None:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        return None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
    except ImportError:
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1400,900",
                 f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        started = time.perf_counter()
        driver.get(url)
        while len(driver.find_elements(By.CSS_SELECTOR, "#grid .card")) < 60:
            time.sleep(0.01)
        return time.perf_counter() - started
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--dir", type=Path, default=None, help="keep the run here")
    args = parser.parse_args(argv)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench-review-"))
    run_root = folder / "run"
    if not (run_root / "training_values.csv").exists():
        started = time.perf_counter()
        make_run(run_root, args.rows)
        print(f"made a run of {args.rows:,} images in {time.perf_counter() - started:.1f}s: "
              f"{run_root}", flush=True)
    run = RunDir(run_root)
    results: list[tuple[str, float]] = []
    cold = command_to_first_page(run)
    warm = [command_to_first_page(run) for _ in range(args.repeat)]
    results.append(("command: URL printed (cold)", cold[0]))
    results.append(("command: first page answered (cold)", cold[1]))
    results.append(("command: URL printed", statistics.median(w[0] for w in warm)))
    results.append(("command: first page answered", statistics.median(w[1] for w in warm)))
    results.append(("  read training_values.csv",
                     timed(lambda: read_training_values(run.training_values), args.repeat)[0]))
    results.append(("  load_features (index)", timed(lambda: load_features(run), args.repeat)[0]))
    seconds, state = timed(lambda: ReviewState(run), args.repeat)
    results.append(("ReviewState (all of start-up)", seconds))
    assert isinstance(state, ReviewState)
    server = ReviewServer(run)
    server._state = state  # the one just timed
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for name, path in (("GET /api/state", "/api/state"),
                           ("first page: review next", "/api/items?view=next&size=60"),
                           ("first page: discarded", "/api/items?view=discarded&size=60"),
                           ("first page: borderline", "/api/items?view=borderline&size=60"),
                           ("first page: one class", f"/api/items?view=class&label={CLASSES[3]}"
                                                     "&size=60")):
            seconds, body = timed(lambda p=path: get(server, p), args.repeat)
            results.append((f"{name} ({len(body):,} bytes)", seconds))  # type: ignore[arg-type]
        started = time.perf_counter()  # once: the feature index is read on first need
        get(server, "/api/items?view=unreadable&size=60")
        results.append(("first page: unreadable (reads the index, once)",
                        time.perf_counter() - started))
        queries = iter(range(10**6))  # a new file-name search each time (the last is cached)
        results.append(("a file-name search over every row",
                        timed(lambda: get(server, f"/api/items?view=all&size=60&q=photo_00"
                                                  f"{next(queries):03d}"), args.repeat)[0]))
        row = int(state.order("next")[0])
        results.append(("save one decision (fsync)",
                        timed(lambda: get(server, "/api/review",
                                          {"row": row, "decision": "dirty"}), args.repeat)[0]))
        if not args.no_browser:
            page = browser_first_page(server.url)
            if page is not None:
                results.append(("Chromium: URL to 60 cards shown", page))
    finally:
        server.shutdown()
        server.server_close()
    print(f"\n`tvclean review` on {len(state):,} images (median of {args.repeat})")
    for name, seconds in results:
        print(f"  {name:<48} {seconds * 1000:9.1f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
