"""Monte-Carlo estimation of training-values over arrays (no files).

The flow: `select_subset` picks S training and V validation examples per class;
`MonteCarloProblem` holds them with the augmented Gram matrix; `run_episodes`
runs a block of episodes through the numba kernels; `ValueAccumulator` folds
per-episode loss drops into mean, standard error and count, always in episode
order, so the values do not depend on threads, block sizes, resumes or workers.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from ..config import EstimateConfig
from ..errors import TvcleanError
from . import kernel_warmup, mc_kernels

# Independent random streams, derived from the user's seed.
_SUBSET_STREAM = 1
_EPISODE_STREAM = 2
FEW_VAL = 5  # validation images of a class below which the user is warned
_ROWS = 4096  # rows per pass when a whole-matrix temporary would cost memory


@dataclass
class Subset:
    """Row numbers chosen for the Monte-Carlo phase, sorted by class then row."""

    train_rows: np.ndarray  # (N,) int64
    val_rows: np.ndarray  # (M,) int64
    warnings: list[str] = field(default_factory=list)


def _pick_per_class(labels: np.ndarray, eligible: np.ndarray, n_classes: int, per_class: int,
                    rng: np.random.Generator, class_names: Any, split: str
                    ) -> tuple[np.ndarray, list[str]]:
    rows, short = [], []
    for k in range(n_classes):
        candidates = eligible[labels[eligible] == k]
        if candidates.size == 0:
            raise TvcleanError(f"class '{class_names[k]}' has no usable {split} image")
        take = min(per_class, candidates.size)
        if take < per_class:
            short.append(f"{class_names[k]} ({candidates.size})")
        rows.append(np.sort(rng.choice(candidates, size=take, replace=False)))
    return np.concatenate(rows).astype(np.int64), short


def select_subset(train_labels: Any, val_labels: Any, n_classes: int, config: EstimateConfig,
                  train_eligible: Any = None, val_eligible: Any = None,
                  class_names: Any = None) -> Subset:
    """Draw up to S training and V validation examples of every class (seeded).

    train_labels (n_train,), val_labels (n_val,) int class indices;
    *_eligible: row numbers that may be drawn (default: all).
    """
    class_names = class_names or [str(k) for k in range(n_classes)]
    train_labels, val_labels = np.asarray(train_labels), np.asarray(val_labels)
    if train_eligible is None:
        train_eligible = np.arange(train_labels.size)
    if val_eligible is None:
        val_eligible = np.arange(val_labels.size)
    rng = np.random.default_rng([config.seed, _SUBSET_STREAM])
    train_rows, short = _pick_per_class(train_labels, np.asarray(train_eligible), n_classes,
                                        config.per_class, rng, class_names, "training")
    val_rows, _ = _pick_per_class(val_labels, np.asarray(val_eligible), n_classes,
                                  config.val_per_class, rng, class_names, "validation")
    warnings = []
    if short:
        warnings.append(f"{len(short)} class(es) have fewer than --per-class {config.per_class} "
                        f"training images and use all they have: {', '.join(short)}")
    val_counts = np.bincount(val_labels[np.asarray(val_eligible)], minlength=n_classes)
    few = [f"{class_names[k]} ({val_counts[k]})" for k in np.flatnonzero(val_counts < FEW_VAL)]
    if few:
        warnings.append(f"{len(few)} class(es) have fewer than {FEW_VAL} validation images, so "
                        f"the values and decisions of their images rest on very few correct "
                        f"examples: {', '.join(few[:10])}{' ...' if len(few) > 10 else ''}")
    return Subset(train_rows=train_rows, val_rows=val_rows, warnings=warnings)


class MonteCarloProblem:
    """The arrays one Monte-Carlo run works on, in the engine's dtype and layout.

    sub_feats (N, D), sub_labels (N,), val_feats (M, D) sorted by class,
    val_bounds (K+1,), and the augmented Gram matrix X_sub X_valᵀ + 1 in
    validation blocks that each fit the memory budget.
    """

    def __init__(self, sub_feats: Any, sub_labels: Any, val_feats: Any, val_labels: Any,
                 n_classes: int, config: EstimateConfig):
        self.config = config
        self.dtype = np.dtype(config.dtype)
        self.n_classes = int(n_classes)
        order = np.argsort(val_labels, kind="stable")
        self.sub_feats = np.ascontiguousarray(sub_feats, dtype=self.dtype)
        self.sub_labels = np.ascontiguousarray(sub_labels, dtype=np.int64)
        self.val_feats = np.ascontiguousarray(np.asarray(val_feats)[order], dtype=self.dtype)
        self.val_labels = np.ascontiguousarray(np.asarray(val_labels)[order], dtype=np.int64)
        self._check_labels()
        self.blocks = self._val_blocks()
        # Keyed by validation range, so a changed split never reuses another block's matrix.
        self._grams: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        if len(self.blocks) == 1:
            self._grams[self.blocks[0]] = self._gram(0)

    def _check_labels(self) -> None:
        for name, labels in (("training", self.sub_labels), ("validation", self.val_labels)):
            if labels.size == 0:
                raise TvcleanError(f"the Monte-Carlo subset has no {name} example")
            if labels.min() < 0 or labels.max() >= self.n_classes:
                raise TvcleanError(f"{name} labels must lie in 0..{self.n_classes - 1}")
        missing = np.setdiff1d(np.arange(self.n_classes), self.val_labels)
        if missing.size:
            raise TvcleanError(f"class {int(missing[0])} has no validation example")
        if self.sub_feats.shape[1] != self.val_feats.shape[1]:
            raise TvcleanError(f"training features have {self.sub_feats.shape[1]} dimensions, "
                               f"validation features {self.val_feats.shape[1]}")

    @property
    def n_sub(self) -> int:
        return self.sub_feats.shape[0]

    @property
    def n_val(self) -> int:
        return self.val_feats.shape[0]

    @property
    def dim(self) -> int:
        return self.sub_feats.shape[1]

    def _val_blocks(self) -> list[tuple[int, int]]:
        """Validation ranges whose Gram block fits the memory budget."""
        budget = self.config.memory_budget_mb * 2**20
        per_val_example = self.n_sub * self.dtype.itemsize
        width = max(1, min(self.n_val, budget // per_val_example))
        return [(lo, min(lo + width, self.n_val)) for lo in range(0, self.n_val, width)]

    def _gram(self, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = self.blocks[block]
        gram = _fixed_product(self.sub_feats, self.val_feats[lo:hi].T)
        gram += 1  # the bias is a constant feature
        absmax = np.empty(self.n_sub, gram.dtype)
        bounds = self.block_bounds(block)
        class_sums = np.zeros((self.n_sub, self.n_classes))
        for start in range(0, self.n_sub, _ROWS):  # in rows: no Gram-sized temporary
            rows = gram[start:start + _ROWS]
            absmax[start:start + _ROWS] = np.maximum(rows.max(axis=1), -rows.min(axis=1))
            for k in range(self.n_classes):
                class_sums[start:start + _ROWS, k] = rows[:, bounds[k]:bounds[k + 1]].sum(
                    axis=1, dtype=np.float64)
        return gram, absmax, class_sums

    def gram(self, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Augmented Gram block (N, hi - lo), its row-wise max |value| (N,) and its row sums
        over each class's validation examples (N, K) float64.

        Kept when the whole matrix fits the budget, else computed on demand.
        """
        lo, hi = self.blocks[block]
        cached = self._grams.get((lo, hi))
        return cached if cached is not None else self._gram(block)

    @property
    def episode_per_class(self) -> int:
        """Examples per class in one episode; -1 = the whole subset (unbalanced)."""
        per_class = self.config.episode_per_class
        if per_class == 0:  # balanced: as many as the smallest class has
            return int(np.bincount(self.sub_labels, minlength=self.n_classes).min())
        return per_class

    @property
    def episode_length(self) -> int:
        """SGD steps per epoch of one episode."""
        if self.episode_per_class < 0:
            return self.n_sub
        sizes = np.bincount(self.sub_labels, minlength=self.n_classes)
        return int(np.minimum(sizes, self.episode_per_class).sum())

    def episode_examples(self, rng: np.random.Generator) -> np.ndarray:
        """The subset examples one episode trains on (all, or a random per-class part)."""
        per_class = self.episode_per_class
        if per_class < 0:
            return np.arange(self.n_sub)
        parts = []
        for k in range(self.n_classes):
            members = np.flatnonzero(self.sub_labels == k)
            take = min(per_class, members.size)
            parts.append(members if take == members.size
                         else rng.choice(members, size=take, replace=False))
        return np.concatenate(parts)

    def block_bounds(self, block: int) -> np.ndarray:
        lo, hi = self.blocks[block]
        edges = np.searchsorted(self.val_labels, np.arange(self.n_classes + 1))
        return (np.clip(edges, lo, hi) - lo).astype(np.int64)


