"""The posterior decision (tvcore.engine.posterior): its parts against naive references, and the whole
on synthetic data sets whose truth is known."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tvcore.engine import posterior
from tvcore.engine.posterior import (
    DecisionOptions,
    appearance_share,
    fit_stack,
    grenander_lfdr,
    group_posterior,
    label_decisions,
    label_votes,
    prior_shift,
    top_similar_many,
)
from tvcore.errors import TvcleanError


def _unit(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


# --- similar images -----------------------------------------------------------------------

@pytest.mark.parametrize("q, p, k, with_self", [(1, 5, 1, False), (7, 9, 3, True),
                                                 (2500, 40, 6, False), (1500, 1500, 10, True)])
def test_top_similar_equals_a_full_sort(q, p, k, with_self):
    rng = np.random.default_rng(q + p)
    pool = _unit(rng.normal(size=(p, 8))).astype(np.float32)
    if with_self:
        query, self_rows = pool[:q], np.arange(q)
    else:
        query, self_rows = _unit(rng.normal(size=(q, 8))).astype(np.float32), None
    [(idx, sim)] = top_similar_many(query, [(pool, k, self_rows, None)])
    full = query.astype(np.float64) @ pool.T.astype(np.float64)
    if with_self:
        full[np.arange(q), np.arange(q)] = -np.inf
    expected = np.argsort(-full, axis=1, kind="stable")[:, :k]
    np.testing.assert_allclose(sim, np.take_along_axis(full, expected, 1), atol=1e-6)
    assert (np.diff(sim, axis=1) <= 1e-7).all()  # most similar first
    if with_self:
        assert not (idx == np.arange(q)[:, None]).any()


def test_the_neighbour_kernel_breaks_ties_by_pool_order_and_keeps_the_asked_columns(monkeypatch):
    # duplicated pool rows tie exactly: the lower pool index ranks first; small blocks of
    # query rows (the memory bound) give the same result as one block
    rng = np.random.default_rng(3)
    base = _unit(rng.normal(size=(60, 5))).astype(np.float32)
    pool = np.concatenate([base, base, base[:20]])
    query = _unit(rng.normal(size=(333, 5))).astype(np.float32)
    self_rows = rng.integers(-1, pool.shape[0], query.shape[0])
    monkeypatch.setattr(posterior, "_BLOCK_BYTES", 4 * pool.shape[0] * 7)  # 7 rows a block
    [(idx, sim)] = top_similar_many(query, [(pool, 25, self_rows, 9)])
    full = query.astype(np.float64) @ pool.T.astype(np.float64)
    full[np.arange(query.shape[0])[self_rows >= 0], self_rows[self_rows >= 0]] = -np.inf
    # a stable sort of the float32 similarities: equal values keep the pool order
    expected = np.argsort(-(query @ pool.T).astype(np.float64) + np.where(np.isinf(full), np.inf, 0),
                          axis=1, kind="stable")
    assert idx.shape == (333, 9) and sim.shape == (333, 25) and idx.dtype == np.int32
    np.testing.assert_array_equal(idx, expected[:, :9])
    np.testing.assert_allclose(sim, np.take_along_axis(full, expected[:, :25], 1), atol=1e-6)


def test_one_pass_over_the_query_equals_separate_searches():
    rng = np.random.default_rng(4)
    query = _unit(rng.normal(size=(50, 6))).astype(np.float32)
    pools = [_unit(rng.normal(size=(p, 6))).astype(np.float32) for p in (30, 12)]
    together = top_similar_many(query, [(pools[0], 8, None, 3), (pools[1], 4, None, 0)])
    for (idx, sim), (pool, k, keep) in zip(together, [(pools[0], 8, 3), (pools[1], 4, 0)]):
        [(alone_idx, alone_sim)] = top_similar_many(query, [(pool, k, None, keep)])
        np.testing.assert_array_equal(idx, alone_idx)
        np.testing.assert_array_equal(sim, alone_sim)
    assert together[1][0].shape == (50, 0)


def test_label_votes_are_smoothed_shares():
    votes = label_votes(np.array([[0, 0, 1, 2], [2, 2, 2, 2]]), 3, alpha=1.0)
    np.testing.assert_allclose(votes[0], (np.array([2, 1, 1]) + 1 / 3) / 5)
    np.testing.assert_allclose(votes[1], (np.array([0, 0, 4]) + 1 / 3) / 5)
    np.testing.assert_allclose(votes.sum(axis=1), 1.0)


# --- priors and compositions -----------------------------------------------------------------

def _calibrated(rng, prior, n, separation=2.0):
    """Posteriors under a uniform prior of 1-D Gaussian classes (means 0, s, 2s, ...)."""
    K = prior.size
    z = rng.choice(K, n, p=prior)
    x = rng.normal(separation * z, 1.0)
    loglik = -0.5 * (x[:, None] - separation * np.arange(K)) ** 2
    P = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    return P / P.sum(axis=1, keepdims=True), z


def test_prior_shift_recovers_the_set_prior():
    rng = np.random.default_rng(0)
    prior = np.array([0.6, 0.3, 0.1])
    P, z = _calibrated(rng, prior, 20000)
    Q, estimate = prior_shift(P)
    np.testing.assert_allclose(estimate, prior, atol=0.02)
    np.testing.assert_allclose(Q.sum(axis=1), 1.0)
    # the posterior under the right prior is the Bayes rule: P * prior, normalised
    np.testing.assert_allclose(Q, P * estimate / (P * estimate).sum(axis=1, keepdims=True),
                               atol=1e-6)


def test_group_posterior_recovers_each_groups_composition():
    rng = np.random.default_rng(1)
    compositions = np.array([[0.8, 0.2, 0.0], [0.0, 0.7, 0.3], [0.1, 0.0, 0.9]])
    parts, given = [], []
    for y, comp in enumerate(compositions):
        P, _ = _calibrated(rng, comp, 8000, separation=3.0)
        parts.append(P)
        given.append(np.full(len(P), y))
    P, given = np.concatenate(parts), np.concatenate(given)
    post, estimate = group_posterior(P, given, 3, np.ones(given.size))
    np.testing.assert_allclose(estimate, compositions, atol=0.03)
    np.testing.assert_allclose(post.sum(axis=1), 1.0)


def test_group_posterior_weights_leave_out_rows():
    rng = np.random.default_rng(2)
    P, _ = _calibrated(rng, np.array([0.5, 0.5]), 4000)
    junk = np.tile([[1.0, 0.0]], (4000, 1))  # rows that would drag the estimate to class 0
    both = np.concatenate([P, junk])
    weights = np.concatenate([np.ones(4000), np.zeros(4000)])
    _, with_weights = group_posterior(both, np.zeros(8000, np.int64), 2, weights)
    _, alone = group_posterior(P, np.zeros(4000, np.int64), 2, np.ones(4000))
    np.testing.assert_allclose(with_weights, alone, atol=1e-6)


def test_appearance_share_tells_class_noise_from_appearance_noise():
    rng = np.random.default_rng(3)
    n, K = 3000, 3
    z = rng.integers(0, K, n)
    x = rng.random(n)  # position within the class: appearance
    order = np.lexsort((x, z))  # neighbours: adjacent rows of the same class
    z, x = z[order], x[order]
    neighbours = np.stack([np.clip(np.arange(n) + d, 0, n - 1) for d in (-2, -1, 1, 2)], 1)
    post = np.eye(K)[z] * 0.98 + 0.02 / K  # the class is known well
    flip = rng.random(n) < 0.25
    random_labels = np.where(flip, (z + rng.integers(1, K, n)) % K, z)
    lam_random, _ = appearance_share(post, random_labels, neighbours, K, np.ones(n))
    # appearance noise: the upper quarter of every class looks like the next class
    looks = np.where(x > 0.75, (z + 1) % K, z)
    lam_looks, share = appearance_share(post, looks, neighbours, K, np.ones(n))
    assert lam_random < 0.1
    assert lam_looks > 0.5
    assert share[x > 0.8].mean() > share[x < 0.7].mean()


# --- stacking ---------------------------------------------------------------------------

def test_stack_weights_follow_what_each_view_knows():
    rng = np.random.default_rng(4)
    m, K = 4000, 4
    hint = rng.integers(0, K, m)
    probabilities = np.where(np.eye(K)[hint] > 0, 0.7, 0.1)
    y = np.array([rng.choice(K, p=row) for row in probabilities])  # labels drawn from the view
    informative = np.log(probabilities)
    noise = np.log(rng.dirichlet(np.ones(K), m))
    params = fit_stack([informative, noise], y, K)
    assert params[0] == pytest.approx(1.0, abs=0.15)  # calibrated: weight 1
    assert params[1] < 0.05
    assert np.abs(params[2:]).max() < 0.2  # balanced labels: small biases


# --- local false-discovery rates -----------------------------------------------------------

def _naive_grenander_density(p):
    """Slope of the least concave majorant of the ECDF, from all chords (O(n^3))."""
    xs = np.concatenate([[0.0], np.sort(p), [1.0]])
    ys = np.concatenate([[0.0], np.arange(1, p.size + 1) / p.size, [1.0]])
    grid = xs
    major = np.array([max(ys[a] + (ys[b] - ys[a]) * (g - xs[a]) / (xs[b] - xs[a])
                          if xs[b] > xs[a] else max(ys[a], ys[b])
                          for a in range(xs.size) for b in range(a, xs.size)
                          if xs[a] <= g <= xs[b]) for g in grid])
    density = np.empty(p.size)
    for i in range(1, p.size + 1):  # the segment ending at sorted point i
        j = i - 1
        while j > 0 and xs[j] == xs[i]:
            j -= 1
        density[i - 1] = (major[i] - major[j]) / (xs[i] - xs[j]) if xs[i] > xs[j] else np.inf
    return density


def test_grenander_density_equals_the_naive_concave_majorant():
    rng = np.random.default_rng(5)
    p = np.concatenate([rng.random(25), rng.random(10) ** 4])
    lfdr, pi0 = grenander_lfdr(p)
    density = _naive_grenander_density(p)
    expected = np.minimum(1.0, pi0 / np.maximum(density, 1e-9))
    np.testing.assert_allclose(lfdr[np.argsort(p, kind="stable")], expected, rtol=1e-9)
    assert pi0 == pytest.approx(min(1.0, 2 * np.mean(p > 0.5)))


def test_lfdr_of_uniform_p_values_calls_nothing():
    lfdr, pi0 = grenander_lfdr(np.random.default_rng(6).random(5000))
    assert pi0 > 0.95 and np.mean(lfdr < 0.5) < 0.005


def test_lfdr_finds_the_small_p_values():
    rng = np.random.default_rng(7)
    p = np.concatenate([rng.random(4000), rng.random(1000) * 1e-3])
    lfdr, pi0 = grenander_lfdr(p)
    assert pi0 == pytest.approx(0.8, abs=0.03)
    assert np.mean(lfdr[4000:] < 0.5) > 0.95 and np.mean(lfdr[:4000] < 0.5) < 0.01


# --- the whole decision ----------------------------------------------------------------------

def _data(rng, n_per_class=150, K=4, dim=24, flip=0.2, val_per_class=30, outliers=0,
          spread=3.0):
    centres = rng.normal(size=(K + 1, dim)) * spread
    z = np.repeat(np.arange(K), n_per_class)
    X = centres[z] + rng.normal(size=(z.size, dim))
    given = z.copy()
    flipped = rng.random(z.size) < flip
    given[flipped] = (z[flipped] + rng.integers(1, K, flipped.sum())) % K
    if outliers:  # images of a class outside the label set, with random labels
        X = np.concatenate([X, centres[K] + rng.normal(size=(outliers, dim))])
        given = np.concatenate([given, rng.integers(0, K, outliers)])
        z = np.concatenate([z, np.full(outliers, -1)])
    vz = np.repeat(np.arange(K), val_per_class)
    V = centres[vz] + rng.normal(size=(vz.size, dim))
    return X.astype(np.float32), given, z, V.astype(np.float32), vz


def _f1(flag, truth):
    tp = np.sum(flag & truth)
    return 2 * tp / (flag.sum() + truth.sum())


def test_decisions_find_the_flipped_labels():
    rng = np.random.default_rng(8)
    X, given, z, V, vz = _data(rng)
    result = label_decisions(X, given, V, vz, 4)
    assert _f1(result.flagged, given != z) > 0.9
    assert set(result.decisions) <= {"clean", "dirty"}  # no outliers here
    np.testing.assert_allclose(result.noise_rate, 0.2, atol=0.07)
    # the suggested class of a flagged image is mostly its true class
    dirty = result.decisions == "dirty"
    assert np.mean(result.suggested[dirty] == z[dirty]) > 0.9
    np.testing.assert_allclose(result.class_posterior.sum(axis=1), 1.0)
    assert (result.score < 0).tolist() == result.flagged.tolist()


def test_decisions_call_images_of_no_class_outliers():
    rng = np.random.default_rng(9)
    X, given, z, V, vz = _data(rng, flip=0.1, outliers=60)
    result = label_decisions(X, given, V, vz, 4)
    outlier = result.decisions == "outlier"
    assert np.mean(outlier[z < 0]) > 0.9 and np.mean(outlier[z >= 0]) < 0.01
    # the share comes from p-values against only 30 validation images per class: rough
    assert result.info["outlier_share"] == pytest.approx(60 / z.size, abs=0.1)
    assert (result.suggested[outlier] == -1).all()
    off = label_decisions(X, given, V, vz, 4, options=DecisionOptions(outliers=False))
    assert not (off.decisions == "outlier").any()


def test_relabel_only_when_asked_and_confident():
    rng = np.random.default_rng(10)
    X, given, z, V, vz = _data(rng)
    result = label_decisions(X, given, V, vz, 4,
                             options=DecisionOptions(relabel=True, relabel_confidence=0.9))
    relabel = result.decisions == "relabel"
    assert relabel.sum() > 0.5 * (given != z).sum()
    assert (result.confidence[relabel] >= 0.9).all()
    assert np.mean(result.suggested[relabel] == z[relabel]) > 0.95


def test_value_view_enters_the_stack():
    rng = np.random.default_rng(11)
    X, given, z, V, vz = _data(rng, spread=0.4)  # overlapping classes: the features are weak
    K = 4
    # an informative value net: about +1 for the true class, -1 for the others
    train_values = np.where(np.eye(K)[z] > 0, 1.0, -1.0) + rng.normal(0, 0.5, (z.size, K))
    val_values = np.where(np.eye(K)[vz] > 0, 1.0, -1.0) + rng.normal(0, 0.5, (vz.size, K))
    without = label_decisions(X, given, V, vz, K)
    result = label_decisions(X, given, V, vz, K, train_values=train_values,
                             val_values=val_values, value_scale=np.ones(K))
    assert result.info["view_weights"]["values"] > 0.5
    assert _f1(result.flagged, given != z) > _f1(without.flagged, given != z) + 0.1


def test_reviewed_rows_train_the_trusted_classifier_but_not_the_calibration(monkeypatch):
    # reviewed images are chosen (most uncertain first), not sampled: the stack, the class
    # prior and the outlier reference must come from the validation sample alone
    rng = np.random.default_rng(13)
    X, given, z, V, vz = _data(rng, n_per_class=80)
    rows = np.flatnonzero(z == 0)[:40]  # all of one class: a sample would never look so
    V2, vz2 = np.concatenate([V, X[rows]]), np.concatenate([vz, z[rows]])
    seen: dict = {}

    def spy(name, func, pick):
        def wrapped(*args, **kwargs):
            seen[name] = pick(*args, **kwargs)
            return func(*args, **kwargs)
        monkeypatch.setattr(posterior, name, wrapped)

    spy("fit_trusted", posterior.fit_trusted, lambda val, y, *a, **k: (y, a[-1]))
    spy("fit_stack", posterior.fit_stack, lambda views, labels, K: labels)
    spy("outlier_probability", posterior.outlier_probability, lambda *a: a[4])
    result = label_decisions(X, given, V2, vz2, 4, reviewed=rows.size)
    np.testing.assert_array_equal(seen["fit_trusted"][0], vz)
    np.testing.assert_array_equal(seen["fit_trusted"][1][1], z[rows])  # ...but it learns them
    np.testing.assert_array_equal(seen["fit_stack"], vz)
    np.testing.assert_array_equal(seen["outlier_probability"], vz)
    plain = label_decisions(X, given, V, vz, 4)
    assert not np.array_equal(result.score, plain.score)
    label_decisions(X, given, V2, vz2, 4)  # not said to be reviewed: all of it is the sample
    np.testing.assert_array_equal(seen["fit_stack"], vz2)


def test_the_trusted_classifier_learns_the_extra_images_and_scores_only_the_sample():
    rng = np.random.default_rng(14)
    val = rng.normal(size=(40, 2)) + np.repeat([[-2, 0], [2, 0]], 20, axis=0)
    val_y = np.repeat([0, 1], 20)
    extra = (rng.normal(size=(30, 2)) * 0.3 + [0, 3], np.zeros(30, np.int64))  # class 0 up there
    model, _, cv = posterior.fit_trusted(val, val_y, 2, (10.0,), 3, 0, extra)
    alone, _, cv_alone = posterior.fit_trusted(val, val_y, 2, (10.0,), 3, 0)
    assert cv.shape == cv_alone.shape == (40, 2)
    up = np.array([[0.0, 3.0]])
    assert model.predict_proba(up)[0, 0] > 0.9 > alone.predict_proba(up)[0, 0]


def test_same_seed_same_decisions_and_blocked_input():
    rng = np.random.default_rng(12)
    X, given, z, V, vz = _data(rng, n_per_class=80)
    a = label_decisions(X, given, V, vz, 4, options=DecisionOptions(seed=3, pool=200))
    b = label_decisions(X, given, V, vz, 4, options=DecisionOptions(seed=3, pool=200))
    np.testing.assert_array_equal(a.score, b.score)
    assert a.info["pool"] == 200


def test_user_errors_are_one_line():
    rng = np.random.default_rng(13)
    X, given, z, V, vz = _data(rng, n_per_class=20)
    with pytest.raises(TvcleanError, match="class 3 has no validation image"):
        label_decisions(X, given, V[vz < 3], vz[vz < 3], 4)
    with pytest.raises(TvcleanError, match="training features have 24 dimensions, "
                                           "validation features 5"):
        label_decisions(X, given, V[:, :5], vz, 4)
    # reviewed rows are not the sample: a class only they have has no validation image
    last = np.argsort(vz == 3, kind="stable")  # class 3's images last
    with pytest.raises(TvcleanError, match="class 3 has no validation image"):
        label_decisions(X, given, V[last], vz[last], 4, reviewed=int((vz == 3).sum()))
    with pytest.raises(TvcleanError, match="needs a validation sample besides them"):
        label_decisions(X, given, V, vz, 4, reviewed=vz.size)


def test_a_class_with_one_validation_image_still_works():
    rng = np.random.default_rng(13)
    X, given, z, V, vz = _data(rng, n_per_class=20)
    first = np.flatnonzero(vz == 0)[0]
    keep = np.concatenate([[first], np.flatnonzero(vz > 0)])
    result = label_decisions(X, given, V[keep], vz[keep], 4)
    assert np.isfinite(result.score).all() and result.class_posterior.shape == (X.shape[0], 4)


@pytest.mark.parametrize("val_noise, offset", [(0.4, 0.0), (1.0, 0.8)])
def test_a_validation_set_unlike_the_training_set_makes_no_outliers(val_noise, offset):
    # collected apart (tighter, or shifted): every training image is equally far from it
    rng = np.random.default_rng(21)
    X, given, z, _, vz = _data(rng, flip=0.1)
    centres = rng.normal(size=(4, X.shape[1])) * 3.0
    X = (centres[z] + rng.normal(size=X.shape)).astype(np.float32)
    V = (centres[vz] + offset + val_noise * rng.normal(size=(vz.size, X.shape[1])))
    result = label_decisions(X, given, V.astype(np.float32), vz, 4)
    assert np.mean(result.decisions == "outlier") < 0.01
    assert _f1(result.flagged, given != z) > 0.8


def test_mean_top_fewer_is_the_mean_over_every_left_out_candidate():
    rng = np.random.default_rng(4)
    rows, cols = 50, 12
    sims = -np.sort(-rng.normal(size=(rows, cols)), axis=1)
    ks = rng.integers(1, cols - 1, rows)
    among = rng.integers(cols - 1, 40, rows).astype(float)  # the row's candidates in all
    naive = np.empty(rows)
    for i in range(rows):
        # leave out each of the `among` candidates in turn (those beyond the columns never
        # reach the top k), in float64
        top = sims[i].astype(np.float64)
        outcomes = [np.delete(top, j)[:ks[i]].mean() for j in range(ks[i])]
        outcomes += [top[:ks[i]].mean()] * int(among[i] - ks[i])
        naive[i] = np.mean(outcomes)
    np.testing.assert_allclose(posterior.mean_top_fewer(sims, ks, among), naive, rtol=0, atol=1e-12)
    np.testing.assert_allclose(posterior.mean_top_fewer(sims, ks, np.full(rows, np.inf)),
                               [sims[i, :ks[i]].mean() for i in range(rows)], rtol=0, atol=1e-12)


def _near_outliers(rng, share=0.25):
    """Four classes; a folder's worth of images of no class between two of them, each
    given the nearer class's label (as a classifier would)."""
    X, given, z, V, vz = _data(rng, flip=0.0, n_per_class=200)
    centres = np.stack([X[z == c].mean(axis=0) for c in range(4)])
    n_out = int(share * z.size / (1 - share))
    between = 0.5 * (centres[0] + centres[1]) + rng.normal(size=(n_out, X.shape[1]))
    X = np.concatenate([X, between.astype(np.float32)])
    nearer = np.argmin(((between[:, None, :] - centres[None, :2]) ** 2).sum(axis=2), axis=1)
    return X, np.concatenate([given, nearer]), np.concatenate([z, np.full(n_out, -1)]), V, vz


