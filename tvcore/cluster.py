"""The Dask runtime (the `dask` extra): clusters, thread plans and running tasks.

`open_cluster(scheduler, workers)` connects to a running scheduler or starts a
`distributed.LocalCluster`; `run_tasks` runs a function over many argument
tuples with a bounded number in flight, retried by Dask, and turns a task
that still fails into a TvcleanError naming it. The stages' cluster halves
(tvcore.stages.extract_cluster, estimate_cluster) build on this module, which
imports no stage.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

# What a cancelled Dask future raises (distributed's FutureCancelledError derives from it).
from concurrent.futures import CancelledError
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Any

from .cores import available_cores
from .errors import TvcleanError, one_line

if TYPE_CHECKING:
    import distributed

RETRIES = 2  # extra attempts Dask makes of a task that raised or lost its worker
RESCATTERS = 2  # times shared data lost with workers is sent again before giving up
TASKS_PER_THREAD = 2  # tasks in flight per worker thread: keeps workers busy, bounds memory
INSTALL_HINT = "pip install 'tvclean[dask]'"


def _dask() -> ModuleType:
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
                 threads_per_worker: int = 1, client: Any = None) -> None:
        if scheduler and workers:
            raise TvcleanError("give either --scheduler (a running cluster) or --workers "
                               "(a local one), not both")
        if workers < 0:
            raise TvcleanError(f"--workers must be >= 1, got {workers}")
        if threads_per_worker < 1:
            raise TvcleanError(f"threads per worker must be >= 1, got {threads_per_worker}")
        self.scheduler, self.workers = scheduler, workers
        self.threads_per_worker = threads_per_worker
        self._client: distributed.Client | None = client
        self._local: distributed.LocalCluster | None = None
        self._owned = client is None

    @property
    def client(self) -> distributed.Client:
        if self._client is None:
            self._client = self._connect() if self.scheduler else self._start_local()
        return self._client

    def _connect(self) -> distributed.Client:
        distributed = _dask()
        try:
            # a malformed address would leave a half-made Client that complains at exit
            distributed.comm.get_address_host_port(distributed.comm.normalize_address(
                self.scheduler))
            return distributed.Client(self.scheduler, set_as_default=False)
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise TvcleanError(f"cannot connect to the Dask scheduler at {self.scheduler!r} "
                               f"(--scheduler): {one_line(exc)}") from None

    def _start_local(self) -> distributed.Client:
        distributed = _dask()
        self._local = distributed.LocalCluster(
            n_workers=self.workers or 1, threads_per_worker=self.threads_per_worker,
            processes=True, dashboard_address=":0", silence_logs=logging.ERROR)  # any free port
        return distributed.Client(self._local, set_as_default=False)

    def thread_plan(self, requested: int) -> ThreadPlan:
        """How many cores each task may use: `requested`, or (0) its worker process's share
        of the cores of its machine."""
        hosts = Counter(_host(address) for address in self.client.nthreads())
        return ThreadPlan(requested, tuple(sorted(hosts.items())))

    def workers_where(self, check: Callable[[], bool]) -> tuple[int, int]:
        """(workers on which check() is true, workers that answered): a fact about each
        worker's own machine (a worker that fails to answer is left out)."""
        answers = self.client.run(check, on_error="return")
        said = [value for value in answers.values() if isinstance(value, bool)]
        return sum(said), len(said)

    def slots(self) -> int:
        """Worker threads in the cluster now (at least 1)."""
        return max(1, sum(self.client.nthreads().values()))

    def close(self) -> None:
        if self._owned and self._client is not None:
            self._client.close()
        if self._local is not None:
            self._local.close()
        self._client = self._local = None

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


@contextlib.contextmanager
def open_cluster(scheduler: str | None = None,
                 workers: int | None = None) -> Iterator[Cluster | None]:
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
    raise TypeError(f"cluster must be a tvcore.cluster.Cluster or a distributed.Client, "
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
        return max(1, available_cores() // processes)


def _host(address: str) -> str:
    return _dask().comm.get_address_host(address)


# --- running tasks ---------------------------------------------------------------------------

def run_tasks(cluster: Cluster, fn: Callable[..., Any], tasks: Sequence[tuple[Any, ...]],
              *shared: Any,
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
            ready[i] = task_result(future, names[i])
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


def task_result(future: distributed.Future, what: str) -> Any:
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
                           f"{type(exc).__name__}: {one_line(exc)}") from None


# One holder at a time per worker process: a Monte-Carlo block's episodes already use all
# the threads the plan gives this worker, and each feature extractor is built only once.
WORKER_LOCK = threading.Lock()
