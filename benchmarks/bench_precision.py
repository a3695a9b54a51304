"""Cleaning quality with int8 features against fp32 features, on the quality suite's cases.

    python -m benchmarks precision [--cases all|quick|KEY,...] [--model efficientnet-lite0]
                                   [--int8 efficientnet-lite0-int8] [--methods tvclean,...]
                                   [--seed 0] [--tolerance 0.005] [--json OUT.json]

Every case of `python -m benchmarks quality` (benchmarks.cases) is built once on
the fp32 model's features, then run twice with the same labels and the same
images: once on those features, once on the int8 model's features of the very
same images (rows matched by the fp32 features; both models' features are
extracted once and cached, keyed by each model's sha256). The table shows F1,
ROC-AUC and downstream test accuracy for both and the int8 - fp32 differences;
the last line says whether every case stays within --tolerance (the rule for
making int8 the default: 0.005 in F1 and accuracy).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np
from threadpoolctl import threadpool_limits

from tvcore.errors import TvcleanError

from . import bench_quality as quality
from .cases import QUICK, Case
from .datasets import DATASETS, load_features

TOLERANCE = 0.005
SPLITS = ("train", "val", "test")


def row_index(fp32: str) -> dict[int, tuple[str, str, int]]:
    """hash of an fp32 feature row -> (data set, split, row) over every data set of the suite
    (a hash, not the 5 KB row, keeps 70,000 keys small)."""
    index = {}
    for dataset in DATASETS:
        data = load_features(dataset, fp32)
        for split in SPLITS:
            for i, row in enumerate(getattr(data, f"{split}_X")):
                index.setdefault(hash(row.tobytes()), (dataset, split, i))
    return index


def int8_case(case: Case, index: dict, int8: str) -> Case:
    """The same case on the int8 model's features of the same images."""
    loaded = {dataset: load_features(dataset, int8) for dataset in DATASETS}

    def swap(X: np.ndarray) -> np.ndarray:
        rows = []
        for row in X:
            dataset, split, i = index[hash(row.tobytes())]
            rows.append(getattr(loaded[dataset], f"{split}_X")[i])
        return np.asarray(rows, np.float32)
    return dataclasses.replace(case, train_X=swap(case.train_X), val_X=swap(case.val_X),
                               test_X=swap(case.test_X))


def run_case(key: str, fp32: str, int8: str, methods: list[str], seed: int, index: dict
             ) -> list[dict]:
    """One row per method: its fp32 and int8 metrics on the same labels and images."""
    case32 = quality.SPECS[key].build(seed)
    case8 = int8_case(case32, index, int8)
    rows = []
    for name in methods:
        row = {"method": quality.LABELS.get(name, name)}
        for tag, case in (("fp32", case32), ("int8", case8)):
            metrics = quality.make_row(case, name, quality.METHODS[name](case, seed), seed, None)
            row.update({f"{k}_{tag}": metrics[k] for k in ("f1", "roc_auc", "accuracy")})
        for k in ("f1", "roc_auc", "accuracy"):
            row[f"{k}_delta"] = row[f"{k}_int8"] - row[f"{k}_fp32"]
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
    parser.add_argument("--cases", default="all",
                        help=f"all, quick or comma-separated: {', '.join(quality.SPECS)}")
    parser.add_argument("--model", default="efficientnet-lite0", help="the fp32 model")
    parser.add_argument("--int8", default="efficientnet-lite0-int8", help="its int8 version")
    parser.add_argument("--methods", default="tvclean",
                        help=f"comma-separated: {', '.join(quality.METHODS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    parser.add_argument("--json", help="also write every case's rows to this JSON file")
    args = parser.parse_args(argv)
    cases = ([spec.key for spec in quality.SUITE] if args.cases == "all" else QUICK if args.cases == "quick"
             else args.cases.split(","))
    methods = args.methods.split(",")
    try:
        quality._check_known(cases, quality.SPECS, "--cases")
        quality._check_known(methods, quality.METHODS, "--methods")
    except TvcleanError as exc:
        sys.exit(str(exc))
    index = row_index(args.model)
    dump, worst, largest = [], 0.0, 0.0
    with threadpool_limits(1, user_api="blas"):
        for key in cases:
            rows = run_case(key, args.model, args.int8, methods, args.seed, index)
            print(f"\n{key} (seed {args.seed}): {args.model} vs {args.int8}")
            print(format_rows(rows), flush=True)
            dump.append({"case": key, "seed": args.seed, "rows": rows})
            deltas = [r[f"{k}_delta"] for r in rows for k in ("f1", "accuracy")]
            worst, largest = min([worst] + deltas), max([largest] + [abs(d) for d in deltas])
    verdict = "within" if worst >= -args.tolerance else "NOT within"
    print(f"\nover all cases: largest drop in F1 or accuracy {max(0.0, -worst):.3f} ({verdict} "
          f"the tolerance {args.tolerance}); largest change either way {largest:.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(dump, fh, indent=1)