def test_images_of_no_class_close_to_a_class_are_counted_not_aligned_away():
    # with the reference moved to each folder's median, half a folder lies above it whatever
    # it holds, and the estimated share of images of no class was 0 here
    rng = np.random.default_rng(23)
    X, given, z, V, vz = _near_outliers(rng)
    result = label_decisions(X, given, V, vz, 4)
    assert result.info["outlier_share"] == pytest.approx(np.mean(z < 0), abs=0.1)
    outlier = result.decisions == "outlier"
    assert np.mean(outlier[z < 0]) > 0.6 and np.mean(outlier[z >= 0]) < 0.02


def test_collected_apart_tells_a_moved_validation_set_from_a_contaminated_folder():
    from tvcore.engine.posterior import collected_apart

    rng = np.random.default_rng(5)
    val_y, nearest = np.repeat(np.arange(3), 30), np.repeat(np.arange(3), 300)
    same = rng.normal(size=900)
    assert not collected_apart(rng.normal(size=90), val_y, same, nearest, 3)
    assert collected_apart(rng.normal(size=90) + 1.0, val_y, same, nearest, 3)
    # a quarter of every folder far down in its lower tail: not a moved validation set
    dirty = np.where(rng.random(900) < 0.25, rng.normal(-6.0, 1.0, 900), same)
    assert not collected_apart(rng.normal(size=90), val_y, dirty, nearest, 3)


