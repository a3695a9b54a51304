"""The Monte-Carlo engine against the naive float64 reference (tests/naive.py)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from naive import naive_linear_deltas, naive_mlp_deltas

from tvcore.config import EstimateConfig
from tvcore.engine import montecarlo
from tvcore.errors import TvcleanError


def _problem(rng, class_sizes, val_sizes, dim, **options):
    n_classes = len(class_sizes)
    sub_labels = np.repeat(np.arange(n_classes), class_sizes)
    val_labels = rng.permutation(np.repeat(np.arange(n_classes), val_sizes))
    # Non-negative, unnormalised features, like CNN activations.
    sub = rng.gamma(0.8, 0.6, (sub_labels.size, dim))
    val = rng.gamma(0.8, 0.6, (val_labels.size, dim))
    config = EstimateConfig(**options).validate()
    problem = montecarlo.MonteCarloProblem(sub, sub_labels, val, val_labels, n_classes, config)
    return problem, sub, sub_labels, val, val_labels


def _naive_block(problem, sub, sub_labels, val, val_labels, first, stop):
    streams = montecarlo.episode_streams(problem, first, stop)
    # The engine starts from the weights rounded to its precision.
    weights = [w.astype(problem.dtype).astype(np.float64) for w in streams.weights]
    lr = problem.config.lr
    out = []
    for slot in range(stop - first):
        order = streams.orders[slot]
        if problem.config.head == "linear":
            out.append(naive_linear_deltas(sub, sub_labels, val, val_labels, weights[0][slot],
                                           order, lr))
        else:
            out.append(naive_mlp_deltas(sub, sub_labels, val, val_labels, weights[0][slot],
                                        weights[1][slot], order, lr))
    return np.stack(out)


def _max_relative_error(got, ref):
    """Largest difference relative to the largest drop; unvisited (NaN) entries must agree."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    return np.nanmax(np.abs(got - ref)) / np.nanmax(np.abs(ref))


ALL = dict(episode_per_class=-1)  # every subset example in every episode (the original)
CASES = [
    # class sizes, val sizes, dim, options
    ((7, 5, 6), (4, 3, 5), 12, dict(head="linear", lr=0.01, **ALL)),
    ((7, 5, 6), (4, 3, 5), 12, dict(head="linear", lr=0.5)),  # balanced: 5 of each class
    ((9, 3), (2, 6), 20, dict(head="linear", lr=0.05, epochs=3, **ALL)),  # K=2, epochs > 1
    ((9, 3), (2, 6), 20, dict(head="linear", lr=0.3, epochs=2, episode_per_class=4)),
    ((1, 1, 1), (3, 2, 1), 8, dict(head="linear", lr=0.1, **ALL)),  # S=1
    ((10, 2, 6, 1), (5, 5, 2, 3), 15, dict(head="linear", lr=0.02, epochs=2, **ALL)),
    ((6, 4, 5), (3, 4, 2), 10, dict(head="mlp", hidden=7, lr=0.05, **ALL)),
    ((6, 4, 5), (3, 4, 2), 10, dict(head="mlp", hidden=7, lr=0.05, episode_per_class=3)),
    ((8, 3), (4, 2), 16, dict(head="mlp", hidden=12, lr=0.1, epochs=2, **ALL)),  # K=2
    ((1, 1), (2, 1), 6, dict(head="mlp", hidden=5, lr=0.2, **ALL)),  # S=1
]


@pytest.mark.parametrize("sizes, val_sizes, dim, options", CASES)
def test_float64_engine_equals_naive_reference(sizes, val_sizes, dim, options):
    rng = np.random.default_rng(hash((sizes, dim)) % 2**32)
    problem, *arrays = _problem(rng, sizes, val_sizes, dim, dtype="float64", seed=3, **options)
    got = montecarlo.run_episodes(problem, 2, 5)
    ref = _naive_block(problem, *arrays, 2, 5)
    assert got.shape == ref.shape == (3, problem.config.epochs, sum(sizes))
    assert _max_relative_error(got, ref) <= 1e-9