@dataclass
class EpisodeStreams:
    """The random draws of a block of episodes: initial weights and visiting orders."""

    weights: list[np.ndarray]  # per layer, (E, out, in) float64
    orders: np.ndarray  # (E, epochs, N) int64


def episode_streams(problem: MonteCarloProblem, first: int, stop: int) -> EpisodeStreams:
    """Draw episodes first..stop-1; episode e's draws depend only on (seed, e)."""
    config = problem.config
    shapes = [(problem.n_classes, problem.dim)]
    if config.head == "mlp":
        shapes = [(config.hidden, problem.dim), (problem.n_classes, config.hidden)]
    layers = [np.empty((stop - first,) + shape) for shape in shapes]
    orders = np.empty((stop - first, config.epochs, problem.episode_length), np.int64)
    for slot, episode in enumerate(range(first, stop)):
        rng = np.random.default_rng([config.seed, _EPISODE_STREAM, episode])
        for layer, shape in zip(layers, shapes):
            limit = np.sqrt(3.0 / shape[1])  # LeCun uniform
            layer[slot] = rng.uniform(-limit, limit, size=shape)
        visited = problem.episode_examples(rng)
        for epoch in range(config.epochs):
            orders[slot, epoch] = visited[rng.permutation(visited.size)]
    return EpisodeStreams(weights=layers, orders=orders)


