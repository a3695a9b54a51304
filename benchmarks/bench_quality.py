"""Cleaning quality on realistic weak labels: tvclean vs peers that use the same validation set.

    python -m benchmarks quality [--cases all|quick|KEY,...] [--seeds 0,1] [--quick]
                                 [--methods main|ablation|all|NAME,...] [--per-class]
                                 [--json OUT.json] [--no-cache]

Cases are the suite of benchmarks.cases (noise families on Fashion-MNIST and
scikit-learn digits, each a seeded construction): symmetric and pair noise,
labels from a cheap pixel classifier, images of no class with in-set labels,
long-tailed class sizes, few validation images. For every case and seed,
every method decides which training images to set aside; the table shows
detection precision / recall / F1 against the truly wrong labels (images of
no class included), the fraction set aside, ROC-AUC of the method's ranking,
the test accuracy of the benchmark's logistic regression trained on the kept
images ("acc") and on the kept plus the validation images ("acc+val"), and
the worst class: max over given labels of discard rate / (1.5 x true noise
rate + 0.10) (the goal: <= 1). Rows "no cleaning", "oracle" (exactly the
right labels kept) and "validation only" (the classifier fit on the
validation images alone) frame the numbers. tvclean's relabelled images train
with their new label.

Methods (`--methods`): tvclean (the default: posterior decision), threshold
(the previous default decision, value + 1 x stderr < 0, on the same
Monte-Carlo estimates), original (`--preset original`), and the peers:
trusted (logistic regression on the validation set, flag predicted != given),
knn-val (5-NN on the validation set), simifeat (10-NN vote of training and
validation labels), knn-shapley (exact, k=10, against the validation set),
cleanlab (5-fold cross-validated logistic regression on the training set).
`ablation`: tvclean without each of its parts. Peers' rows are cached under
the benchmark cache (results/), so a second run only recomputes tvclean.
BLAS runs single-threaded (--blas-threads): on a busy 2-core machine,
multi-threaded OpenBLAS made a logistic-regression fit 100x slower.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from tvcore.config import Config
from tvcore.engine.decisions import Scored, Validation, posterior_scored, score_training_set
from tvcore.engine.featurenorm import FeatureView
from tvcore.engine.posterior import CLEAN, OUTLIER, RELABEL
from tvcore.errors import TvcleanError
from tvcore.labelissues import ValueResult, training_values
from tvcore.stages.evaluate import detection_metrics

from .cases import EXTRA, QUICK, SUITE, Case, CaseSpec
from .datasets import cache_dir, downstream_accuracy
from .peers import (
    cleanlab_issues,
    knn_shapley,
    knn_validation,
    simifeat_vote,
    trusted_classifier,
)

RESULTS_VERSION = 1  # bump when a cached row's meaning changes
SPECS = {spec.key: spec for spec in SUITE + EXTRA}


@dataclass
class Outcome:
    """What a method decided about the training images of a case."""

    flagged: np.ndarray  # (n,) bool: not kept with the given label
    scores: np.ndarray  # (n,) float: lower = more likely wrong
    labels: np.ndarray  # (n,) int64 labels the kept images train with (relabelled: the new one)
    outlier: np.ndarray | None = None  # (n,) bool: decided `outlier`
    info: dict | None = None


# (case, seed) -> Outcome
Method = Callable[[Case, int], Outcome]


# --- tvclean ---------------------------------------------------------------------------------

_RUNS: dict[tuple, tuple[ValueResult, Config]] = {}


def tvclean_run(case: Case, seed: int, preset: str = "default") -> tuple[ValueResult, Config]:
    """`training_values` of the case with a preset and the case seed (kept for the variants)."""
    key = (id(case), case.name, seed, preset)  # id: the same case on other features is another
    if key not in _RUNS:
        _RUNS.clear()  # one case at a time: the runs hold value nets and arrays
        config = Config.preset(preset)
        config.estimate.seed = config.valuenet.seed = seed
        _RUNS[key] = (training_values(case.train_X, case.given, case.val_X, case.val_y, config,
                                      classes=list(range(case.n_classes))), config)
    return _RUNS[key]


def _outcome(case: Case, scored: Scored) -> Outcome:
    decisions = scored.decisions
    labels = case.given.copy()
    relabel = decisions == RELABEL
    labels[relabel] = scored.suggested[relabel]
    return Outcome(flagged=decisions != CLEAN, scores=np.nan_to_num(scored.scores, nan=-1e9),
                   labels=labels, outlier=decisions == OUTLIER, info=scored.info)


def tvclean_default(case: Case, seed: int) -> Outcome:
    return _outcome(case, tvclean_run(case, seed)[0].scored)


def tvclean_preset(preset: str) -> Method:
    def run(case: Case, seed: int) -> Outcome:
        return _outcome(case, tvclean_run(case, seed, preset)[0].scored)
    return run


def threshold_rule(case: Case, seed: int) -> Outcome:
    """The previous default decision (value + 1 x stderr < 0) on the default's estimates."""
    result, config = tvclean_run(case, seed)
    filter_config = Config().filter
    filter_config.method = "threshold"
    rows = np.arange(case.given.size)
    scored = score_training_set(FeatureView(case.train_X, result.mc.center), case.given, rows,
                                result.mc, result.nets, case.n_classes, filter_config)
    return Outcome(flagged=scored.dirty, scores=scored.scores, labels=case.given.copy())


