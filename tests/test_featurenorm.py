"""Feature normalisation: the chunked gather-and-normalise equals the whole-array formula."""

from __future__ import annotations

import numpy as np
import pytest

from tvcore.engine.featurenorm import CHUNK_ROWS, FeatureView, fit_center, normalize


def reference(features: np.ndarray, center: np.ndarray | None, rows) -> np.ndarray:
    """Centre and scale the selected rows in one float64 array (the plain formula)."""
    x = np.asarray(features, np.float64)[rows]
    if center is None:
        return x.astype(np.float32)
    x = x - center
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, CHUNK_ROWS, 3 * CHUNK_ROWS + 5])
def test_normalised_rows_equal_the_whole_array_formula_bit_for_bit(tmp_path, dtype, n):
    rng = np.random.default_rng(n)
    features = (rng.standard_normal((n + 7, 33)) * rng.uniform(0.1, 50, (n + 7, 1))).astype(dtype)
    features[2] = 0  # a zero row stays finite: its norm is taken as 1
    np.save(tmp_path / "f.npy", features)
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    center = fit_center(mapped, np.arange(n + 7))
    features[2] = center  # centred, it is the zero vector
    np.save(tmp_path / "f.npy", features)
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    mask = rng.random(n + 7) < 0.5
    for rows in (rng.permutation(n + 7)[:n], slice(3, n + 3), mask, np.zeros(0, np.int64),
                 list(range(n))):
        for c in (center, None):
            got = FeatureView(mapped, c)[rows]
            want = reference(features, c, rows)
            assert got.dtype == np.float32 and got.shape == want.shape
            assert np.array_equal(got, want)
    assert np.array_equal(normalize(mapped, center), reference(features, center, slice(None)))
    assert np.isfinite(FeatureView(mapped, center)[[2]]).all()


def test_the_center_is_the_float64_mean_of_the_rows():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((1300, 17)).astype(np.float32)
    rows = rng.permutation(1300)[:1100]
    assert np.allclose(fit_center(features, rows), features[rows].astype(np.float64).mean(axis=0),
                       rtol=0, atol=1e-12)