def run_episodes(problem: MonteCarloProblem, first: int, stop: int) -> np.ndarray:
    """Mean validation-loss drops (E, epochs, N) float64 of episodes first..stop-1.

    NaN marks the examples an episode did not visit (see EstimateConfig.episode_per_class).
    Raises a TvcleanError naming the episode and the learning rate when a head diverges.
    """
    streams = episode_streams(problem, first, stop)
    dtype = problem.dtype
    weights = [np.ascontiguousarray(w, dtype=dtype) for w in streams.weights]
    drops = np.zeros((stop - first, problem.config.epochs, problem.n_sub))
    part = np.empty_like(drops)
    initial_loss = np.zeros(stop - first)
    lr = float(problem.config.lr)
    for block, (lo, hi) in enumerate(problem.blocks):
        part.fill(np.nan)
        # Initial validation activations in float64 from the engine-precision weights.
        val_t = problem.val_feats[lo:hi].T.astype(np.float64)
        (gram, absmax, class_sums), bounds = problem.gram(block), problem.block_bounds(block)
        if problem.config.head == "linear":
            logits = _times_val(weights[0], val_t)
            shape = (problem.n_classes, hi - lo, problem.dim, dtype)
            _each_episode(mc_kernels.linear_episode_deltas,
                          (problem.sub_feats, problem.sub_labels, gram, absmax, class_sums),
                          (weights[0], _as(logits, dtype), streams.orders), lr, part,
                          partial(mc_kernels.linear_workspace, *shape))
        else:
            pre = _as(_times_val(weights[0], val_t), dtype)
            logits = weights[1].astype(np.float64) @ np.maximum(pre.astype(np.float64), 0)
            _each_episode(mc_kernels.mlp_episode_deltas,
                          (problem.sub_feats, problem.sub_labels, gram, bounds),
                          (weights[0], weights[1], pre, _as(logits, dtype), streams.orders),
                          lr, part)
        initial_loss += _cross_entropy_sum(logits, problem.val_labels[lo:hi])
        drops += part
    drops /= problem.n_val
    check_not_diverged(drops, streams.orders, initial_loss / problem.n_val, first, lr,
                       problem.n_classes)
    return drops