def posterior_variant(**options) -> Method:
    """The default's Monte-Carlo estimates and value nets, the posterior decision with
    DecisionOptions changed (`relabel`, `relabel_confidence`, `outliers`: filter options)."""
    def run(case: Case, seed: int) -> Outcome:
        result, config = tvclean_run(case, seed)
        filter_config = Config.from_dict(config.to_dict()).filter
        decision_options = dict(options)
        for name in ("relabel", "relabel_confidence", "outliers"):
            if name in decision_options:
                setattr(filter_config, name, decision_options.pop(name))
        rows = np.arange(case.given.size)
        scored = posterior_scored(FeatureView(case.train_X, result.mc.center), case.given, rows,
                                  result.mc, result.nets, case.n_classes, filter_config,
                                  Validation(case.val_X, case.val_y), result.values, seed,
                                  decision_options)
        return _outcome(case, scored)
    return run


def peer(function) -> Method:
    def run(case: Case, seed: int) -> Outcome:
        dirty, values = function(case.train_X, case.given, case.val_X, case.val_y, seed)
        return Outcome(flagged=np.asarray(dirty, bool), scores=np.asarray(values, float),
                       labels=case.given.copy())
    return run


METHODS: dict[str, Method] = {
    "tvclean": tvclean_default,
    "threshold": threshold_rule,
    "original": tvclean_preset("original"),
    "trusted": peer(trusted_classifier),
    "knn-val": peer(knn_validation),
    "simifeat": peer(simifeat_vote),
    "knn-shapley": peer(knn_shapley),
    "cleanlab": peer(cleanlab_issues),
}
PEERS = ["trusted", "knn-val", "simifeat", "knn-shapley", "cleanlab"]
CACHED = set(PEERS)  # their rows do not depend on tvclean's code
ABLATIONS: dict[str, Method] = {
    "no-values": posterior_variant(value_view=False),
    "no-neighbours": posterior_variant(neighbour_view=False),
    "trusted-view-only": posterior_variant(value_view=False, neighbour_view=False),
    "no-appearance": posterior_variant(appearance=False),
    "no-outliers": posterior_variant(outliers=False),
    "relabel-0.9": posterior_variant(relabel=True, relabel_confidence=0.9),
    "relabel-0.7": posterior_variant(relabel=True, relabel_confidence=0.7),
}
METHODS.update(ABLATIONS)
GROUPS = {"main": ["tvclean", "threshold", *PEERS],
          "ablation": ["tvclean", *ABLATIONS],
          "all": ["tvclean", "threshold", "original", *PEERS, *ABLATIONS]}
LABELS = {"tvclean": "tvclean default", "threshold": "value+1se<0 (before)",
          "original": "original", "knn-shapley": "KNN-Shapley k=10",
          "cleanlab": "cleanlab (5-fold CV LR)", "trusted": "trusted LR (val only)",
          "knn-val": "5-NN on val", "simifeat": "SimiFeat-style vote"}


# --- rows ------------------------------------------------------------------------------------

