"""The estimate stage's cluster half: blocks of Monte-Carlo episodes on Dask workers.

The problem's arrays are scattered once and each worker computes its own
Gram matrix; blocks are folded into the accumulator strictly in episode
order, so the values are bitwise those of a single-process run with the
same seed. Data lost with workers is sent again and the run continues from
the last folded episode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cluster import (
    RESCATTERS,
    WORKER_LOCK,
    Cluster,
    LostSharedData,
    ThreadPlan,
    as_cluster,
    run_tasks,
)
from ..config import EstimateConfig
from ..cores import set_numba_threads
from ..engine.montecarlo import (
    MonteCarloProblem,
    ValueAccumulator,
    check_values_moved,
    run_episodes,
)


@dataclass
class ProblemData:
    """What a worker needs to rebuild a MonteCarloProblem: its arrays and configuration.

    The rebuilt problem (with its Gram matrix) is kept on this object, which
    stays in the worker's memory for as long as the driver holds its future.
    """

    sub_feats: np.ndarray  # (N, D) engine dtype
    sub_labels: np.ndarray  # (N,) int64
    val_feats: np.ndarray  # (M, D) sorted by class
    val_labels: np.ndarray  # (M,) int64
    n_classes: int
    config: EstimateConfig
    _problem: MonteCarloProblem | None = dataclasses.field(default=None, repr=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_problem"] = None  # the Gram matrix is rebuilt where the data lands
        return state

    def problem(self, threads: int) -> MonteCarloProblem:
        """The MonteCarloProblem, built (Gram matrix with `threads` BLAS threads) on first use."""
        if self._problem is None:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(threads or None):
                self._problem = MonteCarloProblem(self.sub_feats, self.sub_labels, self.val_feats,
                                                  self.val_labels, self.n_classes, self.config)
        return self._problem


def driver_config(config: EstimateConfig) -> EstimateConfig:
    """The EstimateConfig for the driver's own MonteCarloProblem in a distributed run.

    The driver runs no episodes, so a minimal memory budget keeps it from
    computing the Gram matrix that every worker computes for itself.
    """
    return dataclasses.replace(config, memory_budget_mb=1)


def _episode_block(data: ProblemData, plan: ThreadPlan, first: int, stop: int) -> np.ndarray:
    """On a worker: loss drops (E, epochs, N) of episodes first..stop-1."""
    with WORKER_LOCK:
        threads = set_numba_threads(plan.on_this_worker())
        return run_episodes(data.problem(threads), first, stop)


def estimate_values(problem: MonteCarloProblem, config: EstimateConfig, cluster: Any,
                    acc: ValueAccumulator | None = None, block: int | None = None,
                    on_block: Callable[[ValueAccumulator], None] | None = None
                    ) -> ValueAccumulator:
    """montecarlo.estimate_values on a cluster: the same values, bitwise.

    problem: the driver's MonteCarloProblem (its arrays are sent once);
    config: the EstimateConfig the workers use; acc, block, on_block: as in
    montecarlo.estimate_values. Blocks are folded strictly in episode order.
    """
    cluster = as_cluster(cluster)
    block = block or config.checkpoint_every
    acc = acc or ValueAccumulator(problem.n_sub)
    data = ProblemData(problem.sub_feats, problem.sub_labels, problem.val_feats,
                       problem.val_labels, problem.n_classes, config)
    lost = 0
    while True:
        try:
            acc = _fold_blocks(cluster, data, config, acc, block, on_block)
            check_values_moved(acc, config.lr)
            return acc
        except LostSharedData:
            # The scattered arrays went down with workers: send them again and go on
            # from the last folded episode (blocks are deterministic, so nothing changes).
            lost += 1
            if lost > RESCATTERS:
                raise


def _fold_blocks(cluster: Cluster, data: ProblemData, config: EstimateConfig,
                 acc: ValueAccumulator, block: int,
                 on_block: Callable[[ValueAccumulator], None] | None) -> ValueAccumulator:
    blocks = [(first, min(first + block, config.episodes))
              for first in range(acc.episodes, config.episodes, block)]
    if not blocks:
        return acc
    client = cluster.client
    shared = client.scatter(data, broadcast=True, hash=False)
    try:
        plan = cluster.thread_plan(config.threads)
        names = [f"Monte-Carlo episodes {first}..{stop - 1}" for first, stop in blocks]
        for i, drops in run_tasks(cluster, _episode_block, blocks, shared, plan, names=names):
            if blocks[i][0] != acc.episodes:
                raise AssertionError(f"episode block {blocks[i]} folded out of order")
            acc.add(drops)
            if on_block is not None:
                on_block(acc)
    finally:
        shared.release()
    return acc
