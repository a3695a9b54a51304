"""The filter stage reads memory-mapped features in chunks, with the same results as in one go."""

from __future__ import annotations

import numpy as np
from runfixtures import clustered_features

import tvcore.engine.decisions as values_module
from tvcore.config import FilterConfig, ValueNetConfig
from tvcore.engine.decisions import predict_values, suggest_labels
from tvcore.engine.estimates import Estimates
from tvcore.engine.valuenet import fit_valuenet

LOW = FilterConfig(threshold=-0.5)


def test_predictions_and_suggestions_do_not_depend_on_the_chunk_size(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    x, labels, _ = clustered_features(rng, 40, 3, 8, flip=0.2)
    mapped = np.lib.format.open_memmap(tmp_path / "train.npy", mode="w+", dtype=np.float32,
                                       shape=x.shape)
    mapped[:] = x
    config = ValueNetConfig(max_epochs=5, min_examples=5)
    nets = {k: fit_valuenet(x[labels == k], rng.normal(size=int(np.sum(labels == k))), config,
                            (0, k)) for k in (0, 2)}  # class 1 falls back to its MC estimates
    mc_rows = np.flatnonzero(labels == 1)[:10]
    mc = Estimates(rows=mc_rows, labels=labels[mc_rows], mean=rng.normal(size=10),
                          stderr=np.zeros(10), count=np.ones(10, np.int64))
    rows = np.delete(np.arange(labels.size), [3, 77])  # two unreadable images

    naive = np.full(labels.size, np.nan)  # every class's rows through its net in one call
    for k, net in nets.items():
        naive[rows[labels[rows] == k]] = net.predict(x[rows[labels[rows] == k]])
    naive[rows[labels[rows] == 1]] = mc.mean.mean()
    naive[mc_rows] = mc.mean

    whole = predict_values(mapped, labels, rows, mc, nets, 3)
    assert np.array_equal(whole, naive, equal_nan=True)  # default chunks: bitwise as before
    own = whole[rows]
    suggested = suggest_labels(mapped, labels, rows, own, mc, nets, 3, LOW)
    monkeypatch.setattr(values_module, "ROWS_PER_READ", 7)
    # float32 matrix products round differently for other row counts
    np.testing.assert_allclose(predict_values(mapped, labels, rows, mc, nets, 3), whole,
                               rtol=1e-5, atol=1e-7)
    assert np.array_equal(suggest_labels(mapped, labels, rows, own, mc, nets, 3, LOW),
                          suggested)
    assert np.isnan(whole[[3, 77]]).all() and np.isfinite(np.delete(whole, [3, 77])).all()
    assert {-1, 0, 1, 2} >= set(suggested.tolist()) and (suggested >= 0).any()
    assert not (suggested == labels[rows]).any()  # never the image's own class