def class_rates(case: Case, flagged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K,) discard rate and (K,) true noise rate of every given label."""
    discard, noise = np.zeros(case.n_classes), np.zeros(case.n_classes)
    for k in range(case.n_classes):
        rows = case.given == k
        if rows.any():
            discard[k], noise[k] = flagged[rows].mean(), case.noisy[rows].mean()
    return discard, noise


def worst_class(case: Case, flagged: np.ndarray) -> tuple[float, str]:
    """max over given labels of discard / (1.5 x noise + 0.10), and that class."""
    discard, noise = class_rates(case, flagged)
    ratio = discard / (1.5 * noise + 0.10)
    k = int(ratio.argmax())
    return float(ratio[k]), (f"{case.class_names[k]}: {discard[k]:.0%} set aside, "
                             f"{noise[k]:.0%} wrong")


def make_row(case: Case, name: str, outcome: Outcome | None, seed: int,
             seconds: float | None) -> dict:
    """One table row (outcome None: the "validation only" row)."""
    if outcome is None:
        accuracy = downstream_accuracy(case.val_X, case.val_y, case.test_X, case.test_y, seed)
        return {"method": name, "precision": None, "recall": None, "f1": None,
                "removed": None, "roc_auc": None, "accuracy": accuracy, "accuracy_val": None,
                "worst_class": None, "worst": "", "outliers": None, "seconds": None}
    metrics = detection_metrics(case.noisy, outcome.flagged, outcome.scores)
    keep = ~outcome.flagged | (outcome.labels != case.given)  # relabelled images stay
    X, y = case.train_X[keep], outcome.labels[keep]
    accuracy = downstream_accuracy(X, y, case.test_X, case.test_y, seed)
    accuracy_val = downstream_accuracy(np.concatenate([X, case.val_X]),
                                       np.concatenate([y, case.val_y]), case.test_X,
                                       case.test_y, seed)
    ratio, worst = worst_class(case, outcome.flagged)
    discard, noise = class_rates(case, outcome.flagged)
    return {"method": name, "precision": metrics["precision"], "recall": metrics["recall"],
            "f1": metrics["f1"], "removed": metrics["fraction_removed"],
            "roc_auc": metrics["roc_auc"], "accuracy": accuracy, "accuracy_val": accuracy_val,
            "worst_class": ratio, "worst": worst,
            "outliers": None if outcome.outlier is None else int(outcome.outlier.sum()),
            "discard_rate": discard.round(4).tolist(), "noise_rate": noise.round(4).tolist(),
            "info": outcome.info, "seconds": seconds}


def _cache_path(spec: CaseSpec, seed: int, method: str):
    params = hashlib.sha256(repr((spec.dataset, spec.family, spec.params)).encode())
    return (cache_dir() / "results" /
            f"{spec.key}-{params.hexdigest()[:10]}-s{seed}-{method}-v{RESULTS_VERSION}.json")


def method_row(spec: CaseSpec, case: Case, method: str, seed: int, use_cache: bool) -> dict:
    path = _cache_path(spec, seed, method)
    if use_cache and method in CACHED and path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    start = time.perf_counter()
    outcome = METHODS[method](case, seed)
    row = make_row(case, LABELS.get(method, method), outcome, seed,
                   time.perf_counter() - start)
    row["key"] = method
    if method in CACHED:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row), encoding="utf-8")
    return row


def run_case(key: str, seed: int = 0, methods: list[str] | None = None,
             use_cache: bool = True, blas_threads: int | None = 1) -> tuple[Case, list[dict]]:
    """(the case, its rows): no cleaning, oracle, validation only, then every method."""
    methods = list(GROUPS["main"]) if methods is None else methods
    _check_known([key], SPECS, "--cases")
    _check_known(methods, METHODS, "--methods")
    spec = SPECS[key]
    with threadpool_limits(blas_threads, user_api="blas"):
        case = spec.build(seed)
        nothing = np.zeros(case.given.size, bool)
        rows = [make_row(case, "no cleaning", Outcome(nothing, np.zeros(nothing.size),
                                                      case.given.copy()), seed, None),
                make_row(case, "oracle", Outcome(case.noisy, (~case.noisy).astype(float),
                                                 case.given.copy()), seed, None),
                make_row(case, "validation only", None, seed, None)]
        for row in rows[:2]:
            row["key"] = row["method"]
        rows[0].update(precision=None, recall=None, f1=None, roc_auc=None)
        rows[2]["key"] = "validation only"
        for method in methods:
            rows.append(method_row(spec, case, method, seed, use_cache))
    return case, rows


# --- printing --------------------------------------------------------------------------------

COLUMNS = [("method", "{}", 24), ("precision", "{:.3f}", 9), ("recall", "{:.3f}", 6),
           ("f1", "{:.3f}", 6), ("removed", "{:.3f}", 7), ("roc_auc", "{:.3f}", 7),
           ("accuracy", "{:.3f}", 8), ("accuracy_val", "{:.3f}", 7),
           ("worst_class", "{:.2f}", 5), ("seconds", "{:.1f}", 7)]
HEADERS = {"accuracy": "acc", "accuracy_val": "acc+val", "worst_class": "worst",
           "roc_auc": "ROC-AUC"}


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table ("-" where a value does not apply)."""
    def cell(i, text, width):
        return f"{text:<{width}}" if i == 0 else f"{text:>{width}}"

    lines = ["  ".join(cell(i, HEADERS.get(name, name), width)
                       for i, (name, _, width) in enumerate(COLUMNS))]
    for row in rows:
        lines.append("  ".join(cell(i, "-" if row.get(name) is None else fmt.format(row[name]),
                                    width) for i, (name, fmt, width) in enumerate(COLUMNS)))
    return "\n".join(lines)


