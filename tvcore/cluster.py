"""The extract and estimate stages on a Dask cluster (the `dask` extra).

`open_cluster(scheduler, workers)` connects to a running scheduler or starts a
`distributed.LocalCluster`. Extraction is sharded on batch boundaries: each
worker process loads the model once and returns features and decoding errors;
the driver writes them into the run's memory-mapped matrices and checkpoints
as the local path does. Monte-Carlo episodes run in blocks on the workers
(the problem's arrays are scattered once, the Gram matrix is computed once
per worker) and are folded into the accumulator strictly in episode order,
so the values are bitwise those of a single-process run with the same seed.
Failed tasks are retried by Dask; a task that still fails stops the stage
with a TvcleanError, after a checkpoint, never with partial results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import TvcleanError

# What a cancelled Dask future raises (distributed's FutureCancelledError derives from it).
from concurrent.futures import CancelledError  # noqa: E402

RETRIES = 2  # extra attempts Dask makes of a task that raised or lost its worker
RESCATTERS = 2  # times shared data lost with workers is sent again before giving up
SHARD_BATCHES = 8  # batches per extraction task
TASKS_PER_THREAD = 2  # tasks in flight per worker thread: keeps workers busy, bounds memory
INSTALL_HINT = "pip install 'tvclean[dask]'"


def _dask():
    """The `distributed` module, or a TvcleanError telling how to install it."""
    try:
        import distributed
    except ImportError:
        raise TvcleanError(f"--scheduler/--workers need Dask, which is not installed: "
                           f"{INSTALL_HINT}") from None
    return distributed


class Cluster:
    """A Dask client, connected on first use: to `scheduler`, or to a LocalCluster of
    `workers` processes (threads_per_worker threads each) that it starts and stops.

    Pass an existing `distributed.Client` as `client` to use it as it is.
    """

    def __init__(self, scheduler: str | None = None, workers: int = 0,
                 threads_per_worker: int = 1, client: Any = None):
        if scheduler and workers:
            raise TvcleanError("give either --scheduler (a running cluster) or --workers "
                               "(a local one), not both")
        if workers < 0:
            raise TvcleanError(f"--workers must be >= 1, got {workers}")
        if threads_per_worker < 1:
            raise TvcleanError(f"threads per worker must be >= 1, got {threads_per_worker}")
        self.scheduler, self.workers = scheduler, workers
        self.threads_per_worker = threads_per_worker
        self._client, self._local, self._owned = client, None, client is None

    @property
    def client(self):
        if self._client is None:
            self._client = self._connect() if self.scheduler else self._start_local()
        return self._client

    def _connect(self):
        distributed = _dask()
        try:
            # a malformed address would leave a half-made Client that complains at exit
            distributed.comm.get_address_host_port(distributed.comm.normalize_address(
                self.scheduler))
            return distributed.Client(self.scheduler, set_as_default=False)
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise TvcleanError(f"cannot connect to the Dask scheduler at {self.scheduler!r} "
                               f"(--scheduler): {_one_line(exc)}") from None

    def _start_local(self):
        distributed = _dask()
        self._local = distributed.LocalCluster(
            n_workers=self.workers or 1, threads_per_worker=self.threads_per_worker,
            processes=True, dashboard_address=":0", silence_logs=logging.ERROR)  # any free port
        return distributed.Client(self._local, set_as_default=False)

    def thread_plan(self, requested: int) -> "ThreadPlan":
        """How many cores each task may use: `requested`, or (0) its worker process's share
        of the cores of its machine."""
        hosts = Counter(_host(address) for address in self.client.nthreads())
        return ThreadPlan(requested, tuple(sorted(hosts.items())))

    def slots(self) -> int:
        """Worker threads in the cluster now (at least 1)."""
        return max(1, sum(self.client.nthreads().values()))

    def close(self) -> None:
        if self._owned and self._client is not None:
            self._client.close()
        if self._local is not None:
            self._local.close()
        self._client = self._local = None

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def open_cluster(scheduler: str | None = None, workers: int | None = None):
    """Yield a Cluster for --scheduler/--workers, or None (the local path) when neither is given."""
    if not scheduler and not workers:
        yield None
        return
    with Cluster(scheduler=scheduler, workers=workers or 0) as cluster:
        yield cluster


def as_cluster(cluster: Any) -> Cluster:
    """A Cluster from a Cluster or a `distributed.Client`."""
    if isinstance(cluster, Cluster):
        return cluster
    if type(cluster).__name__ == "Client":
        return Cluster(client=cluster)
    raise TypeError(f"cluster must be a tvcore.distributed.Cluster or a distributed.Client, "
                    f"got {type(cluster).__name__}")


@dataclass(frozen=True)
class ThreadPlan:
    """Cores per task: `requested`, else this machine's cores over its worker processes
    (one kernel runs at a time in a process, so threads within a worker do not count)."""

    requested: int
    processes_per_host: tuple[tuple[str, int], ...]

    def on_this_worker(self) -> int:
        if self.requested:
            return self.requested
        host = _host(_dask().get_worker().address)
        processes = dict(self.processes_per_host).get(host, 1)
        return max(1, _cores() // processes)


def _host(address: str) -> str:
    return _dask().comm.get_address_host(address)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


# --- running tasks ---------------------------------------------------------------------------

def run_tasks(cluster: Cluster, fn: Callable, tasks: Sequence[tuple], *shared: Any,
              names: Sequence[str], ordered: bool = True) -> Iterator[tuple[int, Any]]:
    """Yield (i, fn(*shared, *tasks[i])) for every task, computed on the cluster.

    ordered: in task order (else as they finish). At most TASKS_PER_THREAD
    tasks per worker thread are in flight, so results never pile up. A task
    that still fails after RETRIES retries raises a TvcleanError naming names[i].
    """
    distributed = _dask()
    client = cluster.client
    window = TASKS_PER_THREAD * cluster.slots()
    index: dict[Any, int] = {}
    finished = distributed.as_completed(loop=client.loop)
    ready: dict[int, Any] = {}
    submitted = yielded = 0

    def submit_more() -> None:
        nonlocal submitted
        while submitted < len(tasks) and submitted - yielded < window:
            future = client.submit(fn, *shared, *tasks[submitted], retries=RETRIES, pure=False)
            index[future] = submitted
            finished.add(future)
            submitted += 1

    try:
        submit_more()
        for future in finished:
            i = index.pop(future)
            ready[i] = _result(future, names[i])
            future.release()
            while ready:
                key = yielded if ordered else next(iter(ready))
                if key not in ready:
                    break
                yield key, ready.pop(key)
                yielded += 1
            submit_more()
    finally:
        if index:
            client.cancel(list(index))


class LostSharedData(TvcleanError):
    """A task was cancelled because data it needed was lost with a worker (re-send it)."""


def _result(future, what: str) -> Any:
    """The task's value; a final failure as a TvcleanError (TvcleanErrors as they are)."""
    distributed = _dask()
    try:
        return future.result()
    except TvcleanError:
        raise
    except CancelledError:
        raise LostSharedData(f"{what} was cancelled on the cluster: the data it needed was "
                             "lost with a worker") from None
    except distributed.KilledWorker:
        raise TvcleanError(f"{what} failed: the workers running it died repeatedly "
                           "(out of memory, or killed?); see the worker logs") from None
    except Exception as exc:  # whatever the task raised, after Dask's retries
        raise TvcleanError(f"{what} failed on the cluster after {RETRIES} retries: "
                           f"{type(exc).__name__}: {_one_line(exc)}") from None


