"""extract and estimate on a Dask LocalCluster (2 worker processes): the same results as the
local path, bitwise; resumes, retries after a lost worker, clear errors, the CLI options."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from imagefiles import write_bad_files, write_digit_tree
from runfixtures import clustered_features, make_feature_run

import tvcore.cluster as dist
import tvcore.stages.estimate_cluster as estimate_cluster
import tvcore.stages.extract_cluster as extract_cluster
from tvclean.main import cli
from tvcore.config import Config, EstimateConfig, ExtractConfig
from tvcore.cores import available_cores
from tvcore.engine import montecarlo
from tvcore.errors import TvcleanError
from tvcore.io.modelzoo import INT8_SATURATES, int8_saturates, int8_saturates_on_workers
from tvcore.rundir import load_estimates, load_features
from tvcore.rundir.features import SplitWriter, gaps
from tvcore.stages.estimate import estimate
from tvcore.stages.extract import extract

pytestmark = pytest.mark.dask

# batch_size 1: shards of SHARD_BATCHES rows, so each split has several shards.
EXTRACT_OPTIONS = ExtractConfig(batch_size=1, threads=1, decode_workers=1)
EXTRACT = Config(extract=EXTRACT_OPTIONS)
ESTIMATE = EstimateConfig(episodes=12, per_class=25, val_per_class=6, lr=0.01, checkpoint_every=2)


@pytest.fixture(scope="module")
def cluster():
    """One 2-process LocalCluster for the module; a task may kill at most 1 worker + retries."""
    pytest.importorskip("distributed")  # first: dask.config.set needs its defaults loaded
    import dask
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        with dist.Cluster(workers=2) as shared:
            shared.client.wait_for_workers(2)
            yield shared


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_digit_tree(root / "train", per_class=12)
    write_digit_tree(root / "val", per_class=3, offset=20)
    write_bad_files(root / "train" / "digit1" / "bad")  # 6 rows that fail on the workers too
    return root


TRAIN_ROWS, VAL_ROWS = 36 + 6, 9


def all_shards() -> int:
    rows = EXTRACT_OPTIONS.batch_size * extract_cluster.SHARD_BATCHES
    return sum(len(gaps(n, [], rows)) for n in (TRAIN_ROWS, VAL_ROWS))


@pytest.fixture(scope="module")
def local_features(images, tmp_path_factory):
    run = tmp_path_factory.mktemp("local")
    extract(images, None, run, EXTRACT, progress=False)
    return run


@pytest.fixture(scope="module")
def feature_arrays():
    rng = np.random.default_rng(3)
    train, labels, _ = clustered_features(rng, 30, 3, 16, flip=0.2)
    val, val_labels, _ = clustered_features(rng, 8, 3, 16)
    return train, labels, val, val_labels


def same_features(run_a, run_b) -> None:
    a, b = load_features(run_a), load_features(run_b)
    for split in ("train", "val"):
        assert np.array_equal(getattr(a, split).features, getattr(b, split).features)
        index = f"features/{split}_index.csv"
        assert (run_a / index).read_text() == (run_b / index).read_text()
    assert a.meta == b.meta


def same_estimates(run_a, run_b) -> None:
    a, b = load_estimates(run_a), load_estimates(run_b)
    for name in ("rows", "val_rows", "mean", "count", "history", "history_episodes"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.stderr, b.stderr, equal_nan=True)
    assert a.episodes == b.episodes


def test_extract_on_the_cluster_equals_local_bitwise(cluster, images, local_features, tmp_path):
    summary = extract(images, None, tmp_path, EXTRACT, progress=False, cluster=cluster)
    same_features(local_features, tmp_path)
    assert summary.splits["train"].images == TRAIN_ROWS and summary.splits["train"].failed == 6
    assert all_shards() == 8
    assert not list((tmp_path / "features").glob("*.partial"))
    again = extract(images, None, tmp_path, EXTRACT, progress=False, cluster=cluster)
    assert again.up_to_date


def test_int8_extract_on_the_cluster_equals_local_bitwise(cluster, images, tmp_path):
    """--precision int8 is resolved on every worker to the same int8 file as locally."""
    config = Config(extract=ExtractConfig(batch_size=4, threads=1, decode_workers=1,
                                          precision="int8", device="cpu"))
    local = extract(images, None, tmp_path / "local", config, progress=False)
    remote = extract(images, None, tmp_path / "cluster", config, progress=False, cluster=cluster)
    assert local.model["name"] == remote.model["name"] == "efficientnet-lite0-int8"
    same_features(tmp_path / "local", tmp_path / "cluster")
    # the int8 warning is about the CPUs the inference ran on: here, the workers'
    saturates = int8_saturates()
    assert local.warnings == ([INT8_SATURATES] if saturates else [])
    assert remote.warnings == ([int8_saturates_on_workers(2, 2)] if saturates else [])


def test_a_fact_about_the_workers_machines_is_asked_of_each_worker(cluster):
    here = os.getpid()
    assert cluster.workers_where(lambda: os.getpid() != here) == (2, 2)
    assert cluster.workers_where(lambda: False) == (0, 2)


def _done(record) -> int:
    return sum(b - a for a, b in json.loads(record.read_text())["done"])


def test_interrupted_cluster_extract_resumes_without_redoing_shards(
        cluster, images, local_features, tmp_path, monkeypatch):
    write, stored = SplitWriter.write, []

    def interrupt_after_three(writer, first, features, errors):
        if len(stored) == 3:
            raise KeyboardInterrupt
        write(writer, first, features, errors)
        stored.append((writer.name, first, first + len(features)))

    monkeypatch.setattr(SplitWriter, "write", interrupt_after_three)
    with pytest.raises(KeyboardInterrupt):
        extract(images, None, tmp_path, EXTRACT, progress=False, cluster=cluster)
    recorded = _done(tmp_path / "features" / "train.progress.json")
    assert recorded == sum(b - a for name, a, b in stored if name == "train") > 0

    monkeypatch.setattr(SplitWriter, "write", write)
    run_tasks, redone = extract_cluster.run_tasks, []
    monkeypatch.setattr(extract_cluster, "run_tasks", lambda *args, names, **kw:
                        redone.extend(names) or run_tasks(*args, names=names, **kw))
    extract(images, None, tmp_path, EXTRACT, progress=False, cluster=cluster)
    for name, first, stop in stored:
        assert f"{name} images {first}..{stop - 1}" not in " ".join(redone)
    assert len(redone) == all_shards() - len(stored)
    same_features(local_features, tmp_path)


def test_local_and_cluster_runs_resume_each_others_rows(cluster, images, local_features, tmp_path,
                                                        monkeypatch):
    """One progress record serves both paths: a local run fills the gaps a cluster run left
    (rows 8..15 done out of order), a cluster run then finishes what the local run left."""
    record = tmp_path / "features" / "train.progress.json"
    write = SplitWriter.write
    seen = []

    def stop_after_one_shard(writer, first, features, errors):
        write(writer, first, features, errors)
        seen.append(first)
        if writer.name == "train" and first == 8:
            raise KeyboardInterrupt

    monkeypatch.setattr(extract_cluster, "run_tasks", lambda cluster, fn, tasks, *shared, names,
                        ordered: _in_order(fn, tasks, shared, names))
    monkeypatch.setattr(SplitWriter, "write", stop_after_one_shard)
    with pytest.raises(KeyboardInterrupt):  # the cluster path, shards in the order 8..15 first
        extract(images, None, tmp_path, EXTRACT, progress=False, cluster=cluster)
    assert json.loads(record.read_text())["done"] == [[8, 16]]

    def stop_after_a_batch(writer, first, features, errors):
        write(writer, first, features, errors)
        raise KeyboardInterrupt

    monkeypatch.setattr(SplitWriter, "write", stop_after_a_batch)
    with pytest.raises(KeyboardInterrupt):
        extract(images, None, tmp_path, EXTRACT, progress=False)
    assert json.loads(record.read_text())["done"] == [[0, 1], [8, 16]]

    monkeypatch.undo()
    extract(images, None, tmp_path, EXTRACT, progress=False, cluster=cluster)
    same_features(local_features, tmp_path)


def _in_order(fn, tasks, shared, names):
    """run_tasks on this process, the second shard first (as a cluster may finish them)."""
    order = [1, 0] + list(range(2, len(tasks)))
    for i in order:
        yield i, fn(*shared, *tasks[i])


@pytest.mark.parametrize("rows, done, expected", [
    (20, [], [(0, 8), (8, 16), (16, 20)]),
    (20, [[0, 3]], [(3, 8), (8, 16), (16, 20)]),
    (20, [[8, 16]], [(0, 8), (16, 20)]),
    (24, [[0, 8], [16, 24], [0, 8]], [(8, 16)]),
    (20, [[0, 20]], []),
])
def test_gaps_cover_exactly_the_rows_left(rows, done, expected):
    assert gaps(rows, done, 8) == expected


def test_estimate_on_the_cluster_equals_local_bitwise(cluster, feature_arrays, tmp_path):
    local = make_feature_run(tmp_path / "local", *feature_arrays)
    remote = make_feature_run(tmp_path / "remote", *feature_arrays)
    estimate(local, Config(estimate=ESTIMATE), progress=False)
    estimate(remote, Config(estimate=ESTIMATE), progress=False, cluster=cluster.client)  # a plain Client works too
    same_estimates(local.root, remote.root)


def test_cluster_continues_a_local_checkpoint_with_the_same_values(cluster, feature_arrays,
                                                                   tmp_path):
    config = Config(estimate=EstimateConfig(**{**vars(ESTIMATE), "head": "mlp", "hidden": 5, "epochs": 2}))
    local = make_feature_run(tmp_path / "local", *feature_arrays)
    mixed = make_feature_run(tmp_path / "mixed", *feature_arrays)
    estimate(local, config, progress=False)
    estimate(mixed, Config(estimate=EstimateConfig(**{**vars(config.estimate), "episodes": 6})),
             progress=False)
    resumed = estimate(mixed, config, progress=False, cluster=cluster)
    assert resumed.episodes == 12
    same_estimates(local.root, mixed.root)


def test_a_lost_worker_is_replaced_and_the_values_do_not_change(cluster, feature_arrays):
    train, labels, val, val_labels = feature_arrays
    problem = montecarlo.MonteCarloProblem(train, labels, val, val_labels, 3, ESTIMATE)
    expected = montecarlo.estimate_values(problem, block=1)
    before = cluster.client.run(os.getpid)
    killed = []

    def kill_a_worker_once(acc):
        if not killed:
            killed.append(next(iter(before.values())))
            os.kill(killed[0], signal.SIGKILL)

    acc = estimate_cluster.estimate_values(problem, ESTIMATE, cluster, block=1,
                                          on_block=kill_a_worker_once)
    assert np.array_equal(acc.sums, expected.sums) and np.array_equal(acc.count, expected.count)
    assert np.array_equal(acc.sums_sq, expected.sums_sq) and acc.episodes == 12
    cluster.client.wait_for_workers(2)
    assert killed[0] not in cluster.client.run(os.getpid).values()


def test_a_task_that_keeps_failing_stops_with_a_clear_error(cluster):
    with pytest.raises(TvcleanError, match=r"^square root 1 failed on the cluster after 2 "
                                           r"retries: ValueError: math domain error$"):
        list(dist.run_tasks(cluster, math.sqrt, [(4.0,), (-1.0,)],
                            names=["square root 0", "square root 1"]))


def test_a_task_that_keeps_killing_its_worker_stops_with_a_clear_error(cluster):
    with pytest.raises(TvcleanError, match="^exit task failed: the workers running it died"):
        list(dist.run_tasks(cluster, os._exit, [(1,)], names=["exit task"]))
    cluster.client.wait_for_workers(2)


def test_no_partial_estimates_are_written_when_a_task_fails(cluster, feature_arrays, tmp_path,
                                                            monkeypatch):
    run = make_feature_run(tmp_path / "run", *feature_arrays)

    run_tasks = estimate_cluster.run_tasks

    def first_block_then_failure(cluster, fn, tasks, *shared, names, **kwargs):
        yield from run_tasks(cluster, fn, tasks[:1], *shared, names=names[:1], **kwargs)
        raise TvcleanError(f"{names[1]} failed on the cluster")

    monkeypatch.setattr(estimate_cluster, "run_tasks", first_block_then_failure)
    with pytest.raises(TvcleanError, match="Monte-Carlo episodes 2..3 failed"):
        estimate(run, Config(estimate=ESTIMATE), progress=False, cluster=cluster)
    assert not (run.root / "estimates" / "meta.json").exists()
    with np.load(run.root / "estimates" / "checkpoint" / "state.npz") as state:
        assert int(state["episodes"]) == 2  # the resume point


def test_cli_estimate_on_a_scheduler_and_on_local_workers(cluster, feature_arrays, tmp_path):
    runner = CliRunner()
    options = ["--episodes", "6", "--per-class", "25", "--val-per-class", "6", "--lr", "0.01"]
    address = cluster.client.scheduler.address
    for name, extra in (("local", []), ("scheduler", ["--scheduler", address]),
                        ("workers", ["--workers", "1"])):
        make_feature_run(tmp_path / name, *feature_arrays)
        result = runner.invoke(cli, ["estimate", str(tmp_path / name), *options, *extra])
        assert result.exit_code == 0, result.output
        assert "estimated 75 training-values over 6 episodes" in result.output
    same_estimates(tmp_path / "local", tmp_path / "scheduler")
    same_estimates(tmp_path / "local", tmp_path / "workers")


def test_cli_clean_on_a_scheduler_equals_local(cluster, images, tmp_path):
    runner = CliRunner()
    options = ["--batch-size", "1", "--episodes", "4", "--per-class", "12", "--val-per-class", "3",
               "--output", "none", "--no-report"]
    address = cluster.client.scheduler.address
    for name, extra in (("local", []), ("cluster", ["--scheduler", address])):
        result = runner.invoke(cli, ["clean", str(images), "-o", str(tmp_path / name),
                                     *options, *extra])
        assert result.exit_code == 0, result.output
    local, remote = (tmp_path / "local" / "training_values.csv").read_text(), \
        (tmp_path / "cluster" / "training_values.csv").read_text()
    assert local == remote and local.count("\n") == 1 + TRAIN_ROWS


@pytest.mark.parametrize("address, why", [
    ("tcp://127.0.0.1:9", "Timed out trying to connect to tcp://127.0.0.1:9 after 1 s"),
    ("localhost", "missing port number in address 'localhost'"),
    ("http://127.0.0.1:8786", "unknown address scheme 'http'"),
])
def test_cli_bad_scheduler_address_is_a_one_line_error(tmp_path, feature_arrays, address, why):
    pytest.importorskip("distributed")
    import dask
    make_feature_run(tmp_path / "run", *feature_arrays)
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        result = CliRunner().invoke(cli, ["estimate", str(tmp_path / "run"),
                                          "--scheduler", address])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot connect to the Dask scheduler at "
                                    f"'{address}' (--scheduler): {why}")
    assert result.output.count("\n") == 1


def test_cli_scheduler_and_workers_together_are_refused(tmp_path):
    result = CliRunner().invoke(cli, ["estimate", str(tmp_path), "--scheduler", "tcp://x:1",
                                      "--workers", "2"])
    assert result.exit_code == 1
    assert "give either --scheduler (a running cluster) or --workers" in result.output


def test_without_dask_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(TvcleanError, match=r"need Dask.*pip install 'tvclean\[dask\]'"):
        dist.Cluster(workers=2).client  # noqa: B018 (the property connects)


def test_each_local_worker_process_uses_its_share_of_the_cores(cluster):
    client = cluster.client

    def on_every_worker(plan):
        return [client.submit(plan.on_this_worker, workers=[address], pure=False).result()
                for address in client.nthreads()]

    plan = cluster.thread_plan(0)
    assert plan.processes_per_host == (("127.0.0.1", 2),)
    share = max(1, available_cores() // 2)
    assert on_every_worker(plan) == [share, share]
    assert on_every_worker(cluster.thread_plan(3)) == [3, 3]


def test_workers_get_known_and_cached_models_by_name_and_files_by_absolute_path(tmp_path,
                                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.onnx").write_bytes(b"")
    (tmp_path / "plain").write_bytes(b"")
    spec = SimpleNamespace(path=tmp_path / "resolved.onnx")  # what resolve_model returned
    assert extract_cluster.model_reference("mine.onnx", spec) == str(tmp_path / "resolved.onnx")
    assert extract_cluster.model_reference("plain", spec) == str(tmp_path / "resolved.onnx")
    assert extract_cluster.model_reference("efficientnet-lite0", spec) == "efficientnet-lite0"
    assert extract_cluster.model_reference("my-finetuned", spec) == "my-finetuned"  # in each cache


def test_shared_data_lost_with_workers_is_sent_again(cluster, feature_arrays, monkeypatch):
    train, labels, val, val_labels = feature_arrays
    problem = montecarlo.MonteCarloProblem(train, labels, val, val_labels, 3, ESTIMATE)
    expected = montecarlo.estimate_values(problem, block=1)
    run_tasks, calls = estimate_cluster.run_tasks, []

    def lose_the_data_once(cluster, fn, tasks, *shared, names, **kwargs):
        calls.append(len(tasks))
        for n, item in enumerate(run_tasks(cluster, fn, tasks, *shared, names=names, **kwargs)):
            if len(calls) == 1 and n == 3:
                raise dist.LostSharedData(f"{names[n]} was cancelled on the cluster")
            yield item

    monkeypatch.setattr(estimate_cluster, "run_tasks", lose_the_data_once)
    acc = estimate_cluster.estimate_values(problem, ESTIMATE, cluster, block=1)
    assert calls == [12, 9]  # the second round starts after the 3 folded episodes
    assert np.array_equal(acc.sums, expected.sums) and acc.episodes == 12