def per_class_lines(case: Case, row: dict) -> str:
    parts = [f"{name} {noise:.0%}->{discard:.0%}" for name, noise, discard in
             zip(case.class_names, row["noise_rate"], row["discard_rate"])]
    return f"  per class ({row['method']}; true noise -> set aside): " + ", ".join(parts)


def summarise(results: dict[str, list[list[dict]]]) -> str:
    """One line per case, mean over seeds: tvclean vs before vs the best peers, and the goals."""
    head = (f"{'case':14s} {'tvclean F1/AUC/acc/worst':>26s} {'before F1/acc':>14s} "
            f"{'best peer F1':>20s} {'best peer acc':>20s}  goals (F1+0.03, acc, worst)")
    lines = [head]
    met = {"f1": 0, "acc": 0, "worst": 0}
    applicable = {"f1": 0}
    for key, seeds in results.items():
        def mean(method, field, seeds=seeds):
            values = [r[field] for rows in seeds for r in rows
                      if r["key"] == method and r[field] is not None]
            return float(np.mean(values)) if values else float("nan")

        peers = [m for m in PEERS if any(r["key"] == m for r in seeds[0])]
        f1 = {m: mean(m, "f1") for m in peers}
        acc = {m: mean(m, "accuracy") for m in peers}
        best_f1 = max(f1, key=f1.get) if f1 else None
        best_acc = max(acc, key=acc.get) if acc else None
        tv = [mean("tvclean", f) for f in ("f1", "roc_auc", "accuracy", "worst_class")]
        # with no wrong label in the case, F1 is 0 for every method that sets anything aside
        has_noise = mean("oracle", "removed") > 0
        goals = (((tv[0] >= f1[best_f1] + 0.03) if best_f1 else False) if has_noise else None,
                 (tv[2] >= acc[best_acc]) if best_acc else False, tv[3] <= 1.0)
        for name, ok in zip(met, goals):
            met[name] += bool(ok)
        applicable["f1"] += goals[0] is not None
        lines.append(
            f"{key:14s} {tv[0]:.3f}/{tv[1]:.3f}/{tv[2]:.3f}/{tv[3]:.2f}"
            f"   {mean('threshold', 'f1'):.3f}/{mean('threshold', 'accuracy'):.3f}"
            + (f" {best_f1:>11s} {f1[best_f1]:.3f} {best_acc:>11s} {acc[best_acc]:.3f}"
               if best_f1 else "")
            + "  " + " ".join("n/a" if ok is None else "yes" if ok else "NO" for ok in goals))
    lines.append(f"goals met in {len(results)} cases: F1 >= best peer + 0.03: {met['f1']} "
                 f"(of {applicable['f1']} with wrong labels), "
                 f"accuracy >= every peer: {met['acc']}, worst class <= 1: {met['worst']}")
    return "\n".join(lines)


def _mean(seeds: list[list[dict]], method: str, field: str) -> float:
    values = [r[field] for rows in seeds for r in rows
              if r["key"] == method and r.get(field) is not None]
    return float(np.mean(values)) if values else float("nan")