@pytest.mark.parametrize("sizes, val_sizes, dim, options", CASES)
def test_float32_engine_is_within_float32_rounding(sizes, val_sizes, dim, options):
    rng = np.random.default_rng(hash((sizes, dim, 32)) % 2**32)
    problem, *arrays = _problem(rng, sizes, val_sizes, dim, dtype="float32", seed=4, **options)
    got = montecarlo.run_episodes(problem, 0, 3)
    ref = _naive_block(problem, *arrays, 0, 3)
    assert _max_relative_error(got, ref) <= 2e-5


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_blocked_gram_gives_the_same_values(head):
    rng = np.random.default_rng(7)
    options = dict(head=head, hidden=6, lr=0.05, dtype="float64", seed=1)
    problem, *arrays = _problem(rng, (30, 20, 25), (40, 30, 35), 10, **options)
    blocked, *_ = _problem(np.random.default_rng(7), (30, 20, 25), (40, 30, 35), 10, **options)
    blocked.config.memory_budget_mb = 1
    blocked.blocks = [(0, 33), (33, 70), (70, 105)]  # as a tiny budget would split it
    whole = montecarlo.run_episodes(problem, 0, 2)
    split = montecarlo.run_episodes(blocked, 0, 2)
    assert len(problem.blocks) == 1
    assert _max_relative_error(split, whole) <= 1e-12
    assert _max_relative_error(whole, _naive_block(problem, *arrays, 0, 2)) <= 1e-9


def test_memory_budget_splits_the_gram_matrix():
    rng = np.random.default_rng(0)
    problem, *_ = _problem(rng, (2000, 2000), (300, 300), 4, memory_budget_mb=4)
    # 4000 examples x 4 bytes = 16 000 bytes per validation column: 262 columns fit in 4 MiB.
    assert [hi - lo for lo, hi in problem.blocks] == [262, 262, 76]
    assert all(problem.gram(b)[0].shape == (4000, hi - lo)
               for b, (lo, hi) in enumerate(problem.blocks))


def test_values_do_not_depend_on_threads_or_block_size():
    import numba

    rng = np.random.default_rng(11)
    problem, *_ = _problem(rng, (40, 30, 20), (10, 10, 10), 16, episodes=6, lr=0.01)
    numba.set_num_threads(1)
    one = montecarlo.estimate_values(problem, block=1)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    many = montecarlo.estimate_values(problem, block=4)
    np.testing.assert_array_equal(one.mean, many.mean)
    np.testing.assert_array_equal(one.stderr, many.stderr)
    # Balanced episodes: 20 examples of each class (the smallest class's size) per episode.
    labels = problem.sub_labels
    assert [int(one.count[labels == k].sum()) for k in range(3)] == [6 * 20] * 3
    assert one.count[labels == 2].tolist() == [6] * 20


