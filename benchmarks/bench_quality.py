"""Cleaning quality on real features: tvclean vs the original, cleanlab and exact KNN-Shapley.

    python -m benchmarks quality [--dataset fashion|digits|all] [--noise sym20|sym40|pair30|all]
                                 [--methods tvclean,original,...] [--seed 0] [--json OUT.json]

For every (data set, noise) case: the training labels are corrupted
(benchmarks.datasets.NOISES), every method decides which training images to
discard, and the table shows detection precision / recall / F1 against the
truly flipped labels, the fraction removed, ROC-AUC of the value ranking, and
the test accuracy of the benchmark's logistic regression trained on the kept
images ("no cleaning": all images; "oracle": exactly the unflipped ones).
Seconds: the method's own time (features are cached; the downstream fit is not counted).
BLAS runs single-threaded by default (--blas-threads): on a busy 2-core
machine, multi-threaded OpenBLAS made a logistic-regression fit 100x slower.

From Python: `run_case("fashion", "pair30", ["tvclean", "knn-shapley"])` returns
the rows; add a variant with `METHODS["mine"] = tvclean_method(lambda: my_config())`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from tvcore.config import Config
from tvcore.errors import TvcleanError
from tvcore.labelissues import training_values
from tvcore.stages.evaluate import detection_metrics

from .datasets import (
    DATASETS,
    NOISES,
    FeatureData,
    class_pairs,
    downstream_accuracy,
    load_features,
    noisy_labels,
)
from .peers import cleanlab_issues, knn_shapley

# (train_X (n, D), noisy_y (n,), val_X (m, D), val_y (m,), seed) -> (dirty (n,) bool, values (n,))
Method = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int],
                  tuple[np.ndarray, np.ndarray]]


def default_config() -> Config:
    """tvclean's defaults."""
    return Config()


def original_config(per_class: int = 1000) -> Config:
    """The original algorithm (`--preset original`) with S examples per class in the subset:
    linear head, SGD lr 1e-3, 100 episodes over the whole subset, raw features, the
    original's regressors (raw targets, MAE, Adam 1e-3, dropout 0.5), value < 0.

    A class with more than `per_class` noisy images gets a random subset of
    them in the Monte-Carlo phase; its other images are valued by its regressor.
    """
    config = Config.preset("original")
    config.estimate.per_class = per_class
    return config


def tvclean_method(make_config: Callable[[], Config]) -> Method:
    """A METHODS entry running `training_values` with make_config()'s settings and the case seed."""
    def run(train_X, noisy_y, val_X, val_y, seed):
        config = make_config()
        config.estimate.seed = config.valuenet.seed = seed
        result = training_values(train_X, noisy_y, val_X, val_y, config)
        return result.dirty, result.scores  # ranked by the number the decision used
    return run


def variant(**changes: dict) -> Callable[[], Config]:
    """The default config with some options changed: variant(estimate={"lr": 0.01})."""
    def make() -> Config:
        config = default_config()
        for section, values in changes.items():
            for name, value in values.items():
                setattr(getattr(config, section), name, value)
        return config
    return make


def scaled_original_config() -> Config:
    """The original with each class's regressor targets divided by their mean |value|."""
    config = original_config()
    config.valuenet.target_scale = "mean-abs"
    return config


METHODS: dict[str, Method] = {
    "tvclean": tvclean_method(default_config),
    "original": tvclean_method(original_config),
    "original-300": tvclean_method(functools.partial(original_config, per_class=300)),
    "original-scaled": tvclean_method(scaled_original_config),
    "cleanlab": cleanlab_issues,
    "knn-shapley": knn_shapley,
}
# Each removes one of the default's changes (README, "What each change does"):
# `--methods ablation` runs them all.
ABLATIONS: dict[str, Method] = {
    "raw-features": tvclean_method(variant(estimate={"feature_norm": "none", "lr": 0.01})),
    "unbalanced": tvclean_method(variant(estimate={"episode_per_class": -1, "episodes": 100})),
    "z0": tvclean_method(variant(filter={"confidence_z": 0.0})),
    "by-valuenet": tvclean_method(variant(filter={"decide_by": "valuenet"})),
    "mlp-head": tvclean_method(variant(estimate={"head": "mlp", "lr": 0.1, "episodes": 50})),
}
# `--methods zsweep`: the decision's confidence_z (README, the z table).
ZSWEEP: dict[str, Method] = {
    f"z{z:g}": tvclean_method(variant(filter={"confidence_z": z}))
    for z in (0.75, 1.0, 1.25, 1.5, 2.0, 2.5)}
GROUPS = {"ablation": ["tvclean", *ABLATIONS], "zsweep": list(ZSWEEP)}
MAIN_METHODS = list(METHODS)
METHODS.update(ABLATIONS)
METHODS.update(ZSWEEP)
LABELS = {"tvclean": "tvclean default", "original": "original", "knn-shapley": "KNN-Shapley k=10",
          "original-300": "original 300/class subset", "cleanlab": "cleanlab (5-fold CV LR)",
          "original-scaled": "original, scaled targets"}


@functools.cache
def cached_features(dataset: str) -> FeatureData:
    return load_features(dataset)


