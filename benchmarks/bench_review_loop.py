"""The review loop with a simulated reviewer: does reviewing a few images improve the rest?

    python -m benchmarks review-loop [--cases f-pair30,f-lab-lr,f-ambig20]
                                     [--reviews 0,50,100,200]
                                     [--seeds 0] [--json OUT.json]

For every case of the quality suite (benchmarks.cases; default: pair noise,
labels from a cheap labeller and labels that err where images are ambiguous,
10,000 training images each), tvclean runs once
with nobody's reviews; then a reviewer who answers from the known truth (keep a
right label, relabel a wrong one to its true class, discard an image of no
class) reviews N images and tvclean runs again with those reviews
(`tvcore.training_values(..., reviewed=...)`, what `tvclean estimate` / `filter`
do with RUN/review.csv): the reviewed images leave the Monte-Carlo subset and
join the trusted validation set, and their decisions are the reviewer's.

Two ways to choose the N images: `queue` (the review app's "review next" order,
tvcore.review.queue, computed on the first run) and `random` (a seeded sample).
The table shows, per N, F1 of the set-aside images against the truly wrong
labels ("dF1 own": the gain of the reviewed images' own decisions alone, the
first run's decisions with the reviews applied and nothing re-estimated) and
the downstream test accuracy (benchmark logistic regression on the
kept images, relabelled ones with their new label), as in `benchmarks quality`.
Goal: 100 reviews by the queue raise F1 by >= 0.05 on these cases and never
lower the accuracy.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
from threadpoolctl import threadpool_limits

from tvcore.config import Config
from tvcore.labelissues import apply_reviews, result_table, training_values
from tvcore.review.queue import review_queue
from tvcore.stages.evaluate import detection_metrics

from .bench_quality import SPECS, _check_known, _outcome, make_row
from .cases import Case

DEFAULT_CASES = ["f-pair30", "f-lab-lr", "f-ambig20"]
STRATEGIES = ("queue", "random")


def truthful_reviews(case: Case, rows: np.ndarray) -> dict[int, int | None]:
    """What a reviewer who knows the truth says about `rows`: the true class, None (discard)
    for an image of no class in the label set."""
    return {int(r): (None if case.true[r] < 0 else int(case.true[r])) for r in rows}


def f1_without_reestimate(case: Case, first, reviews: dict[int, int | None]) -> float:
    """F1 of the first run's decisions with the reviews applied and nothing re-estimated: the
    part of the gain that is the reviewed images' own decisions."""
    scored = copy.deepcopy(first.scored)
    apply_reviews(scored, case.given, reviews)
    outcome = _outcome(case, scored)
    return float(detection_metrics(case.noisy, outcome.flagged, outcome.scores)["f1"])


def run_once(case: Case, seed: int, reviewed: dict[int, int | None] | None = None):
    config = Config()
    config.estimate.seed = config.valuenet.seed = seed
    return training_values(case.train_X, case.given, case.val_X, case.val_y, config,
                           classes=list(range(case.n_classes)), reviewed=reviewed)


def chosen_rows(strategy: str, queue: np.ndarray, n_rows: int, n: int, seed: int) -> np.ndarray:
    if strategy == "queue":
        return queue[:n]
    return np.random.default_rng([seed, 11]).choice(n_rows, n, replace=False)


def loop_rows(key: str, seed: int, counts: list[int]) -> list[dict]:
    """One row per (strategy, N): F1, accuracy and the seconds of the re-run."""
    case = SPECS[key].build(seed)
    start = time.perf_counter()
    first = run_once(case, seed)
    seconds = time.perf_counter() - start
    base = make_row(case, "no reviews", _outcome(case, first.scored), seed, seconds)
    queue = review_queue(result_table(first), (), Config().filter.threshold)
    rows = [{**base, "strategy": "-", "reviews": 0, "wrong_reviewed": 0,
             "f1_not_reestimated": base["f1"]}]
    for strategy in STRATEGIES:
        for n in (c for c in counts if c > 0):
            picked = chosen_rows(strategy, queue, case.given.size, n, seed)
            start = time.perf_counter()
            reviews = truthful_reviews(case, picked)
            result = run_once(case, seed, reviews)
            row = make_row(case, f"{strategy} {n}", _outcome(case, result.scored), seed,
                           time.perf_counter() - start)
            rows.append({**row, "strategy": strategy, "reviews": n,
                         "wrong_reviewed": int(case.noisy[picked].sum()),
                         "f1_not_reestimated": f1_without_reestimate(case, first, reviews)})
    return rows


def format_rows(key: str, rows: list[dict]) -> str:
    base = rows[0]
    lines = [f"{'reviews':>14s} {'wrong among them':>16s} {'F1':>6s} {'dF1':>7s} "
             f"{'dF1 own':>7s} {'acc':>6s} {'dacc':>7s} {'seconds':>7s}"]
    for row in rows:
        lines.append(f"{row['method']:>14s} {row['wrong_reviewed']:16d} {row['f1']:6.3f} "
                     f"{row['f1'] - base['f1']:+7.3f} "
                     f"{row['f1_not_reestimated'] - base['f1']:+7.3f} {row['accuracy']:6.3f} "
                     f"{row['accuracy'] - base['accuracy']:+7.3f} {row['seconds']:7.1f}")
    return f"{key}\n" + "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks review-loop",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help=f"comma-separated cases of the quality suite: {', '.join(SPECS)}")
    parser.add_argument("--reviews", default="0,50,100,200", help="numbers of reviewed images")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--blas-threads", type=int, default=1)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    _check_known(cases, SPECS, "--cases")
    counts = [int(c) for c in args.reviews.split(",")]
    dump = []
    with threadpool_limits(args.blas_threads or None, user_api="blas"):
        for key in cases:
            for seed in (int(s) for s in args.seeds.split(",")):
                rows = loop_rows(key, seed, counts)
                print(f"\n{format_rows(key, rows)} (seed {seed})", flush=True)
                dump.append({"case": key, "seed": seed, "rows": rows})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(dump, fh, indent=1)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
