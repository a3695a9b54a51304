"""Cleaning quality with int8 features against fp32 features, on the quality suite's cases.

    python -m benchmarks precision [--dataset fashion|digits|all] [--noise sym20|sym40|pair30|all]
                                   [--model efficientnet-lite0] [--int8 efficientnet-lite0-int8]
                                   [--methods tvclean,...] [--seed 0] [--json OUT.json]

Every (data set, noise) case of `python -m benchmarks quality` is run twice with
the same noisy labels: once on the features of the fp32 model, once on those of
its int8 version (features of both are extracted once and cached, keyed by each
model's sha256). Pair noise takes its class pairs from the fp32 features, so
both runs clean exactly the same corrupted training set. The table shows F1 of
the discarded set, ROC-AUC and downstream test accuracy for both, and the
int8 - fp32 differences; the last line says whether every case stays within
--tolerance (the rule for making int8 the default: 0.005 in F1 and accuracy).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from threadpoolctl import threadpool_limits

from tvcore.errors import TvcleanError

from . import bench_quality as quality
from .datasets import DATASETS, NOISES, load_features, noisy_labels

TOLERANCE = 0.005


def run_case(dataset: str, noise: str, fp32: str, int8: str, methods: list[str],
             seed: int = 0) -> list[dict]:
    """One row per method: its fp32 and int8 metrics on the same noisy labels."""
    data32, data8 = load_features(dataset, fp32), load_features(dataset, int8)
    if not (np.array_equal(data32.train_y, data8.train_y)
            and np.array_equal(data32.test_y, data8.test_y)):
        raise TvcleanError(f"{dataset}: the cached features of {fp32} and {int8} are of "
                           f"different images")
    noisy_y, flipped = noisy_labels(data32, noise, seed)  # pairs from the fp32 features
    rows = []
    for name in methods:
        row = {"method": quality.LABELS.get(name, name)}
        for tag, data in (("fp32", data32), ("int8", data8)):
            dirty, values = quality.METHODS[name](data.train_X, noisy_y, data.val_X, data.val_y,
                                                  seed)
            metrics = quality._row(name, data, flipped, noisy_y, dirty, values, None, seed)
            row.update({f"{key}_{tag}": metrics[key] for key in ("f1", "roc_auc", "accuracy")})
        for key in ("f1", "roc_auc", "accuracy"):
            row[f"{key}_delta"] = row[f"{key}_int8"] - row[f"{key}_fp32"]
        rows.append(row)
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'method':<26} {'F1 fp32':>8} {'int8':>6} {'delta':>7} {'AUC fp32':>9} {'int8':>6} "
             f"{'delta':>7} {'acc fp32':>9} {'int8':>6} {'delta':>7}"]
    for r in rows:
        lines.append(f"{r['method']:<26} {r['f1_fp32']:>8.3f} {r['f1_int8']:>6.3f} "
                     f"{r['f1_delta']:>+7.3f} {r['roc_auc_fp32']:>9.3f} {r['roc_auc_int8']:>6.3f} "
                     f"{r['roc_auc_delta']:>+7.3f} {r['accuracy_fp32']:>9.3f} "
                     f"{r['accuracy_int8']:>6.3f} {r['accuracy_delta']:>+7.3f}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks precision", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="all", help=f"{', '.join(DATASETS)} or all")
    parser.add_argument("--noise", default="all", help=f"{', '.join(NOISES)} or all")
    parser.add_argument("--model", default="efficientnet-lite0", help="the fp32 model")
    parser.add_argument("--int8", default="efficientnet-lite0-int8", help="its int8 version")
    parser.add_argument("--methods", default="tvclean",
                        help=f"comma-separated: {', '.join(quality.METHODS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    parser.add_argument("--json", help="also write every case's rows to this JSON file")
    args = parser.parse_args(argv)
    try:
        datasets = quality._choices(args.dataset, DATASETS, "--dataset")
        noises = quality._choices(args.noise, NOISES, "--noise")
        methods = quality._choices(args.methods, quality.METHODS, "--methods")
    except TvcleanError as exc:
        sys.exit(str(exc))
    cases, worst, largest = [], 0.0, 0.0
    with threadpool_limits(1, user_api="blas"):
        for dataset in datasets:
            for noise in noises:
                rows = run_case(dataset, noise, args.model, args.int8, methods, args.seed)
                print(f"\n{dataset} {noise} (seed {args.seed}): {args.model} vs {args.int8}")
                print(format_rows(rows), flush=True)
                cases.append({"dataset": dataset, "noise": noise, "seed": args.seed, "rows": rows})
                deltas = [r[f"{k}_delta"] for r in rows for k in ("f1", "accuracy")]
                worst, largest = min([worst] + deltas), max([largest] + [abs(d) for d in deltas])
    verdict = "within" if worst >= -args.tolerance else "NOT within"
    print(f"\nover all cases: largest drop in F1 or accuracy {max(0.0, -worst):.3f} ({verdict} "
          f"the tolerance {args.tolerance}); largest change either way {largest:.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(cases, fh, indent=1)
