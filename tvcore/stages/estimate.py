"""The `estimate` stage: Monte-Carlo training-values of a run's features, with checkpoints.

Reads RUN/features, writes RUN/estimates (see tvcore.rundir.estimates). A run
that is interrupted (even by kill -9) resumes from its last checkpoint and
ends with exactly the values of an uninterrupted run; asking for more
episodes later continues where the last run stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..atomicfile import atomic_save_npz, load_npz
from ..config import Config, EstimateConfig
from ..cores import set_numba_threads
from ..engine import kernel_warmup, montecarlo
from ..engine.estimates import Estimates
from ..engine.problem import from_feature_set, monte_carlo_problem
from ..errors import TvcleanError
from ..progress import Progress
from ..rundir import FeatureSet, RunDir, load_features
from ..rundir.estimates import save_estimates
from ..rundir.features import check_inputs_outside
from ..rundir.review import Review, drop_changed, read_reviews

# Changing these does not change the values, so a checkpoint stays valid.
# (use_reviews changes the problem's arrays, which the fingerprint covers.)
_RESUMABLE_OPTIONS = ("episodes", "threads", "checkpoint_every", "memory_budget_mb",
                      "use_reviews")


def _fingerprint(config: EstimateConfig, problem: montecarlo.MonteCarloProblem,
                 subset: montecarlo.Subset) -> str:
    """Identity of everything that determines the values (not the episode count)."""
    digest = hashlib.sha256()
    options = {k: v for k, v in vars(config).items() if k not in _RESUMABLE_OPTIONS}
    digest.update(json.dumps(options, sort_keys=True).encode())
    for array in (subset.train_rows, subset.val_rows, problem.sub_feats, problem.val_feats):
        digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)  # no copy
    return digest.hexdigest()


class _Checkpoint:
    """RUN/estimates/checkpoint/: accumulator state + running-mean history."""

    def __init__(self, run: RunDir, fingerprint: str):
        self.run = run
        self.path = run.estimates / "checkpoint" / "state.npz"
        self.fingerprint = fingerprint
        self.history: list[np.ndarray] = []
        self.history_episodes: list[int] = []

    def load(self, episodes: int) -> montecarlo.ValueAccumulator | None:
        """The saved state of this same work (None: none, another's, or unreadable)."""
        if not self.path.exists():
            return None
        try:
            state = load_npz(self.path)
            if str(state["fingerprint"]) != self.fingerprint or int(state["episodes"]) > episodes:
                return None
            history = list(state["history"])
            history_episodes = [int(e) for e in state["history_episodes"]]
            acc = montecarlo.ValueAccumulator.from_state(state)
        except (TvcleanError, KeyError, ValueError) as exc:
            self.run.log(f"estimate: warning: ignoring the unreadable checkpoint {self.path} "
                         f"({exc}); starting over")
            return None
        self.history, self.history_episodes = history, history_episodes
        return acc

    def save(self, acc: montecarlo.ValueAccumulator) -> None:
        self.history.append(acc.mean.astype(np.float32))
        self.history_episodes.append(acc.episodes)
        atomic_save_npz(self.path, fingerprint=np.array(self.fingerprint),
                        history=np.array(self.history),
                        history_episodes=np.array(self.history_episodes, np.int64),
                        **acc.state())


def reviewed_rows(run: RunDir, features: FeatureSet, reviews: dict[str, Review] | None = None
                  ) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
    """(every reviewed training row, (rows, labels) of those a person says are labeled
    correctly: kept or relabelled) from RUN/review.csv (or `reviews`, as read from it and
    without the reviews of files changed since: drop_changed); (None, None) without reviews."""
    if reviews is None:
        images = dict(zip(features.train.given, features.train.paths))
        reviews = drop_changed(read_reviews(run, features.class_names), images)[0]
    if not reviews:
        return None, None
    train, index = features.train, {name: k for k, name in enumerate(features.class_names)}
    rows = {path: i for i, path in enumerate(train.given)}
    reviewed, correct, labels = [], [], []
    for path, review in reviews.items():
        i = rows.get(path)
        if i is None or not train.ok[i]:
            continue
        reviewed.append(i)
        if review.decision in ("clean", "relabel"):
            correct.append(i)
            labels.append(index.get(review.label, int(train.labels[i])))
    order = np.argsort(correct, kind="stable")
    return (np.array(sorted(reviewed), np.int64),
            (np.array(correct, np.int64)[order], np.array(labels, np.int64)[order]))


def estimate(run: str | Path | RunDir,
             config: Config | Mapping[str, Mapping[str, Any]] | None = None,
             progress: bool | None = None, cluster: Any = None) -> Estimates:
    """Estimate training-values of RUN's Monte-Carlo subset; write RUN/estimates.

    config: a Config, or {section: {option: value}} overrides of the run's
    config.toml (see tvcore.config.resolve_config); progress: draw a progress
    bar on stderr (default: when stderr is a terminal); cluster: a
    tvcore.cluster.Cluster or distributed.Client to run the episodes on
    (None: this process; the values are the same).
    """
    run = RunDir.of(run)
    check_inputs_outside(run)
    run.require_stages("extract")
    with run.writing("estimate"):
        full = run.resolve(config)
        return _estimate(run, full, progress, cluster)


def _estimate(run: RunDir, full: Config, progress: bool | None, cluster: Any) -> Estimates:
    config = full.estimate
    started = time.perf_counter()
    threads = set_numba_threads(config.threads)
    compiling = cluster is None and config.head == "linear" and kernel_warmup.cache_is_cold()
    if cluster is None:  # compile while the features load (the workers compile their own)
        montecarlo.compile_in_background(config)
    features = load_features(run)
    inputs = from_feature_set(features)
    exclude, extra = reviewed_rows(run, features) if config.use_reviews else (None, None)
    problem_config = config
    if cluster is not None:
        from . import estimate_cluster
        problem_config = estimate_cluster.driver_config(config)
    subset, problem, center = monte_carlo_problem(inputs, problem_config, exclude, extra)
    checkpoint = _Checkpoint(run, _fingerprint(config, problem, subset))
    acc = checkpoint.load(config.episodes)
    resumed_from = acc.episodes if acc else 0
    for warning in subset.warnings:
        run.log(f"estimate: warning: {warning}")
    label = "estimate: episodes"
    # the first run on a machine waits seconds for numba before the first episode ends
    with Progress(config.episodes, label + (" (compiling the kernels for this machine, once)"
                                            if compiling else ""), enabled=progress) as bar:
        bar.update(resumed_from)

        def on_block(acc: montecarlo.ValueAccumulator) -> None:
            checkpoint.save(acc)
            bar.label = label
            bar.update(acc.episodes - bar.done)

        if cluster is None:
            acc = montecarlo.estimate_values(problem, acc, on_block=on_block)
        else:
            acc = estimate_cluster.estimate_values(problem, config, cluster, acc,
                                                   on_block=on_block)
    seconds = time.perf_counter() - started
    result = Estimates(
        rows=subset.train_rows, labels=problem.sub_labels.copy(), mean=acc.mean,
        stderr=acc.stderr, count=acc.count, val_rows=subset.val_rows, episodes=acc.episodes,
        history=np.array(checkpoint.history, np.float32).reshape(-1, problem.n_sub),
        history_episodes=np.array(checkpoint.history_episodes, np.int64),
        warnings=subset.warnings, seconds=seconds, center=center,
        review_rows=extra[0] if extra is not None else np.zeros(0, np.int64))
    save_estimates(run, result, features, {"config": vars(config), "threads": threads,
                                           "resumed_from": resumed_from})
    run.save_config(full, ["estimate"])
    reviewed = f" ({result.review_rows.size} of them reviewed training images)" \
        if result.review_rows.size else ""
    run.log(f"estimate: {result.episodes} episodes x {problem.n_sub} examples, "
            f"{problem.n_val} validation{reviewed}, {config.head} head, {seconds:.2f}s"
            + (f" (resumed at episode {resumed_from})" if resumed_from else ""))
    run.record_stage("estimate", seconds, episodes=result.episodes)
    return result
