"""Training-ValueNet regressors: maths against naive references, training behaviour, files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tvcore.config import ValueNetConfig
from tvcore.engine.valuenet import (
    BETA1,
    BETA2,
    EPSILON,
    MOMENT_FLUSH,
    ValueNet,
    adam_update,
    can_fit,
    dropout_mask,
    fit_valuenet,
    fit_valuenets,
    forward,
    glorot_uniform,
    load_valuenets,
    loss_and_grads,
    min_examples_needed,
    predict_many,
    save_valuenets,
)
from tvcore.errors import TvcleanError

# ----------------------------------------------------------------------------- naive references

def naive_predictions(w1, b1, w2, b2, X, mask=None):
    """Per example, per unit loops in float64."""
    preds = []
    for r in range(X.shape[0]):
        out = float(b2[0])
        for j in range(w1.shape[1]):
            pre = float(b1[j]) + sum(float(X[r, i]) * float(w1[i, j]) for i in range(X.shape[1]))
            act = max(pre, 0.0) * (1.0 if mask is None else float(mask[r, j]))
            out += act * float(w2[j, 0])
        preds.append(out)
    return np.array(preds)


def naive_loss(params, X, targets, loss, mask=None):
    err = naive_predictions(*params, X, mask) - targets
    return float(np.mean(np.abs(err)) if loss == "mae" else np.mean(err ** 2))


def naive_adam(params, grads_per_step, lr):
    """Keras Adam, written out: alpha_t = lr sqrt(1 - b2^t) / (1 - b1^t), eps outside the sqrt."""
    w, m, v = params.astype(np.float64), np.zeros(params.shape), np.zeros(params.shape)
    for t, g in enumerate(grads_per_step, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w - lr * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-7)
    return w, m, v


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def small_params(rng, dim=7, hidden=5):
    return (rng.standard_normal((dim, hidden)), rng.standard_normal(hidden) * 0.3,
            rng.standard_normal((hidden, 1)), rng.standard_normal(1) * 0.3)


def nonlinear_task(rng, n, dim=32, scale=1e-3):
    """Non-negative features and a non-linear target of the given scale."""
    X = np.maximum(rng.standard_normal((n, dim)), 0).astype(np.float32)
    u, v = rng.standard_normal((2, dim)) / np.sqrt(dim)
    y = scale * (np.tanh(2 * X @ u) + 0.5 * np.abs(X @ v) - 0.3)
    return X, y


# ----------------------------------------------------------------------------- maths

def test_forward_matches_naive_loops():
    rng = np.random.default_rng(1)
    params = small_params(rng)
    X = np.abs(rng.standard_normal((6, 7)))
    mask = dropout_mask(rng, (6, 5), 0.5, dtype=np.float64)
    for m in (None, mask):
        np.testing.assert_allclose(forward(*params, X, m)[2], naive_predictions(*params, X, m),
                                   rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss", ["mae", "mse"])
@pytest.mark.parametrize("use_mask", [False, True])
def test_gradients_match_finite_differences(loss, use_mask):
    rng = np.random.default_rng(2)
    params = small_params(rng)
    X = np.abs(rng.standard_normal((6, 7)))
    targets = rng.standard_normal(6)
    mask = dropout_mask(rng, (6, 5), 0.5, dtype=np.float64) if use_mask else None
    pre, _, pred = forward(*params, X, mask)
    # central differences are only valid away from the ReLU and |err| kinks
    assert np.abs(pre).min() > 1e-3 and np.abs(pred - targets).min() > 1e-3
    value, grads = loss_and_grads(*params, X, targets, loss, mask)
    assert value == pytest.approx(naive_loss(params, X, targets, loss, mask), rel=1e-12)
    out = tuple(np.full_like(p, np.nan) for p in params)
    _, written = loss_and_grads(*params, X, targets, loss, mask, out=out)
    for o, w, g in zip(out, written, grads):
        assert w is o
        np.testing.assert_array_equal(o, g)
    h = 1e-6
    for p, g in zip(params, grads):
        assert g.shape == p.shape
        numeric = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            saved = p[idx]
            p[idx] = saved + h
            up = naive_loss(params, X, targets, loss, mask)
            p[idx] = saved - h
            down = naive_loss(params, X, targets, loss, mask)
            p[idx] = saved
            numeric[idx] = (up - down) / (2 * h)
        np.testing.assert_allclose(g, numeric, rtol=1e-6, atol=1e-8)
    if use_mask:  # dropped units pass no gradient to their incoming weights
        dropped = mask == 0
        assert dropped.any()
        np.testing.assert_array_equal(np.sign(np.abs(grads[1])), np.sign(np.abs(
            ((pre > 0) * ~dropped).sum(0))))


# float32: 1 - float32(0.999) is 1.3e-5 off 0.001, exactly as in Keras' float32 Adam
@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-12, 1e-14), (np.float32, 3e-5, 1e-6)])
def test_adam_matches_hand_written_reference(dtype, rtol, atol):
    rng = np.random.default_rng(3)
    start = rng.standard_normal(50)
    grads = [rng.standard_normal(50) * s for s in (1.0, 0.1, 3.0)]
    params, m, v = start.astype(dtype), np.zeros(50, dtype), np.zeros(50, dtype)
    for step, g in enumerate(grads, start=1):
        adam_update(params, g.astype(dtype), m, v, 0.01, step, BETA1, BETA2, EPSILON, MOMENT_FLUSH)
    ref_w, ref_m, ref_v = naive_adam(start, grads, 0.01)
    np.testing.assert_allclose(params, ref_w, rtol=rtol, atol=atol)  # atol: the weights are O(1)
    np.testing.assert_allclose(m, ref_m, rtol=rtol)
    np.testing.assert_allclose(v, ref_v, rtol=rtol)
    assert not np.allclose(params, start, rtol=1e-3)  # the steps did move the weights


def test_adam_flushes_negligible_moments_to_zero():
    f = MOMENT_FLUSH
    params = np.ones(3, np.float32)
    m = np.array([f * 1.05, f * 3, 1.0], np.float32)
    v = np.array([1.0, 1.0, f * 1.0005], np.float32)
    adam_update(params, np.zeros(3, np.float32), m, v, 1e-3, 5, BETA1, BETA2, EPSILON, f)
    np.testing.assert_array_equal(m, [0, np.float32(0.9) * np.float32(f * 3), np.float32(0.9)])
    assert v[2] == 0 and v[0] == pytest.approx(0.999)
    # what the flush drops could never have moved a float32 weight of 1e-6 or more
    assert 1e-3 * f / EPSILON < np.spacing(np.float32(1e-6)) * 1e-10


def test_dropout_mask_is_inverted_dropout():
    mask = dropout_mask(np.random.default_rng(4), (200, 100), 0.5)
    assert set(np.unique(mask)) == {0.0, 2.0}
    assert abs((mask == 0).mean() - 0.5) < 0.01
    assert dropout_mask(np.random.default_rng(4), (2, 3), 0.0) is None


def test_glorot_uniform_limits():
    w = glorot_uniform(np.random.default_rng(5), 1280, 100)
    limit = np.sqrt(6 / 1380)
    assert w.shape == (1280, 100) and np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.99 * limit and abs(w.mean()) < 0.01 * limit


# ----------------------------------------------------------------------------- training

def test_scaled_targets_fit_a_nonlinear_function_and_raw_targets_do_worse():
    rng = np.random.default_rng(6)
    X, y = nonlinear_task(rng, 1500)
    Xtr, ytr, Xte, yte = X[:1000], y[:1000], X[1000:], y[1000:]
    scaled = fit_valuenet(Xtr, ytr, ValueNetConfig(), seed=0)
    raw = fit_valuenet(Xtr, ytr, ValueNetConfig(target_scale="none"), seed=0)
    assert scaled.target_scale == pytest.approx(np.abs(ytr).mean()) and raw.target_scale == 1.0
    rho_scaled, rho_raw = spearman(scaled.predict(Xte), yte), spearman(raw.predict(Xte), yte)
    assert rho_scaled > 0.9
    # measured over 6 tasks: scaled 0.95-0.98, raw 0.17-0.37
    assert rho_raw < rho_scaled - 0.3, (rho_scaled, rho_raw)
    # predictions are in the original units
    assert np.abs(scaled.predict(Xte) - yte).mean() < 0.5 * np.abs(yte - yte.mean()).mean()


def test_mse_loss_also_fits():
    rng = np.random.default_rng(7)
    X, y = nonlinear_task(rng, 1500)
    net = fit_valuenet(X[:1000], y[:1000], ValueNetConfig(loss="mse"), seed=0)
    assert spearman(net.predict(X[1000:]), y[1000:]) > 0.9


def overfitting_task():
    """Each feature vector twice, with targets 3 + 1 and 3 - 1: the net first learns the
    shared offset (validation loss falls), then memorises the training copy of pairs
    split across the two splits, moving away from the validation copy (it rises).
    Measured over 10 seeds: the last epoch is 8-47% worse than the best."""
    rng = np.random.default_rng(8)
    base = np.abs(rng.standard_normal((100, 300))).astype(np.float32)
    X, y = np.concatenate([base, base]), np.concatenate([np.full(100, 4.0), np.full(100, 2.0)])
    config = ValueNetConfig(dropout=0.0, loss="mse", lr=0.003, patience=5, max_epochs=100)
    return X, y, config


def test_early_stopping_restores_the_best_epoch():
    X, y, config = overfitting_task()
    net = fit_valuenet(X, y, config, seed=0)
    epochs = len(net.val_loss)
    assert epochs == net.best_epoch + config.patience + 1 < config.max_epochs
    assert net.best_epoch == int(np.argmin(net.val_loss))
    assert net.best_epoch > 0 and net.val_loss[0] > net.val_loss[net.best_epoch]  # it fell,
    assert net.val_loss[-1] > net.val_loss[net.best_epoch] * 1.03  # then really did get worse
    assert net.train_loss[-1] < net.train_loss[net.best_epoch]  # while fitting the train split better
    rows = net.val_rows
    assert len(rows) == 20 and len(np.unique(rows)) == 20
    kept = np.mean((net.predict(X[rows]) - y[rows]) ** 2) / net.target_scale ** 2
    assert kept == pytest.approx(net.val_loss[net.best_epoch], rel=1e-4)
    assert kept != pytest.approx(net.val_loss[-1], rel=1e-3)  # not the last epoch's weights


def test_training_runs_max_epochs_without_early_stop():
    rng = np.random.default_rng(9)
    X, y = nonlinear_task(rng, 100, dim=8)
    net = fit_valuenet(X, y, ValueNetConfig(max_epochs=3, patience=50), seed=0)
    assert len(net.val_loss) == len(net.train_loss) == 3
    assert net.best_epoch == int(np.argmin(net.val_loss))


def test_same_seed_same_net_other_seed_other_net():
    rng = np.random.default_rng(10)
    X, y = nonlinear_task(rng, 300, dim=16)
    config = ValueNetConfig(max_epochs=15)
    a, b = fit_valuenet(X, y, config, seed=3), fit_valuenet(X, y, config, seed=3)
    for field in dataclasses.fields(ValueNet):
        np.testing.assert_array_equal(getattr(a, field.name), getattr(b, field.name))
    c = fit_valuenet(X, y, config, seed=4)
    assert not np.array_equal(a.w1, c.w1) and not np.array_equal(a.val_rows, c.val_rows)


def test_global_random_state_does_not_matter():
    rng = np.random.default_rng(11)
    X, y = nonlinear_task(rng, 200, dim=8)
    config = ValueNetConfig(max_epochs=5)
    np.random.seed(1)
    a = fit_valuenet(X, y, config, seed=0)
    np.random.seed(2)
    np.random.random(10)
    b = fit_valuenet(X, y, config, seed=0)
    np.testing.assert_array_equal(a.w1, b.w1)


def test_fit_valuenets_is_independent_of_threads():
    rng = np.random.default_rng(12)
    data = {k: nonlinear_task(rng, 120, dim=8) for k in (0, 2, 5)}
    config = ValueNetConfig(max_epochs=8, seed=7)
    one, two = fit_valuenets(data, config, threads=1), fit_valuenets(data, config, threads=2)
    assert sorted(one) == sorted(two) == [0, 2, 5]
    for k in data:
        np.testing.assert_array_equal(one[k].w1, two[k].w1)
        np.testing.assert_array_equal(one[k].val_loss, two[k].val_loss)
    alone = fit_valuenet(*data[2], config, seed=(7, 2))
    np.testing.assert_array_equal(alone.w1, one[2].w1)
    assert not np.array_equal(one[0].w1, one[2].w1)


def test_zero_targets_keep_unit_scale():
    X = np.abs(np.random.default_rng(13).standard_normal((50, 4)))
    net = fit_valuenet(X, np.zeros(50), ValueNetConfig(max_epochs=3), seed=0)
    assert net.target_scale == 1.0 and np.isfinite(net.predict(X)).all()


# ----------------------------------------------------------------------------- predict

def test_predict_in_batches_equals_predict_at_once(tmp_path):
    rng = np.random.default_rng(14)
    X, y = nonlinear_task(rng, 300, dim=16)
    net = fit_valuenet(X, y, ValueNetConfig(max_epochs=5), seed=0)
    whole = net.predict(X, batch_rows=len(X))
    assert whole.dtype == np.float64 and whole.shape == (300,)
    # BLAS may take another float32 path for another row count: equal to rounding
    atol = 1e-5 * np.abs(whole).max()
    np.testing.assert_allclose(net.predict(X, batch_rows=7), whole, rtol=1e-5, atol=atol)
    np.save(tmp_path / "x.npy", X)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.testing.assert_allclose(net.predict(mapped, batch_rows=64), whole, rtol=1e-5, atol=atol)
    naive = net.target_scale * naive_predictions(net.w1, net.b1, net.w2, net.b2, X[:5])
    np.testing.assert_allclose(whole[:5], naive, rtol=1e-5)
    assert net.predict(X[:0]).shape == (0,)


def test_many_nets_at_once_equal_each_net_on_its_own():
    rng = np.random.default_rng(16)
    X, y = nonlinear_task(rng, 200, dim=12)
    nets = [fit_valuenet(X, y * (k + 1), ValueNetConfig(max_epochs=3), seed=k) for k in range(4)]
    alone = np.column_stack([net.predict(X) for net in nets])
    atol = 1e-5 * np.abs(alone).max()
    # small chunks of rows (the memory bound) and one chunk give the same values
    for batch_bytes in (4 * 400 * 9, 2**26):
        together = predict_many(nets, X, batch_bytes=batch_bytes)
        assert together.shape == (200, 4) and together.dtype == np.float64
        np.testing.assert_allclose(together, alone, rtol=1e-5, atol=atol)
    naive = [net.target_scale * naive_predictions(net.w1, net.b1, net.w2, net.b2, X[:5])
             for net in nets]
    np.testing.assert_allclose(predict_many(nets, X[:5]), np.column_stack(naive), rtol=1e-5)
    bad = X.copy()
    bad[150, 3] = np.nan
    with pytest.raises(TvcleanError, match="row 150"):
        predict_many(nets, bad, batch_bytes=4 * 400 * 9)
    with pytest.raises(TvcleanError, match="12"):
        predict_many(nets, X[:, :5])
    # nets of different shapes cannot be stacked: each runs on its own, same values
    mixed = nets[:2] + [fit_valuenet(X, y, ValueNetConfig(max_epochs=3, hidden=7), seed=9)]
    np.testing.assert_allclose(predict_many(mixed, X),
                               np.column_stack([net.predict(X) for net in mixed]), rtol=1e-6)


# ----------------------------------------------------------------------------- files

def test_save_load_roundtrip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(15)
    nets = {k: fit_valuenet(*nonlinear_task(rng, 100, dim=8), ValueNetConfig(max_epochs=4), seed=k)
            for k in (0, 3)}
    meta = {"classes": ["a", "b", "c", "d"], "config": {"hidden": 100}}
    save_valuenets(tmp_path, nets, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class_0.npz", "class_3.npz", "meta.json"]
    loaded, loaded_meta = load_valuenets(tmp_path)
    assert loaded_meta == meta and sorted(loaded) == [0, 3]
    for k, net in nets.items():
        for field in dataclasses.fields(ValueNet):
            a, b = getattr(net, field.name), getattr(loaded[k], field.name)
            assert type(a) is type(b) or np.asarray(a).dtype == np.asarray(b).dtype
            np.testing.assert_array_equal(a, b)
        with np.load(tmp_path / f"class_{k}.npz", allow_pickle=False) as data:
            assert all(data[key].dtype != object for key in data.files)


def test_load_ignores_class_files_not_listed_in_meta(tmp_path):
    rng = np.random.default_rng(16)
    net = fit_valuenet(*nonlinear_task(rng, 50, dim=4), ValueNetConfig(max_epochs=2), seed=0)
    save_valuenets(tmp_path, {0: net, 1: net}, {})
    save_valuenets(tmp_path, {1: net}, {})
    assert sorted(load_valuenets(tmp_path)[0]) == [1]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(TvcleanError, match="meta.json not found"):
        load_valuenets(tmp_path)
    rng = np.random.default_rng(17)
    net = fit_valuenet(*nonlinear_task(rng, 50, dim=4), ValueNetConfig(max_epochs=2), seed=0)
    save_valuenets(tmp_path, {2: net}, {})
    (tmp_path / "class_2.npz").write_bytes(b"not a zip")
    with pytest.raises(TvcleanError, match=r"class_2\.npz: not a valid value-net file"):
        load_valuenets(tmp_path)
    (tmp_path / "class_2.npz").write_bytes(b"PK\x03\x04truncated")
    with pytest.raises(TvcleanError, match=r"class_2\.npz: not a valid value-net file"):
        load_valuenets(tmp_path)
    (tmp_path / "class_2.npz").write_bytes(b"")
    with pytest.raises(TvcleanError, match=r"class_2\.npz: not a valid value-net file"):
        load_valuenets(tmp_path)
    np.savez(tmp_path / "class_2.npz", w1=np.zeros((3, 2)))
    with pytest.raises(TvcleanError, match=r"class_2\.npz: not a valid value-net file"):
        load_valuenets(tmp_path)
    (tmp_path / "class_2.npz").unlink()
    with pytest.raises(TvcleanError, match=r"class_2\.npz not found"):
        load_valuenets(tmp_path)
    (tmp_path / "meta.json").write_text('{"valuenet_classes": "x"}')
    with pytest.raises(TvcleanError, match="invalid 'valuenet_classes'"):
        load_valuenets(tmp_path)


def test_load_rejects_wrong_shapes(tmp_path):
    rng = np.random.default_rng(18)
    net = fit_valuenet(*nonlinear_task(rng, 50, dim=4), ValueNetConfig(max_epochs=2), seed=0)
    save_valuenets(tmp_path, {0: dataclasses.replace(net, w2=np.zeros((3, 1), np.float32))}, {})
    with pytest.raises(TvcleanError, match=r"class_0\.npz: w2 has shape \(3, 1\)"):
        load_valuenets(tmp_path)


# ----------------------------------------------------------------------------- bad input

def test_can_fit_and_minimum():
    config = ValueNetConfig()
    assert not can_fit(9, config) and can_fit(10, config)
    assert min_examples_needed(config) == 10
    tight = ValueNetConfig(min_examples=1, val_split=0.5)
    assert not can_fit(1, tight) and can_fit(2, tight) and min_examples_needed(tight) == 2
    wide = ValueNetConfig(min_examples=2, val_split=0.75)  # 3 examples: int(0.75) = 0 to train on
    assert min_examples_needed(wide) == 4 and not can_fit(3, wide) and can_fit(4, wide)


@pytest.mark.parametrize("make, message", [
    (lambda X, y: (X, np.where(np.arange(len(y)) == 4, np.nan, y)), "y has a non-finite value .* row 4"),
    (lambda X, y: (np.where(np.arange(len(y))[:, None] == 7, np.inf, X), y), "X has a non-finite value .* row 7"),
    (lambda X, y: (X, y[:-1]), "one value per row of X: X has 30 rows"),
    (lambda X, y: (X[:9], y[:9]), "too few examples to train a value net: 9, needs at least 10"),
    (lambda X, y: (X[0], y), r"X must be a 2-D .* got shape \(4,\)"),
    (lambda X, y: (X.astype(str), y), "X must hold real numbers"),
])
def test_bad_training_input_is_a_clear_error(make, message):
    X = np.abs(np.random.default_rng(19).standard_normal((30, 4)))
    y = np.linspace(-1, 1, 30)
    with pytest.raises(TvcleanError, match=message):
        fit_valuenet(*make(X, y), ValueNetConfig(), seed=0)


def test_bad_config_is_a_clear_error():
    X = np.ones((30, 4))
    with pytest.raises(TvcleanError, match="valuenet.loss"):
        fit_valuenet(X, np.ones(30), ValueNetConfig(loss="huber"), seed=0)


def test_bad_predict_input_is_a_clear_error():
    rng = np.random.default_rng(20)
    X, y = nonlinear_task(rng, 40, dim=4)
    net = fit_valuenet(X, y, ValueNetConfig(max_epochs=2), seed=0)
    with pytest.raises(TvcleanError, match="X has 5 features per row, the value net expects 4"):
        net.predict(np.ones((3, 5)))
    bad = X.copy()
    bad[25, 1] = np.nan
    with pytest.raises(TvcleanError, match="row 25"):
        net.predict(bad, batch_rows=10)
