"""The `estimate` stage: Monte-Carlo training-values of a run's features, with checkpoints.

Reads RUN/features, writes RUN/estimates (see tvcore.rundir). A run that is
interrupted (even by kill -9) resumes from its last checkpoint and ends with
exactly the values of an uninterrupted run; asking for more episodes later
continues where the last run stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from ..engine import montecarlo
from ..config import Config, EstimateConfig
from ..engine.featurenorm import FeatureView
from ..rundir.featureset import FeatureSet, load_features
from ..progress import Progress
from ..rundir import (RunDir, atomic_save_npy, atomic_save_npz, atomic_write_csv,
                     atomic_write_json, load_npy, read_json)
from ..engine.decisions import check_converged, feature_center

# Changing these does not change the values, so a checkpoint stays valid.
_RESUMABLE_OPTIONS = ("episodes", "threads", "checkpoint_every", "memory_budget_mb")


@dataclass
class Estimates:
    """Monte-Carlo training-values of the subset examples (aligned arrays)."""

    rows: np.ndarray  # (n,) int64 row numbers into train_index.csv
    labels: np.ndarray  # (n,) int64 given labels
    mean: np.ndarray  # (n,) float64 mean validation-loss drop
    stderr: np.ndarray  # (n,) float64 standard error of the mean
    count: np.ndarray  # (n,) int64 number of drops averaged
    val_rows: np.ndarray  # (m,) int64 row numbers into val_index.csv
    episodes: int
    history: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    history_episodes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    center: np.ndarray | None = None  # (D,) feature-normalisation centre; None: raw features


def set_threads(threads: int) -> int:
    """Use `threads` numba threads (0 = all available); return the number used."""
    available = numba.config.NUMBA_NUM_THREADS
    used = available if threads <= 0 else min(threads, available)
    numba.set_num_threads(used)
    return used


def build_problem(features: FeatureSet, config: EstimateConfig):
    """Select the subset of a run's features and build the Monte-Carlo problem.

    Returns (subset, problem, center): center is the feature-normalisation
    centre (None for raw features).
    """
    train, val = features.train, features.val
    subset = montecarlo.select_subset(train.labels, val.labels, features.n_classes, config,
                                      train.ok_rows, val.ok_rows, features.class_names)
    montecarlo.check_finite(train.features, subset.train_rows, "training", train.paths)
    montecarlo.check_finite(val.features, subset.val_rows, "validation", val.paths)
    center = feature_center(train.features, train.ok_rows, config)
    problem = montecarlo.MonteCarloProblem(
        FeatureView(train.features, center)[subset.train_rows], train.labels[subset.train_rows],
        FeatureView(val.features, center)[subset.val_rows], val.labels[subset.val_rows],
        features.n_classes, config)
    return subset, problem, center


def _fingerprint(config: EstimateConfig, problem, subset) -> str:
    """Identity of everything that determines the values (not the episode count)."""
    digest = hashlib.sha256()
    options = {k: v for k, v in vars(config).items() if k not in _RESUMABLE_OPTIONS}
    digest.update(json.dumps(options, sort_keys=True).encode())
    for array in (subset.train_rows, subset.val_rows, problem.sub_feats, problem.val_feats):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class _Checkpoint:
    """RUN/estimates/checkpoint/: accumulator state + running-mean history."""

    def __init__(self, run: RunDir, fingerprint: str):
        self.path = run.estimates / "checkpoint" / "state.npz"
        self.fingerprint = fingerprint
        self.history: list[np.ndarray] = []
        self.history_episodes: list[int] = []

    def load(self, episodes: int) -> montecarlo.ValueAccumulator | None:
        if not self.path.exists():
            return None
        with np.load(self.path, allow_pickle=False) as state:
            if str(state["fingerprint"]) != self.fingerprint or int(state["episodes"]) > episodes:
                return None
            self.history = list(state["history"])
            self.history_episodes = [int(e) for e in state["history_episodes"]]
            return montecarlo.ValueAccumulator.from_state(state)

    def save(self, acc: montecarlo.ValueAccumulator) -> None:
        self.history.append(acc.mean.astype(np.float32))
        self.history_episodes.append(acc.episodes)
        atomic_save_npz(self.path, fingerprint=np.array(self.fingerprint),
                        history=np.array(self.history),
                        history_episodes=np.array(self.history_episodes, np.int64),
                        **acc.state())


def estimate(run: str | Path | RunDir, config: EstimateConfig | Config | None = None,
             progress: bool | None = None, cluster=None) -> Estimates:
    """Estimate training-values of RUN's Monte-Carlo subset; write RUN/estimates.

    config: the estimate options (default EstimateConfig()); progress: draw a
    progress bar on stderr (default: when stderr is a terminal); cluster: a
    tvcore.distributed.Cluster or distributed.Client to run the episodes on
    (None: this process; the values are the same).
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    full = config if isinstance(config, Config) else Config(estimate=config or EstimateConfig())
    config = full.estimate.validate()
    started = time.perf_counter()
    threads = set_threads(config.threads)
    features = load_features(run)
    if cluster is not None:
        from .. import cluster as distributed
    subset, problem, center = build_problem(features, config if cluster is None
                                    else distributed.driver_config(config))
    checkpoint = _Checkpoint(run, _fingerprint(config, problem, subset))
    acc = checkpoint.load(config.episodes)
    resumed_from = acc.episodes if acc else 0
    for warning in subset.warnings:
        run.log(f"estimate: warning: {warning}")
    with Progress(config.episodes, "estimate: episodes", enabled=progress) as bar:
        bar.update(resumed_from)

        def on_block(acc):
            checkpoint.save(acc)
            bar.update(acc.episodes - bar.done)

        if cluster is None:
            acc = montecarlo.estimate_values(problem, acc, on_block=on_block)
        else:
            acc = distributed.estimate_values(problem, config, cluster, acc, on_block=on_block)
    check_converged(acc.mean, config.lr)
    seconds = time.perf_counter() - started
    result = Estimates(
        rows=subset.train_rows, labels=problem.sub_labels.copy(), mean=acc.mean,
        stderr=acc.stderr, count=acc.count, val_rows=subset.val_rows, episodes=acc.episodes,
        history=np.array(checkpoint.history, np.float32).reshape(-1, problem.n_sub),
        history_episodes=np.array(checkpoint.history_episodes, np.int64),
        warnings=subset.warnings, seconds=seconds, center=center)
    _write(run, result, features, config, threads, resumed_from)
    run.save_config(full, ["estimate"])
    run.log(f"estimate: {result.episodes} episodes x {problem.n_sub} examples, "
            f"{problem.n_val} validation, {config.head} head, {seconds:.2f}s"
            + (f" (resumed at episode {resumed_from})" if resumed_from else ""))
    return result