def test_share_error_is_the_spread_of_storeys_share_without_outliers():
    rng = np.random.default_rng(6)
    n, m = 600, 120
    shares = []
    for _ in range(2000):
        reference = np.sort(rng.normal(size=m))
        p = (1.0 + np.searchsorted(reference, rng.normal(size=n), side="right")) / (m + 1.0)
        shares.append(1.0 - 2.0 * np.mean(p > 0.5))
    assert np.std(shares) == pytest.approx(posterior.share_error(n, m), rel=0.1)


def test_a_share_within_its_noise_is_taken_as_none(monkeypatch):
    X, given, z, V, vz = _data(np.random.default_rng(31), flip=0.1)  # no images of no class
    assert label_decisions(X, given, V, vz, 4).info["outlier_share"] == 0.0
    monkeypatch.setattr(posterior, "_SHARE_Z", 0.0)
    assert label_decisions(X, given, V, vz, 4).info["outlier_share"] > 0.05


def test_aligned_reference_moves_the_null_to_the_training_bulk():
    from tvcore.engine.posterior import aligned_reference

    rng = np.random.default_rng(3)
    reference = rng.normal(5.0, 0.1, 200)
    bulk = np.concatenate([rng.normal(1.0, 2.0, 900), rng.normal(-20.0, 1.0, 100)])
    moved = aligned_reference(reference, bulk)
    assert np.all(np.diff(moved) >= 0)
    assert abs(np.median(moved) - np.median(bulk)) < 1e-9
    assert 1.5 < np.median(np.abs(moved - np.median(moved))) / 0.6745 < 2.8  # MAD of the bulk
    np.testing.assert_array_equal(aligned_reference(reference, bulk[:5]), np.sort(reference))