def _row(name: str, data: FeatureData, flipped, noisy_y, dirty, values, seconds, seed) -> dict:
    """One table row: detection metrics of `dirty` and the test accuracy of the kept images."""
    metrics = detection_metrics(flipped, dirty, values)
    keep = ~np.asarray(dirty, bool)
    accuracy = downstream_accuracy(data.train_X[keep], noisy_y[keep], data.test_X, data.test_y,
                                   seed)
    return {"method": name, "precision": metrics["precision"], "recall": metrics["recall"],
            "f1": metrics["f1"], "removed": metrics["fraction_removed"],
            "roc_auc": metrics["roc_auc"], "accuracy": accuracy, "seconds": seconds}


def run_case(dataset: str, noise: str, methods: list[str] | None = None, seed: int = 0,
             blas_threads: int | None = 1) -> list[dict]:
    """Rows of one (data set, noise) case: "no cleaning", "oracle", then every method.

    blas_threads: BLAS threads while the case runs (None: the library's default).
    """
    with threadpool_limits(blas_threads, user_api="blas"):
        return _run_case(dataset, noise, methods, seed)


def _run_case(dataset: str, noise: str, methods: list[str] | None, seed: int) -> list[dict]:
    methods = list(MAIN_METHODS) if methods is None else methods
    _check_known(methods, METHODS, "methods")
    data = cached_features(dataset)
    noisy_y, flipped = noisy_labels(data, noise, seed)
    nothing = np.zeros(flipped.size, bool)
    rows = [_row("no cleaning", data, flipped, noisy_y, nothing, np.zeros(flipped.size), None,
                 seed),
            _row("oracle", data, flipped, noisy_y, flipped, (~flipped).astype(float), None, seed)]
    rows[0].update(precision=None, recall=None, f1=None, roc_auc=None)
    for name in methods:
        start = time.perf_counter()
        dirty, values = METHODS[name](data.train_X, noisy_y, data.val_X, data.val_y, seed)
        seconds = time.perf_counter() - start
        rows.append(_row(LABELS.get(name, name), data, flipped, noisy_y, dirty, values, seconds,
                         seed))
    return rows


COLUMNS = [("method", "{}", 26), ("precision", "{:.3f}", 9), ("recall", "{:.3f}", 7),
           ("f1", "{:.3f}", 6), ("removed", "{:.3f}", 8), ("roc_auc", "{:.3f}", 8),
           ("accuracy", "{:.3f}", 9), ("seconds", "{:.1f}", 8)]


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table ("-" where a value does not apply)."""
    lines = ["  ".join(f"{name:<{width}}" if i == 0 else f"{name:>{width}}"
                       for i, (name, _, width) in enumerate(COLUMNS))]
    for row in rows:
        cells = []
        for i, (name, fmt, width) in enumerate(COLUMNS):
            text = "-" if row[name] is None else fmt.format(row[name])
            cells.append(f"{text:<{width}}" if i == 0 else f"{text:>{width}}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def describe_case(dataset: str, noise: str) -> str:
    data = cached_features(dataset)
    kind, rate = NOISES[noise]
    text = (f"{dataset}: {data.train_y.size} train / {data.val_y.size} val / {data.test_y.size} "
            f"test images, {kind} noise {rate:.0%}")
    if kind == "pair":
        names = data.class_names
        text += "\n  pairs: " + ", ".join(f"{names[k]}->{names[p]}"
                                          for k, p in enumerate(class_pairs(data)))
    return text


def _check_known(names: list[str], known, what: str) -> None:
    unknown = [name for name in names if name not in known]
    if unknown:
        raise TvcleanError(f"{what}: unknown {', '.join(unknown)}; known: {', '.join(known)}")


def _choices(value: str, known, what: str, everything=None) -> list[str]:
    """`all` (everything, default all of known) or a comma-separated list of names in `known`."""
    names = list(everything or known) if value == "all" else value.split(",")
    _check_known(names, known, what)
    return names


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="all", help=f"{', '.join(DATASETS)} or all")
    parser.add_argument("--noise", default="all", help=f"{', '.join(NOISES)} or all")
    parser.add_argument("--methods", default="all",
                        help=f"all (the peers and presets), ablation (the default without each "
                             f"of its changes), zsweep (confidence_z values), or "
                             f"comma-separated: {', '.join(METHODS)}")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and every method")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads (0: the library's default)")
    parser.add_argument("--json", help="also write every case's rows to this JSON file")
    args = parser.parse_args(argv)
    try:
        datasets = _choices(args.dataset, DATASETS, "--dataset")
        noises = _choices(args.noise, NOISES, "--noise")
        methods = (GROUPS[args.methods] if args.methods in GROUPS
                   else _choices(args.methods, METHODS, "--methods", MAIN_METHODS))
    except TvcleanError as exc:
        sys.exit(str(exc))
    blas_threads = args.blas_threads or None
    cases = []
    with threadpool_limits(blas_threads, user_api="blas"):
        for dataset in datasets:
            for noise in noises:
                print(f"\n{describe_case(dataset, noise)}", flush=True)
                rows = run_case(dataset, noise, methods, args.seed, blas_threads)
                print(format_table(rows), flush=True)
                cases.append({"dataset": dataset, "noise": noise, "seed": args.seed, "rows": rows})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(cases, fh, indent=1)