def _write(run: RunDir, est: Estimates, features: FeatureSet, config: EstimateConfig,
           threads: int, resumed_from: int) -> None:
    out = run.estimates
    out.mkdir(parents=True, exist_ok=True)
    for name in ("rows", "val_rows", "mean", "stderr", "count", "history", "history_episodes"):
        atomic_save_npy(out / f"{_FILES.get(name, name)}.npy", getattr(est, name))
    if est.center is None:
        (out / CENTER_FILE).unlink(missing_ok=True)
    else:
        atomic_save_npy(out / CENTER_FILE, est.center)
    paths, names = features.train.paths, features.class_names
    atomic_write_csv(out / "values.csv", ("path", "label", "class_name", "mc_value", "stderr",
                                          "count"),
                     ((paths[r], int(y), names[y], repr(float(m)), repr(float(s)), int(c))
                      for r, y, m, s, c in zip(est.rows, est.labels, est.mean, est.stderr,
                                                est.count)))
    steps = int(est.count.sum())
    atomic_write_json(out / "meta.json", {
        "config": vars(config), "episodes": est.episodes, "n_subset": int(est.rows.size),
        "n_val": int(est.val_rows.size), "threads": threads, "seconds": est.seconds,
        "steps": steps, "resumed_from": resumed_from, "warnings": est.warnings})


CENTER_FILE = "feature_center.npy"  # present when the features were normalised
# Artifact names (see tvcore.rundir) for the Estimates fields that differ.
_FILES = {"rows": "subset", "val_rows": "val_subset"}


def load_estimates(run: str | Path | RunDir, features: FeatureSet | None = None) -> Estimates:
    """Read RUN/estimates back (features: the run's, if already loaded)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    run.require("estimates/meta.json", "estimate")
    out = run.estimates
    arrays = {name: load_npy(out / f"{_FILES.get(name, name)}.npy")
              for name in ("rows", "val_rows", "mean", "stderr", "count", "history",
                           "history_episodes")}
    meta = read_json(out / "meta.json")
    features_labels = (features or load_features(run)).train.labels
    center = load_npy(out / CENTER_FILE) if (out / CENTER_FILE).exists() else None
    return Estimates(labels=features_labels[arrays["rows"]], episodes=int(meta["episodes"]),
                     warnings=list(meta.get("warnings", [])), seconds=float(meta["seconds"]),
                     center=center, **arrays)
