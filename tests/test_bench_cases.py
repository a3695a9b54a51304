"""Quality-suite helpers: the noise families (on a toy data set) and the validation-based peers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed

import benchmarks.cases as cases
from benchmarks.bench_quality import worst_class
from benchmarks.datasets import FeatureData
from benchmarks.peers import knn_validation, simifeat_vote, trusted_classifier

K, PER_CLASS, DIM = 4, 60, 6


def _toy(name="toy"):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(K, DIM)) * 4

    def split(n):
        y = np.repeat(np.arange(K), n)
        return (centres[y] + rng.normal(size=(y.size, DIM))).astype(np.float32), y

    (tx, ty), (vx, vy), (sx, sy) = split(PER_CLASS), split(10), split(5)
    return FeatureData(name, tx, ty, vx, vy, sx, sy, [f"c{k}" for k in range(K)], "0" * 64)


@pytest.fixture
def toy(monkeypatch):
    data = _toy()
    monkeypatch.setattr(cases, "load_features", lambda name: data)
    monkeypatch.setattr(cases, "confusable_pairs", lambda name, classes=None:
                        (np.arange(K if classes is None else len(classes)) + 1)
                        % (K if classes is None else len(classes)))
    # a weak other representation: one feature plus noise
    pixels = np.concatenate([data.train_X[:, :1], 3 * np.random.default_rng(1).normal(
        size=(data.train_y.size, 4))], axis=1)
    monkeypatch.setattr(cases, "raw_pixels", lambda name, block: pixels)
    return data


def test_symmetric_and_pair_noise_rates(toy):
    case = cases.symmetric("toy", 0, rate=0.25)
    assert case.noisy.sum() == round(0.25 * K * PER_CLASS)
    np.testing.assert_array_equal(case.true, toy.train_y)
    case = cases.pair("toy", 0, rate=0.5)
    for k in range(K):
        flipped = (case.true == k) & case.noisy
        assert flipped.sum() == PER_CLASS // 2 and set(case.given[flipped]) == {(k + 1) % K}


def test_labeller_labels_come_from_a_classifier_of_the_pixels(toy):
    case = cases.labeller("toy", 3, fit_per_class=2, model="1nn")
    assert case.noisy.any()
    again = cases.labeller("toy", 3, fit_per_class=2, model="1nn")
    np.testing.assert_array_equal(again.given, case.given)
    half = cases.labeller("toy", 3, fit_per_class=2, model="1nn", fraction=0.5)
    assert half.noisy.sum() < case.noisy.sum()
    # the images it was fit on get their true label
    assert not case.noisy[case.info["labeller_fit_rows"]].any()


def test_openset_outliers_have_no_class_and_in_set_labels(toy):
    case = cases.openset("toy", 0, held_out=1, rate=0.2, labelling="random")
    assert case.n_classes == K - 1
    assert case.outlier.sum() == round(0.2 * (K - 1) * PER_CLASS)
    assert case.given.size == (K - 1) * PER_CLASS
    assert case.given.min() >= 0 and case.given.max() < K - 1
    assert (case.noisy == case.outlier).all()  # no other noise asked for
    assert set(np.unique(case.val_y)) == set(range(K - 1)) and case.test_y.max() < K - 1
    near = cases.openset("toy", 0, held_out=1, rate=0.2, labelling="nearest")
    assert near.outlier.sum() == case.outlier.sum()


def test_longtail_sizes_and_fewval(toy):
    case = cases.longtail("toy", 0, ratio=6.0, kind="symmetric", rate=0.0)
    sizes = np.sort(np.bincount(case.true, minlength=K))
    assert sizes[-1] == PER_CLASS and sizes[0] == round(PER_CLASS / 6)
    few = cases.fewval("toy", 0, per_class=3, kind="symmetric", rate=0.1)
    assert (np.bincount(few.val_y) == 3).all()


def test_uneven_validation_sizes_fall_from_all_to_the_fewest(toy):
    case = cases.valuneven("toy", 1, fewest=2, kind="symmetric", rate=0.2)
    sizes = np.bincount(case.val_y, minlength=K)
    assert sorted(sizes) == sorted(case.info["val_sizes"])
    assert sizes.max() == 10 and sizes.min() == 2
    assert len(set(sizes)) == K  # strictly falling in the seeded order
    assert case.noisy.sum() == round(0.2 * K * PER_CLASS)
    assert case.val_X.shape[0] == sizes.sum()
    # validation images are a subset of the data set's own, labels kept
    for row, label in zip(case.val_X, case.val_y):
        match = np.flatnonzero((toy.val_X == row).all(axis=1))
        assert match.size == 1 and toy.val_y[match[0]] == label


def test_a_small_training_set_has_the_asked_images_per_class(toy):
    case = cases.small("toy", 0, per_class=7, kind="pair", rate=0.5)
    np.testing.assert_array_equal(np.bincount(case.true, minlength=K), np.full(K, 7))
    flipped = case.noisy
    assert flipped.any() and (case.given[flipped] == (case.true[flipped] + 1) % K).all()
    assert case.val_y.size == toy.val_y.size


def test_uneven_noise_leaves_the_clean_classes_untouched(toy):
    case = cases.uneven("toy", 2, clean_share=0.5, kind="symmetric", rate=0.5)
    clean = case.info["clean_classes"]
    assert len(clean) == K // 2
    in_clean = np.isin(case.true, clean)
    assert not case.noisy[in_clean].any()
    for k in set(range(K)) - set(clean):
        assert case.noisy[case.true == k].mean() == pytest.approx(0.5, abs=0.2)
    pair = cases.uneven("toy", 2, clean_share=0.25, kind="pair", rate=0.5)
    flipped = pair.noisy
    assert flipped.any() and (pair.given[flipped] == (pair.true[flipped] + 1) % K).all()
    assert not flipped[np.isin(pair.true, pair.info["clean_classes"])].any()


def test_catch_all_noise_moves_a_share_of_every_other_class_to_one(toy):
    case = cases.catchall("toy", 3, rate=0.3)
    target = case.info["catch_all_class"]
    assert (case.given[case.noisy] == target).all()
    assert not case.noisy[case.true == target].any()
    for k in set(range(K)) - {target}:
        assert case.noisy[case.true == k].mean() == pytest.approx(0.3, abs=0.15)


def test_ambiguous_noise_gives_the_least_certain_images_their_likeliest_other_class(
        toy, monkeypatch):
    rng = np.random.default_rng(5)
    probabilities = rng.dirichlet(np.full(K, 0.3), size=toy.train_y.size)
    monkeypatch.setattr(cases, "clean_probabilities", lambda name: probabilities)
    case = cases.ambiguous("toy", 2, rate=0.25)
    rows = np.arange(case.true.size)
    assert case.noisy.sum() == round(0.25 * rows.size)
    others = probabilities.copy()
    others[rows, case.true] = -1
    np.testing.assert_array_equal(case.given[case.noisy], others.argmax(axis=1)[case.noisy])
    certainty = probabilities[rows, case.true]
    assert certainty[case.noisy].mean() < certainty[~case.noisy].mean() - 0.1


def test_worst_class_ratio():
    class Stub:
        n_classes, class_names = 2, ["a", "b"]
        given = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
        noisy = np.zeros(14, bool)
    flagged = np.zeros(14, bool)
    flagged[[0, 4]] = True  # a: 25% set aside with no noise, b: 10%
    ratio, text = worst_class(Stub, flagged)
    assert ratio == pytest.approx(2.5) and text.startswith("a: 25% set aside")


def test_validation_peers_flag_a_label_that_contradicts_the_validation_set():
    data = _toy()
    given = data.train_y.copy()
    given[3] = 2
    for peer in (trusted_classifier, knn_validation, simifeat_vote):
        dirty, values = peer(data.train_X, given, data.val_X, data.val_y)
        assert dirty[3] and values.argmin() == 3, peer.__name__
        assert dirty.sum() <= 3, peer.__name__
