"""Quality-benchmark helpers: exact KNN-Shapley vs brute force, label noise, in-memory features."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

from benchmarks.datasets import (
    FeatureData,
    image_features,
    most_confusable,
    noisy_labels,
    pair_noise,
)
from benchmarks.peers import knn_shapley, knn_shapley_values
from tvcore.config import Config, ExtractConfig
from tvcore.errors import TvcleanError
from tvcore.io.modelzoo import resolve_model
from tvcore.rundir import load_features
from tvcore.stages.demo import load_archive
from tvcore.stages.extract import extract

# --- KNN-Shapley ---------------------------------------------------------------------------

def naive_knn_utility(subset, train_X, train_y, x, y, k):
    """(1/k) * right labels among the min(k, |subset|) nearest members of subset."""
    if not subset:
        return 0.0
    distance = {i: float(np.sum((train_X[i] - x) ** 2)) for i in subset}
    nearest = sorted(subset, key=lambda i: (distance[i], i))[:k]
    return sum(train_y[i] == y for i in nearest) / k


def naive_shapley(train_X, train_y, val_X, val_y, k):
    """Shapley values by enumerating every order of the training points."""
    n = len(train_y)
    values = np.zeros(n)
    for order in itertools.permutations(range(n)):
        for x, y in zip(val_X, val_y):
            before = 0.0
            for position, i in enumerate(order):
                after = naive_knn_utility(list(order[:position + 1]), train_X, train_y, x, y, k)
                values[i] += after - before
                before = after
    return values / (math.factorial(n) * len(val_y))


@pytest.mark.parametrize("n, m, k, n_classes, seed", [
    (1, 1, 1, 2, 0),  # one training point
    (4, 3, 1, 2, 1),  # 1-NN
    (5, 4, 2, 3, 2),
    (6, 3, 3, 2, 3),
    (6, 5, 10, 3, 4),  # k larger than the training set
    (7, 2, 4, 1, 5),  # one class: every point helps
])
def test_knn_shapley_equals_brute_force(n, m, k, n_classes, seed):
    rng = np.random.default_rng(seed)
    train_X, val_X = rng.normal(size=(n, 3)), rng.normal(size=(m, 3))
    train_y, val_y = rng.integers(0, n_classes, n), rng.integers(0, n_classes, m)
    exact = knn_shapley_values(train_X, train_y, val_X, val_y, k)
    np.testing.assert_allclose(exact, naive_shapley(train_X, train_y, val_X, val_y, k),
                               rtol=0, atol=1e-12)


def test_knn_shapley_sums_to_the_utility_of_the_whole_set():
    rng = np.random.default_rng(7)
    train_X, val_X = rng.normal(size=(300, 5)), rng.normal(size=(40, 5))
    train_y, val_y = rng.integers(0, 4, 300), rng.integers(0, 4, 40)
    values = knn_shapley_values(train_X, train_y, val_X, val_y, k=10)
    whole = np.mean([naive_knn_utility(list(range(300)), train_X, train_y, x, y, 10)
                     for x, y in zip(val_X, val_y)])
    assert values.sum() == pytest.approx(whole, abs=1e-12)


def test_knn_shapley_blocks_give_the_same_values(monkeypatch):
    import benchmarks.peers as peers
    rng = np.random.default_rng(8)
    train_X, val_X = rng.normal(size=(50, 4)), rng.normal(size=(23, 4))
    train_y, val_y = rng.integers(0, 3, 50), rng.integers(0, 3, 23)
    whole = knn_shapley_values(train_X, train_y, val_X, val_y, k=5)
    monkeypatch.setattr(peers, "_VAL_BLOCK", 4)
    np.testing.assert_allclose(knn_shapley_values(train_X, train_y, val_X, val_y, k=5), whole,
                               rtol=0, atol=1e-15)


def test_knn_shapley_flags_a_mislabeled_point_in_a_clear_cluster():
    rng = np.random.default_rng(9)
    centres = np.array([[0.0, 0.0], [10.0, 0.0]])
    train_y = np.repeat([0, 1], 20)
    train_X = centres[train_y] + rng.normal(size=(40, 2))
    val_y = np.repeat([0, 1], 10)
    val_X = centres[val_y] + rng.normal(size=(20, 2))
    noisy = train_y.copy()
    noisy[3] = 1
    dirty, values = knn_shapley(train_X, noisy, val_X, val_y, k=5)
    assert values[3] < 0 and dirty[3]
    assert values.argmin() == 3
    assert not dirty[np.arange(40) != 3].any()


# --- label noise ---------------------------------------------------------------------------

def _data(labels, n_classes):
    empty = np.zeros((0, 2), np.float32)
    return FeatureData("toy", np.zeros((labels.size, 2), np.float32), labels, empty,
                       np.zeros(0, np.int64), empty, np.zeros(0, np.int64),
                       [str(k) for k in range(n_classes)], "0" * 64)


def test_symmetric_noise_flips_the_stated_fraction_to_other_classes():
    labels = np.repeat(np.arange(5), 200)
    given, flipped = noisy_labels(_data(labels, 5), "sym40", seed=3)
    assert flipped.sum() == 400
    np.testing.assert_array_equal(given != labels, flipped)
    # Uniform over the 4 other classes: every (true, given) pair occurs.
    pairs = {(int(t), int(g)) for t, g in zip(labels[flipped], given[flipped])}
    assert len(pairs) == 5 * 4
    again, _ = noisy_labels(_data(labels, 5), "sym40", seed=3)
    np.testing.assert_array_equal(again, given)
    other, _ = noisy_labels(_data(labels, 5), "sym40", seed=4)
    assert (other != given).any()


def test_pair_noise_flips_the_rate_of_every_class_to_its_pair():
    labels = np.repeat(np.arange(4), [100, 50, 30, 21])
    pairs = np.array([1, 0, 3, 0])
    given, flipped = pair_noise(labels, 0.3, pairs, seed=0)
    for k, size in enumerate([100, 50, 30, 21]):
        in_class = labels == k
        assert flipped[in_class].sum() == round(0.3 * size)
        assert set(given[in_class & flipped]) == {pairs[k]}
        assert (given[in_class & ~flipped] == k).all()
    again, _ = pair_noise(labels, 0.3, pairs, seed=0)
    np.testing.assert_array_equal(again, given)


def test_most_confusable_reads_the_confusion_off_the_predictions():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    # Class 0 is predicted as 2 twice; class 1 once as 0; class 2 always right,
    # so its pair is decided by the probability mass (class 1 over class 0).
    predicted = np.array([2, 2, 0, 0, 1, 2, 2, 2])
    probabilities = np.full((8, 3), 0.1)
    probabilities[np.arange(8), predicted] = 0.8
    probabilities[5:, 1] = 0.15
    probabilities[5:, 0] = 0.05
    np.testing.assert_array_equal(most_confusable(probabilities, labels, 3), [2, 0, 1])


def test_unknown_noise_is_a_clear_error():
    with pytest.raises(TvcleanError, match="unknown noise 'sym99'; known: sym20, sym40, pair30"):
        noisy_labels(_data(np.arange(4), 4), "sym99")


# --- in-memory features == `tvclean extract` of the same image as PNG ---------------------

@pytest.mark.slow
def test_in_memory_features_equal_extract_of_png_files(tmp_path):
    from PIL import Image

    archive = load_archive()
    rows = [0, 300, 600, 900]  # four images of different classes
    images = archive["train_images"][rows]
    for split, some in (("train", images), ("val", archive["val_images"][:2])):
        for i, image in enumerate(some):
            folder = tmp_path / split / f"class{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(folder / f"img{i}.png")
    extract(tmp_path / "train", tmp_path / "val", tmp_path / "run",
            Config(extract=ExtractConfig(batch_size=2, threads=1)), progress=False)
    stored = load_features(tmp_path / "run").train
    in_memory = image_features(images, resolve_model("efficientnet-lite0"), batch_size=3,
                               progress=False)
    for row, path in enumerate(stored.paths):
        i = int(path.rsplit("img", 1)[1].split(".")[0])
        np.testing.assert_allclose(in_memory[i], stored.features[row], rtol=1e-6, atol=1e-6)
    assert np.abs(in_memory).max() > 0.1  # real activations, not zeros


# --- the harness ---------------------------------------------------------------------------

def test_original_preset_is_the_original_algorithm():
    config = Config.preset("original")
    est = config.estimate
    assert (est.head, est.lr, est.episodes, est.epochs) == ("linear", 1e-3, 100, 1)
    net = config.valuenet
    assert (net.hidden, net.dropout, net.lr, net.loss, net.target_scale) == (100, 0.5, 1e-3, "mae",
                                                                           "none")
    assert (config.filter.method, config.filter.threshold) == ("threshold", 0.0)
    assert (est.episode_per_class, est.feature_norm) == (-1, "none")  # whole subset, raw
    assert (config.filter.confidence_z, config.filter.decide_by) == (0.0, "valuenet")


def test_unknown_method_is_a_clear_error():
    from benchmarks.bench_quality import run_case

    with pytest.raises(TvcleanError, match="--methods: unknown magic; known: tvclean, threshold"):
        run_case("d-sym20", 0, ["magic"])


def test_cli_names_an_unknown_case():
    from benchmarks.bench_quality import main

    with pytest.raises(SystemExit, match="--cases: unknown sym5; known: f-sym20, f-sym40"):
        main(["--cases", "sym5"])