def markdown_summary(results: dict[str, list[list[dict]]], descriptions: dict[str, str]) -> str:
    """The README table: per case (mean over seeds) tvclean and the previous default,
    F1 / ROC-AUC / accuracy / accuracy with validation / worst class, then the peers' F1 /
    accuracy, the validation-only accuracy."""
    peers = [m for m in PEERS if any(r["key"] == m for rows in results[next(iter(results))]
                                     for r in rows)]
    head = (["case", "no cleaning / oracle / val only acc", "**tvclean** F1 / AUC / acc / "
             "acc+val / worst", "before (value+1se<0)"]
            + [f"{LABELS.get(m, m)} F1 / acc" for m in peers])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for key, seeds in results.items():
        def m(method, field, fmt="{:.3f}", seeds=seeds):
            value = _mean(seeds, method, field)
            return "-" if np.isnan(value) else fmt.format(value)
        cells = [descriptions.get(key, key),
                 f"{m('no cleaning', 'accuracy')} / {m('oracle', 'accuracy')} / "
                 f"{m('validation only', 'accuracy')}",
                 f"**{m('tvclean', 'f1')}** / {m('tvclean', 'roc_auc')} / "
                 f"**{m('tvclean', 'accuracy')}** / {m('tvclean', 'accuracy_val')} / "
                 f"{m('tvclean', 'worst_class', '{:.2f}')}",
                 f"{m('threshold', 'f1')} / {m('threshold', 'roc_auc')} / "
                 f"{m('threshold', 'accuracy')} / {m('threshold', 'accuracy_val')} / "
                 f"{m('threshold', 'worst_class', '{:.2f}')}"]
        cells += [f"{m(p, 'f1')} / {m(p, 'accuracy')}" for p in peers]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _check_known(names, known, what: str) -> None:
    unknown = [name for name in names if name not in known]
    if unknown:
        raise TvcleanError(f"{what}: unknown {', '.join(unknown)}; known: {', '.join(known)}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="all",
                        help=f"all (the 18 of the suite), quick ({', '.join(QUICK)}), "
                             f"extra (low, absent and uneven noise) "
                             f"or comma-separated: "
                             f"{', '.join(SPECS)}")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds of every case")
    parser.add_argument("--quick", action="store_true",
                        help="sanity run: the quick cases, seed 0")
    parser.add_argument("--methods", default="main",
                        help=f"{', '.join(GROUPS)} or comma-separated: {', '.join(METHODS)}")
    parser.add_argument("--per-class", action="store_true",
                        help="print tvclean's per-class discard rate against the true noise rate")
    parser.add_argument("--blas-threads", type=int, default=1,
                        help="BLAS threads (0: the library's default)")
    parser.add_argument("--no-cache", action="store_true", help="recompute the peers' rows")
    parser.add_argument("--json", help="also write every case's rows to this JSON file")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the summary as a Markdown table (the README's)")
    parser.add_argument("--from-json", help="print the summaries of an earlier --json file "
                                            "instead of running")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as fh:
            dump = json.load(fh)
        results, descriptions = {}, {}
        for entry in dump:
            results.setdefault(entry["case"], []).append(entry["rows"])
            descriptions[entry["case"]] = entry["description"].split(":")[0]
        print(summarise(results))
        print("\n" + markdown_summary(results, descriptions))
        return
    try:
        cases = (QUICK if args.quick or args.cases == "quick" else
                 [spec.key for spec in SUITE] if args.cases == "all" else
                 [spec.key for spec in EXTRA] if args.cases == "extra" else args.cases.split(","))
        _check_known(cases, SPECS, "--cases")
        seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
        methods = (GROUPS[args.methods] if args.methods in GROUPS
                   else args.methods.split(","))
        _check_known(methods, METHODS, "--methods")
    except (TvcleanError, ValueError) as exc:
        sys.exit(str(exc))
    results: dict[str, list[list[dict]]] = {}
    dump = []
    for key in cases:
        for seed in seeds:
            case, rows = run_case(key, seed, methods, not args.no_cache,
                                  args.blas_threads or None)
            print(f"\n{key} seed {seed}: {case.describe()}", flush=True)
            print(format_table(rows), flush=True)
            if args.per_class:
                for row in rows:
                    if row["key"] in ("tvclean", "threshold"):
                        print(per_class_lines(case, row))
            results.setdefault(key, []).append(rows)
            dump.append({"case": key, "seed": seed, "description": case.describe(),
                         "classes": case.class_names, "rows": rows})
    print("\n" + summarise(results), flush=True)
    if args.markdown:
        print("\n" + markdown_summary(results, {d["case"]: d["description"].split(":")[0]
                                                 for d in dump}))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(dump, fh, indent=1)