# --- Monte-Carlo estimation ------------------------------------------------------------------

_WORKER_LOCK = threading.Lock()  # numba's workqueue layer is not re-entrant across threads


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
    config: Any  # EstimateConfig
    _problem: Any = dataclasses.field(default=None, repr=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_problem"] = None  # the Gram matrix is rebuilt where the data lands
        return state

    def problem(self, threads: int):
        """The MonteCarloProblem, built (Gram matrix with `threads` BLAS threads) on first use."""
        if self._problem is None:
            from threadpoolctl import threadpool_limits

            from .engine.montecarlo import MonteCarloProblem
            with threadpool_limits(threads or None):
                self._problem = MonteCarloProblem(self.sub_feats, self.sub_labels, self.val_feats,
                                                  self.val_labels, self.n_classes, self.config)
        return self._problem


def driver_config(config):
    """The EstimateConfig for the driver's own MonteCarloProblem in a distributed run.

    The driver runs no episodes, so a minimal memory budget keeps it from
    computing the Gram matrix that every worker computes for itself.
    """
    return dataclasses.replace(config, memory_budget_mb=1)


def _episode_block(data: ProblemData, plan: ThreadPlan, first: int, stop: int) -> np.ndarray:
    """On a worker: loss drops (E, epochs, N) of episodes first..stop-1."""
    from .stages.estimate import set_threads
    from .engine.montecarlo import run_episodes
    with _WORKER_LOCK:
        threads = set_threads(plan.on_this_worker())
        return run_episodes(data.problem(threads), first, stop)


def estimate_values(problem, config, cluster, acc=None, block: int | None = None,
                    on_block=None):
    """montecarlo.estimate_values on a cluster: the same values, bitwise.

    problem: the driver's MonteCarloProblem (its arrays are sent once);
    config: the EstimateConfig the workers use; acc, block, on_block: as in
    montecarlo.estimate_values. Blocks are folded strictly in episode order.
    """
    from .engine.montecarlo import ValueAccumulator
    cluster = as_cluster(cluster)
    block = block or config.checkpoint_every
    acc = acc or ValueAccumulator(problem.n_sub)
    if acc.episodes >= config.episodes:
        return acc
    data = ProblemData(problem.sub_feats, problem.sub_labels, problem.val_feats,
                       problem.val_labels, problem.n_classes, config)
    for attempt in range(RESCATTERS + 1):
        try:
            return _fold_blocks(cluster, data, config, acc, block, on_block)
        except LostSharedData:
            # The scattered arrays went down with workers: send them again and go on
            # from the last folded episode (blocks are deterministic, so nothing changes).
            if attempt == RESCATTERS:
                raise
    return acc


def _fold_blocks(cluster: Cluster, data: ProblemData, config: EstimateConfig, acc,
                 block: int, on_block):
    blocks = [(first, min(first + block, config.episodes))
              for first in range(acc.episodes, config.episodes, block)]
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


# --- feature extraction ----------------------------------------------------------------------

@dataclass(frozen=True)
class ExtractSettings:
    """What a worker needs to build the same FeatureExtractor as the driver would."""

    model: str  # a known model name, or an absolute path to an .onnx file
    sha256: str  # the driver's model file: a worker with another file stops the run
    batch_size: int
    threads: ThreadPlan
    decode_workers: int
    max_pixels: int


_EXTRACTORS: dict[ExtractSettings, Any] = {}  # per worker process: the model is loaded once


def _worker_extractor(settings: ExtractSettings):
    with _WORKER_LOCK:
        if settings not in _EXTRACTORS:
            from .stages.extract import FeatureExtractor
            from .io.modelzoo import resolve_model
            model = resolve_model(settings.model)
            if model.sha256 != settings.sha256:
                raise TvcleanError(f"model {settings.model} on worker {os.uname().nodename} has "
                                   f"sha256 {model.sha256[:12]}, the driver's "
                                   f"{settings.sha256[:12]}: every worker needs the same model")
            threads = settings.threads.on_this_worker()
            _EXTRACTORS[settings] = FeatureExtractor(
                model, settings.batch_size, threads, settings.decode_workers or threads,
                settings.max_pixels)
        return _EXTRACTORS[settings]


def _extract_dim(settings: ExtractSettings) -> int:
    """On a worker: the model's feature dimension (and the model loaded for later shards)."""
    return _worker_extractor(settings).dim


def _extract_shard(settings: ExtractSettings, paths: list[str]
                   ) -> tuple[np.ndarray, dict[int, str]]:
    """On a worker: (n, D) float32 features of the images at `paths` and {row: error}.

    Batches of settings.batch_size from the shard's start: the same batches as
    the local path, since shards start on batch boundaries.
    """
    extractor = _worker_extractor(settings)
    batches = [paths[i:i + settings.batch_size] for i in range(0, len(paths), settings.batch_size)]
    features, errors = [], {}
    for start, (part, failed) in zip(range(0, len(paths), settings.batch_size),
                                     extractor.run_batches(batches)):
        features.append(part)
        errors.update({start + i: message for i, message in failed.items()})
    return np.concatenate(features), errors


def extract_settings(config, model, cluster: Cluster) -> ExtractSettings:
    """The workers' extractor settings for an ExtractConfig and the resolved ModelSpec."""
    return ExtractSettings(model=_model_reference(config.model, model), sha256=model.sha256,
                           batch_size=config.batch_size,
                           threads=cluster.thread_plan(config.threads),
                           decode_workers=config.decode_workers, max_pixels=config.max_pixels)


def _model_reference(name: str, model) -> str:
    """What workers resolve: a known or cached model by its name (each worker's own copy),
    a model file by its absolute path (as tvcore.modelzoo.resolve_model tells them apart)."""
    from .io.modelzoo import KNOWN_MODELS
    is_file = name not in KNOWN_MODELS and (
        name.endswith(".onnx") or os.sep in name or Path(name).expanduser().exists())
    return str(model.path) if is_file else name


def shards_to_do(rows: int, rows_done: int, done: Iterable[Sequence[int]],
                 shard_rows: int) -> list[tuple[int, int]]:
    """Row ranges [first, stop) still to extract: rows_done..rows minus the finished `done`
    ranges, cut on multiples of shard_rows (batch boundaries)."""
    finished = sorted((int(a), int(b)) for a, b in done)
    todo, row = [], rows_done
    for first, stop in finished + [(rows, rows)]:
        if first > row:
            cuts = list(range((row // shard_rows + 1) * shard_rows, first, shard_rows))
            todo += list(zip([row] + cuts, cuts + [first]))
        row = max(row, stop)
    return todo


def extract_on_cluster(cluster, run, dataset, model, fingerprint: str, config,
                       progress: bool | None):
    """Extract every split's remaining shards on the cluster into RUN/features.

    Returns (writers, dim) like the local path. Shards finished before an
    interruption are not redone: the progress record lists those that
    finished beyond the contiguous rows_done.
    """
    from .stages.extract import _SplitWriter

    cluster = as_cluster(cluster)
    settings = extract_settings(config, model, cluster)
    dim = _result(cluster.client.submit(_extract_dim, settings, pure=False, retries=RETRIES),
                  f"loading model {model.name} on a worker")
    writers = [_SplitWriter(run, split, dataset.classes, fingerprint, dim)
               for split in dataset.splits]
    shard_rows = config.batch_size * SHARD_BATCHES
    shards = [(w, first, stop) for w, writer in enumerate(writers)
              for first, stop in _open_shards(writer, shard_rows)]
    _fetch_shards(cluster, settings, writers, shards, progress)
    for writer in writers:
        if not writer.state["complete"] and writer.state["rows_done"] != len(writer.split):
            raise AssertionError(f"{writer.split.name}: {writer.state['rows_done']} of "
                                 f"{len(writer.split)} rows extracted")
        writer.finish()
    return writers, dim


def _open_shards(writer, shard_rows: int) -> list[tuple[int, int]]:
    """Open the writer's .partial matrix (fresh, or the interrupted run's) and list its shards."""
    state = writer.state
    if state["complete"]:
        return []
    done = state.setdefault("shards_done", [])
    if (state["rows_done"] == 0 and not done) or not writer.partial.exists():
        state.update(rows_done=0, errors={}, shards_done=[])
        writer.matrix = np.lib.format.open_memmap(
            writer.partial, mode="w+", dtype=np.float32, shape=(len(writer.split), state["dim"]))
    else:
        writer.matrix = np.lib.format.open_memmap(writer.partial, mode="r+")
    return shards_to_do(len(writer.split), state["rows_done"], state["shards_done"], shard_rows)


def _write_shard(writer, first: int, features: np.ndarray, errors: dict[int, str]) -> None:
    """Store one shard's rows and errors, and advance rows_done over contiguous finished shards."""
    stop = first + len(features)
    state = writer.state
    writer.matrix[first:stop] = features
    for row in range(first, stop):
        state["errors"].pop(str(row), None)
    state["errors"].update({str(first + i): message for i, message in errors.items()})
    done = state["shards_done"] + [[first, stop]]
    done.sort()
    while done and done[0][0] <= state["rows_done"]:
        state["rows_done"] = max(state["rows_done"], done.pop(0)[1])
    state["shards_done"] = done


def _fetch_shards(cluster: Cluster, settings: ExtractSettings, writers, shards, progress) -> None:
    """Run the shards (writer index, first, stop) and store each as it arrives, checkpointing."""
    from .stages.extract import CHECKPOINT_SECONDS
    from .progress import Progress

    tasks = [(writers[w].split.paths[first:stop],) for w, first, stop in shards]
    names = [f"feature extraction of {writers[w].split.name} images {first}..{stop - 1}"
             for w, first, stop in shards]
    total = sum(len(w.split) for w in writers)
    last_checkpoint = time.perf_counter()
    with Progress(total, "extract", enabled=progress) as bar:
        bar.update(total - sum(stop - first for _, first, stop in shards))
        try:
            for i, (features, errors) in run_tasks(cluster, _extract_shard, tasks, settings,
                                                   names=names, ordered=False):
                w, first, _ = shards[i]
                _write_shard(writers[w], first, features, errors)
                bar.update(len(features))
                if time.perf_counter() - last_checkpoint >= CHECKPOINT_SECONDS:
                    for writer in writers:
                        writer.checkpoint()
                    last_checkpoint = time.perf_counter()
        except BaseException:  # a failure or Ctrl-C: keep the finished shards for the resume
            for writer in writers:
                writer.checkpoint()
            raise