def _each_episode(kernel: Any, shared: Any, per_episode: Any, lr: float, out: Any,
                  workspace: Any = None) -> None:
    """kernel(*shared, *(a[e] for a in per_episode), lr, out[e][, workspace()]) for every
    episode e.

    The kernels release the GIL, so the episodes run in parallel on
    numba.get_num_threads() threads (see cores.set_numba_threads); each writes only
    its own out[e] (and workspace), so the results do not depend on the number of threads.
    """
    def run(e: int) -> None:
        extra = () if workspace is None else (workspace(),)
        kernel(*shared, *(array[e] for array in per_episode), lr, out[e], *extra)

    _on_threads(run, range(out.shape[0]))


def _on_threads(function: Any, items: range) -> None:
    """function(i) for every i in items, on numba.get_num_threads() threads at most (one:
    in this thread); an exception in any call is raised here."""
    threads = min(numba.get_num_threads(), len(items))
    if threads <= 1:
        for item in items:
            function(item)
        return
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(function, items):
            pass


def _fixed_product(a: np.ndarray, b_t: np.ndarray) -> np.ndarray:
    """a @ b_t, the same bits whatever the number of threads.

    A threaded BLAS may split a product differently by its thread count and
    round differently (OpenBLAS's Haswell kernels: up to 1e-4 on the Gram
    matrix, so a run resumed on another thread count would differ). Here rows
    go in fixed chunks, each on one BLAS thread, the chunks spread over threads.
    """
    out = np.empty((a.shape[0], b_t.shape[1]), np.result_type(a, b_t))
    starts = range(0, a.shape[0], _PRODUCT_ROWS)

    def chunk(start: int) -> None:
        stop = start + _PRODUCT_ROWS
        np.matmul(a[start:stop], b_t, out=out[start:stop])

    with threadpool_limits(1, user_api="blas"):
        _on_threads(chunk, starts)
    return out


_PRODUCT_ROWS = 512  # rows per chunk of _fixed_product: part of the result's definition


def _times_val(layer: np.ndarray, val_t: np.ndarray) -> np.ndarray:
    """(E, out, D) @ (D, M) in float64 as one matrix product (a stacked product skips BLAS).

    On one BLAS thread: the product is small, and on a busy machine a second
    BLAS thread mostly waits to be scheduled (measured 5-10x slower).
    """
    episodes, out, dim = layer.shape
    flat = layer.reshape(episodes * out, dim).astype(np.float64)
    if flat.size * val_t.shape[1] < SMALL_PRODUCT:
        # Too small for BLAS to thread, and threadpoolctl's limit is process-wide: the
        # kernels' warm-up (compile_in_background) must not change it under the main thread.
        return (flat @ val_t).reshape(episodes, out, -1)
    with threadpool_limits(1):
        product = flat @ val_t
    return product.reshape(episodes, out, -1)


SMALL_PRODUCT = 1 << 16  # multiply-adds below which a product runs without a thread limit