def test_accumulator_mean_stderr_and_count():
    drops = np.random.default_rng(2).normal(size=(5, 2, 4))
    acc = montecarlo.ValueAccumulator(4)
    acc.add(drops[:2])
    acc.add(drops[2:])
    flat = drops.reshape(10, 4)
    np.testing.assert_allclose(acc.mean, flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(acc.stderr, flat.std(axis=0, ddof=1) / np.sqrt(10), rtol=1e-9)
    assert acc.count.tolist() == [10] * 4 and acc.episodes == 5


def test_subset_selection_is_seeded_balanced_and_warns_on_small_classes():
    labels = np.repeat([0, 1, 2], [50, 8, 30])
    val_labels = np.repeat([0, 1, 2], [5, 5, 5])
    config = EstimateConfig(per_class=10, val_per_class=3, seed=5)
    a = montecarlo.select_subset(labels, val_labels, 3, config, class_names=["a", "b", "c"])
    b = montecarlo.select_subset(labels, val_labels, 3, config, class_names=["a", "b", "c"])
    np.testing.assert_array_equal(a.train_rows, b.train_rows)
    assert np.bincount(labels[a.train_rows]).tolist() == [10, 8, 10]
    assert np.bincount(val_labels[a.val_rows]).tolist() == [3, 3, 3]
    assert len(a.warnings) == 1 and "b (8)" in a.warnings[0]
    other = montecarlo.select_subset(labels, val_labels, 3, EstimateConfig(per_class=10, seed=6))
    assert not np.array_equal(a.train_rows, other.train_rows)



def test_subset_warns_when_a_class_has_few_validation_images():
    labels = np.repeat([0, 1, 2], 20)
    val_labels = np.repeat([0, 1, 2], [montecarlo.FEW_VAL, 1, montecarlo.FEW_VAL - 1])
    subset = montecarlo.select_subset(labels, val_labels, 3, EstimateConfig(per_class=20),
                                      class_names=["a", "b", "c"])
    assert len(subset.warnings) == 1
    assert "2 class(es) have fewer than" in subset.warnings[0]
    assert "b (1), c (4)" in subset.warnings[0] and "a (" not in subset.warnings[0]

def test_subset_only_draws_eligible_rows():
    labels = np.repeat([0, 1], [20, 20])
    eligible = np.arange(0, 40, 2)
    subset = montecarlo.select_subset(labels, labels, 2, EstimateConfig(per_class=100),
                                      train_eligible=eligible)
    assert set(subset.train_rows.tolist()) == set(eligible.tolist())


def test_class_without_validation_example_is_an_error():
    labels = np.repeat([0, 1, 2], 5)
    with pytest.raises(TvcleanError, match="class 'c' has no usable validation image"):
        montecarlo.select_subset(labels, np.array([0, 1, 1]), 3, EstimateConfig(),
                                 class_names=["a", "b", "c"])
    rng = np.random.default_rng(0)
    with pytest.raises(TvcleanError, match="class 2 has no validation example"):
        montecarlo.MonteCarloProblem(rng.random((6, 3)), [0, 0, 1, 1, 2, 2], rng.random((2, 3)),
                                     [0, 1], 3, EstimateConfig())


def test_non_finite_features_are_reported_by_path():
    from tvcore.engine.problem import LabeledSplit, check_finite

    features = np.ones((4, 3), np.float32)
    features[2, 1] = np.nan
    split = LabeledSplit(features, np.zeros(4, np.int64), np.ones(4, bool),
                         ["a.png", "x", "b.png", "y"])
    with pytest.raises(TvcleanError, match=r"training features of b.png contain NaN"):
        check_finite(split, "training")
    split.ok[2] = False  # an unreadable image: its row is not used
    check_finite(split, "training")


@pytest.mark.parametrize("lr, why", [(2.0, "the validation loss rose from"),
                                     (1e6, "infinite or NaN"), (1e300, "infinite or NaN")])
def test_diverging_heads_stop_naming_the_episode_and_the_learning_rate(lr, why):
    rng = np.random.default_rng(0)
    problem, *_ = _problem(rng, (20, 20, 20), (5, 5, 5), 8, head="linear", lr=lr, seed=0)
    with pytest.raises(TvcleanError, match=rf"diverged at episode \d+ \(--lr {re.escape(f'{lr:g}')}\)"
                                           rf": .*{why}"):
        montecarlo.estimate_values(problem)


def test_a_sane_learning_rate_does_not_trip_the_divergence_check():
    rng = np.random.default_rng(0)
    problem, *_ = _problem(rng, (20, 20, 20), (5, 5, 5), 8, head="linear", lr=0.05, seed=0,
                           episodes=3)
    assert montecarlo.estimate_values(problem).episodes == 3


@pytest.mark.parametrize("options, message", [
    (dict(lr=0.0), "invalid estimate.lr \\(--lr\\): must be a finite number > 0"),
    (dict(lr=-1.0), "estimate.lr"),
    (dict(episodes=0), "invalid estimate.episodes \\(--episodes\\): must be > 0, got 0"),
    (dict(head="cnn"), "estimate.head .*must be one of linear, mlp"),
    (dict(per_class=0), "estimate.per_class"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(TvcleanError, match=message):
        EstimateConfig(**options).validate()


def test_episode_sizes_balanced_all_and_fixed():
    rng = np.random.default_rng(3)
    sizes = dict()
    for per_class in (0, -1, 25):
        problem, *_ = _problem(rng, (40, 30, 20), (5, 5, 5), 4, episode_per_class=per_class)
        sizes[per_class] = problem.episode_length
        streams = montecarlo.episode_streams(problem, 0, 2)
        counts = np.bincount(problem.sub_labels[streams.orders[0, 0]], minlength=3)
        assert streams.orders.shape == (2, 1, problem.episode_length)
        assert len(set(streams.orders[0, 0].tolist())) == problem.episode_length
        assert counts.tolist() == {0: [20, 20, 20], -1: [40, 30, 20], 25: [25, 25, 20]}[per_class]
    assert sizes == {0: 60, -1: 90, 25: 70}


_COLD_COMPILE = """
from tvcore.engine import kernel_warmup, montecarlo, mc_kernels as mk
from tvcore.config import EstimateConfig
assert kernel_warmup.cache_is_cold()
montecarlo.compile_in_background(EstimateConfig()).join()
assert not kernel_warmup.cache_is_cold()
callees = ["_rank1_loss_drop", "_block_products", "_add_rows", "_softmax_grad",
           "_init_softmax_state", "linear_episode_deltas"]
import json
print(json.dumps([{name: len(getattr(mk, name).signatures) for name in callees},
                  sum(mk._rank1_loss_drop.stats.cache_hits.values())]))
"""


def test_an_empty_cache_is_compiled_on_two_cores_with_the_kernels_own_types(tmp_path):
    """The helper process's compilation of the loss side is found in the cache (a hit), and
    the training side's warm-up types are the kernel's: every callee has one signature."""
    import json
    import os
    import subprocess
    import sys
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    signatures, hits = json.loads(subprocess.run(
        [sys.executable, "-c", _COLD_COMPILE], env=env, capture_output=True, text=True,
        check=True).stdout)
    assert set(signatures.values()) == {1}, signatures
    assert hits == 1  # _rank1_loss_drop loaded from the helper's cache entry


def test_no_helper_process_on_a_warm_cache():
    from tvcore.config import EstimateConfig
    from tvcore.engine import kernel_warmup, montecarlo
    montecarlo.compile_in_background(EstimateConfig()).join()
    assert kernel_warmup.start_loss_side_helper("float32") is None


@pytest.mark.parametrize("shape", [(1500, 300, 256), (37, 11, 5), (512, 64, 64)])
def test_the_gram_product_has_the_same_bits_on_any_thread_count(shape):
    # a threaded BLAS may round by its thread count (OpenBLAS on AVX2: 1e-4 on a Gram
    # matrix), which would make a resumed run differ from a straight one
    import numba
    from threadpoolctl import threadpool_limits

    n, m, d = shape
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, d)).astype(np.float32)
    b = rng.standard_normal((m, d)).astype(np.float32)
    results = []
    before = numba.get_num_threads()
    try:
        for blas, threads in ((None, before), (1, 1), (2, 2), (None, 1)):
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            with threadpool_limits(blas):
                results.append(montecarlo._fixed_product(a, b.T))
    finally:
        numba.set_num_threads(before)
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])
    reference = a.astype(np.float64) @ b.T.astype(np.float64)
    np.testing.assert_allclose(results[0], reference, rtol=1e-5, atol=1e-4 * np.sqrt(d))