@pytest.mark.parametrize("n_classes", [2, 3, 30])
def test_one_validation_image_per_class_is_decided_without_an_error(n_classes):
    # no stratified fold exists and a fold may hold a single class: the trusted view's
    # cross-validation must still give every image a probability
    rng = np.random.default_rng(n_classes)
    centres = rng.normal(size=(n_classes, 6)) * 3
    y = np.repeat(np.arange(n_classes), 12)
    X = centres[y] + rng.normal(size=(y.size, 6))
    val_y = np.arange(n_classes)
    val = centres + rng.normal(size=(n_classes, 6)) * 0.1
    given = y.copy()
    given[::6] = (given[::6] + 1) % n_classes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sklearn's small-set warnings are not for the user
        made = label_decisions(X, given, val, val_y, n_classes)
    assert made.score.shape == (y.size,) and np.isfinite(made.score).all()
    assert np.allclose(made.class_posterior.sum(axis=1), 1)
    # the images whose label was changed are, on the whole, scored as the less likely ones
    assert made.score[given != y].mean() < made.score[given == y].mean()



# --- what reviews say about the labels (step 4) ---------------------------------------------

def _ambiguous_data(rng, n_per_class=300, K=3, dim=8, rate=0.2, val_per_class=40):
    """Overlapping classes; the `rate` of images that look most like another class (drawn
    with weight 1 - p(true class), the exact Bayes posterior) get that class, as when
    annotators err on ambiguous images."""
    centres = rng.normal(size=(K, dim)) * 1.2
    z = np.repeat(np.arange(K), n_per_class)
    X = centres[z] + rng.normal(size=(z.size, dim))
    logits = -0.5 * ((X[:, None, :] - centres[None]) ** 2).sum(axis=2)
    P = np.exp(logits - logits.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    weight = 1 - P[np.arange(z.size), z]
    flipped = rng.choice(z.size, int(rate * z.size), replace=False, p=weight / weight.sum())
    others = P[flipped].copy()
    others[np.arange(flipped.size), z[flipped]] = -1
    given = z.copy()
    given[flipped] = others.argmax(axis=1)
    vz = np.repeat(np.arange(K), val_per_class)
    V = centres[vz] + rng.normal(size=(vz.size, dim))
    return X.astype(np.float32), given, z, V.astype(np.float32), vz


def _verdicts(rng, given, z, n):
    rows = np.sort(rng.choice(given.size, n, replace=False))
    return rows, given[rows] == z[rows]


def test_review_doubt_is_the_share_that_explains_the_verdicts():
    rng = np.random.default_rng(21)
    r, K = 400, 3
    P = rng.dirichlet(np.ones(K) * 0.7, size=r)
    given = rng.integers(0, K, r)
    composition = np.full((K, K), 0.05) + np.eye(K) * 0.85
    prior, share = np.full(K, 1 / K), np.zeros(r)
    rows = np.arange(r)
    cc = P * composition[given]
    cc = cc[rows, given] / cc.sum(axis=1)
    q = P[rows, given]  # the uniform prior: Q is P itself
    for truth, expected in ((cc, 0.0), (q, 1.0), (0.5 * cc + 0.5 * q, 0.5)):
        right = rng.random(r) < truth
        doubt = posterior.review_doubt(P, given, right, composition, prior, share)
        assert abs(doubt - expected) < 0.2, (expected, doubt)


def test_review_doubt_stays_zero_where_the_verdicts_cannot_tell():
    # sure class probabilities: class-conditional and appearance models agree on every
    # verdict, and the share is not fitted to noise (s = 0, the rule without reviews)
    rng = np.random.default_rng(26)
    r, K = 300, 3
    z = rng.integers(0, K, r)
    P = np.full((r, K), 1e-6)
    P[np.arange(r), z] = 1.0
    P /= P.sum(axis=1, keepdims=True)
    given = np.where(rng.random(r) < 0.2, (z + 1) % K, z)
    composition = np.full((K, K), 0.1) + np.eye(K) * 0.7
    doubt = posterior.review_doubt(P, given, given == z, composition, np.full(K, 1 / K),
                                   np.zeros(r))
    assert doubt == 0.0


def test_reviews_teach_the_rule_that_labels_err_where_images_are_ambiguous():
    rng = np.random.default_rng(22)
    X, given, z, V, vz = _ambiguous_data(rng)
    noisy = given != z
    plain = label_decisions(X, given, V, vz, 3)
    rows, right = _verdicts(rng, given, z, 80)
    taught = label_decisions(X, given, V, vz, 3, verdicts=(rows, right))
    assert "review_doubt" not in plain.info and taught.info["review_doubt"] > 0.5
    unreviewed = np.setdiff1d(np.arange(given.size), rows)
    assert (_f1(taught.flagged[unreviewed], noisy[unreviewed])
            > _f1(plain.flagged[unreviewed], noisy[unreviewed]) + 0.1)


def test_reviews_of_class_noise_leave_the_label_trusted():
    rng = np.random.default_rng(23)
    X, given, z, V, vz = _data(rng, n_per_class=150)
    plain = label_decisions(X, given, V, vz, 4)
    rows, right = _verdicts(rng, given, z, 80)
    taught = label_decisions(X, given, V, vz, 4, verdicts=(rows, right))
    assert taught.info["review_doubt"] < 0.2
    noisy = given != z
    assert _f1(taught.flagged, noisy) > _f1(plain.flagged, noisy) - 0.02


def test_no_verdicts_change_nothing():
    rng = np.random.default_rng(24)
    X, given, z, V, vz = _ambiguous_data(rng, n_per_class=100)
    plain = label_decisions(X, given, V, vz, 3)
    empty = label_decisions(X, given, V, vz, 3, verdicts=(np.zeros(0, np.int64), np.zeros(0, bool)))
    np.testing.assert_array_equal(plain.score, empty.score)
    assert plain.info == empty.info


def test_the_verdicts_are_judged_by_a_classifier_that_did_not_learn_them(monkeypatch):
    # a kept or relabelled image joins the trusted classifier's training images; its verdict
    # must be explained by one fit on the validation sample alone
    rng = np.random.default_rng(25)
    X, given, z, V, vz = _ambiguous_data(rng, n_per_class=100)
    rows, right = _verdicts(rng, given, z, 40)
    kept = rows[right]
    V2, vz2 = np.concatenate([V, X[kept]]), np.concatenate([vz, z[kept]])
    fitted: list = []
    refit = posterior._refit
    monkeypatch.setattr(posterior, "_refit", lambda val, y, C: fitted.append(y) or refit(val, y, C))
    result = label_decisions(X, given, V2, vz2, 3, reviewed=kept.size, verdicts=(rows, right))
    assert len(fitted) == 1
    np.testing.assert_array_equal(fitted[0], vz)
    assert "review_doubt" in result.info


def test_a_small_reference_is_moved_to_the_training_bulk(monkeypatch):
    # 15 validation images per class of the training images' own distribution: left alone,
    # this seed's reference made a quarter of the images outliers
    X, given, z, V, vz = _data(np.random.default_rng(218), flip=0.1, val_per_class=15)
    assert not (label_decisions(X, given, V, vz, 4).decisions == "outlier").any()
    monkeypatch.setattr(posterior, "_RAW_REFERENCE", 0)
    assert np.mean(label_decisions(X, given, V, vz, 4).decisions == "outlier") > 0.1