def _cross_entropy_sum(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(E,) summed cross-entropy of logits (E, K, m) against labels (m,)."""
    top = logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0, :]
    picked = np.take_along_axis(logits, labels[None, None, :].repeat(logits.shape[0], 0),
                                axis=1)[:, 0, :]
    return (log_norm - picked).sum(axis=1)


DIVERGENCE_FACTOR = 10.0  # a head whose validation loss ends this many times above its start


def check_not_diverged(drops: np.ndarray, orders: np.ndarray, initial_loss: np.ndarray,
                       first: int, lr: float, n_classes: int) -> None:
    """Fail when an episode's loss drops are not finite where it visited, or when its head
    ended far worse than it started (the drops of an episode add up to the loss it lost).

    drops (E, epochs, N), orders (E, epochs, steps), initial_loss (E,) mean validation loss
    of the fresh heads.
    """
    for slot in range(drops.shape[0]):
        visited = drops[slot][np.arange(orders.shape[1])[:, None], orders[slot]]
        episode = first + slot
        if not np.all(np.isfinite(visited)):
            raise TvcleanError(f"the Monte-Carlo heads diverged at episode {episode} (--lr "
                               f"{lr:g}): the validation loss became infinite or NaN; lower "
                               f"the learning rate")
        final = initial_loss[slot] - visited.sum()
        limit = DIVERGENCE_FACTOR * max(initial_loss[slot], np.log(n_classes))
        if not final <= limit:
            raise TvcleanError(f"the Monte-Carlo heads diverged at episode {episode} (--lr "
                               f"{lr:g}): the validation loss rose from {initial_loss[slot]:.3g} "
                               f"to {final:.3g}; lower the learning rate")


def _as(array: np.ndarray, dtype: Any) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=dtype)


def compile_in_background(config: EstimateConfig) -> threading.Thread:
    """Compile the kernels `config` needs (or load them from numba's cache) on a thread.

    Started before the features are loaded, the compilation overlaps that
    work; the first real kernel call waits for it (it takes numba's compiler
    lock, then finds the kernel compiled). On an empty cache the linear head is compiled on
    two cores (see kernel_warmup). Errors are left to that call to raise.
    """
    def warm() -> None:
        try:
            helper = None
            if config.head == "linear":  # on an empty cache, compile on two cores
                helper = kernel_warmup.start_loss_side_helper(config.dtype)
            if helper is not None:
                kernel_warmup.warm_training_side(config.dtype)
                kernel_warmup.wait_for(helper)
            tiny = replace(config, episodes=1, epochs=1, episode_per_class=-1, hidden=2,
                           memory_budget_mb=64, threads=1)
            rng = np.random.default_rng(0)
            problem = MonteCarloProblem(rng.random((2, 3)), [0, 1], rng.random((2, 3)), [0, 1],
                                        2, tiny)
            run_episodes(problem, 0, 1)
        except Exception:  # the real call reports it
            pass

    # not a daemon: a process that ends early (an error, Ctrl-C) waits for the compiler
    # rather than killing it inside LLVM, which aborts ("terminate called ...")
    thread = threading.Thread(target=warm, name="tvclean-compile")
    thread.start()
    return thread


class ValueAccumulator:
    """Running sums of each subset example's loss drops, folded in episode order."""

    def __init__(self, n_sub: int):
        self.sums = np.zeros(n_sub)
        self.sums_sq = np.zeros(n_sub)
        self.count = np.zeros(n_sub, np.int64)
        self.episodes = 0

    def add(self, drops: np.ndarray) -> None:
        """Fold drops (E, epochs, N) of the next E episodes."""
        for episode in drops:
            for epoch in episode:
                visited = np.isfinite(epoch)
                self.sums[visited] += epoch[visited]
                self.sums_sq[visited] += epoch[visited] ** 2
                self.count += visited
            self.episodes += 1

    @property
    def mean(self) -> np.ndarray:
        return self.sums / np.maximum(self.count, 1)

    @property
    def stderr(self) -> np.ndarray:
        n = np.maximum(self.count, 1)
        var = np.maximum(self.sums_sq - self.sums**2 / n, 0) / np.maximum(n - 1, 1)
        err = np.sqrt(var / n)
        return np.where(self.count > 1, err, np.nan)

    def state(self) -> dict[str, np.ndarray]:
        return {"sums": self.sums, "sums_sq": self.sums_sq, "count": self.count,
                "episodes": np.array(self.episodes)}

    @classmethod
    def from_state(cls, state: Any) -> ValueAccumulator:
        acc = cls(state["sums"].size)
        acc.sums, acc.sums_sq = state["sums"].copy(), state["sums_sq"].copy()
        acc.count, acc.episodes = state["count"].copy(), int(state["episodes"])
        return acc


def estimate_values(problem: MonteCarloProblem, acc: ValueAccumulator | None = None,
                    block: int | None = None, on_block: Any = None) -> ValueAccumulator:
    """Run the problem's episodes, continuing from `acc` if given, and return the values.

    block: episodes per kernel call (default: config.checkpoint_every);
    on_block(accumulator) is called after each block (checkpoints, progress).
    """
    episodes = problem.config.episodes
    block = block or problem.config.checkpoint_every
    acc = acc or ValueAccumulator(problem.n_sub)
    for first in range(acc.episodes, episodes, block):
        acc.add(run_episodes(problem, first, min(first + block, episodes)))
        if on_block is not None:
            on_block(acc)
    check_values_moved(acc, problem.config.lr)
    return acc


def check_values_moved(acc: ValueAccumulator, lr: float) -> None:
    """Fail when no step changed the validation loss at all (a learning rate so small that
    every value is exactly 0): every image would look equally harmless."""
    if acc.episodes and not np.any(acc.sums):
        raise TvcleanError(f"every training-value is exactly 0: the learning rate (--lr {lr:g}) "
                           f"is too small for a step to change the validation loss; raise it")
