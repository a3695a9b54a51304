"""The vectorizable expm1/log1p against numpy, in both precisions."""

import numpy as np
import pytest
from numba import njit

from tvcore.engine.vmath import (
    SMALL_ARGUMENT,
    TINY_ARGUMENT,
    vexpm1,
    vexpm1_small,
    vexpm1_tiny,
    vlog1p,
)


@njit(fastmath={"contract"}, error_model="numpy")
def _map_expm1(x, out):
    for i in range(x.size):
        out[i] = vexpm1(x[i])


@njit(fastmath={"contract"}, error_model="numpy")
def _map_expm1_small(x, out):
    for i in range(x.size):
        out[i] = vexpm1_small(x[i])


@njit(fastmath={"contract"}, error_model="numpy")
def _map_expm1_tiny(x, out):
    for i in range(x.size):
        out[i] = vexpm1_tiny(x[i])


@njit(fastmath={"contract"}, error_model="numpy")
def _map_log1p(x, out):
    for i in range(x.size):
        out[i] = vlog1p(x[i])


def _arguments(rng, low, high, dtype):
    wide = rng.uniform(low, high, 50_000)
    tiny = rng.choice([-1, 1], 50_000) * 10.0 ** rng.uniform(-30, 0, 50_000)
    return np.concatenate([wide, tiny, [0.0, -0.5, 0.5, 1e-40]]).astype(dtype)


def _ulp_error(got, x, fn, dtype):
    exact = fn(x.astype(np.longdouble))
    scale = np.maximum(np.abs(exact), np.finfo(dtype).tiny)
    return np.max(np.abs(got.astype(np.longdouble) - exact) / scale) / np.finfo(dtype).eps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_expm1_is_accurate_to_a_few_ulp(dtype):
    x = _arguments(np.random.default_rng(0), -80, 80, dtype)
    out = np.empty_like(x)
    _map_expm1(x, out)
    assert out.dtype == dtype
    assert _ulp_error(out, x, np.expm1, dtype) < 4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant", ["small", "tiny"])
def test_short_expm1_variants_are_accurate_in_their_range(dtype, variant):
    limit = SMALL_ARGUMENT if variant == "small" else TINY_ARGUMENT[np.dtype(dtype).itemsize]
    x = _arguments(np.random.default_rng(2), -limit, limit, dtype)
    x = x[np.abs(x) <= limit]
    edges = np.array([limit, -limit, np.nextafter(limit, 0)]).astype(dtype)
    x = np.concatenate([x, edges[np.abs(edges) <= limit]])
    out = np.empty_like(x)
    (_map_expm1_small if variant == "small" else _map_expm1_tiny)(x, out)
    assert _ulp_error(out, x, np.expm1, dtype) < 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log1p_is_accurate_to_a_few_ulp(dtype):
    x = _arguments(np.random.default_rng(1), -0.999, 1e6, dtype)
    x = x[x > -1]
    out = np.empty_like(x)
    _map_log1p(x, out)
    assert _ulp_error(out, x, np.log1p, dtype) < 4


def test_expm1_saturates_instead_of_overflowing_in_float32():
    x = np.array([-200.0, -88.0, 88.0, 200.0], np.float32)
    out = np.empty_like(x)
    _map_expm1(x, out)
    assert np.all(np.isfinite(out))
    assert out[0] == pytest.approx(-1.0) and out[3] > 1e38


def test_loops_over_them_are_vectorized():
    x = np.linspace(-1, 1, 64).astype(np.float32)
    out = np.empty_like(x)
    _map_expm1(x, out)
    _map_log1p(x, out)
    for fn in (_map_expm1, _map_log1p):
        llvm_ir = fn.inspect_llvm(fn.signatures[0])
        assert "<8 x float>" in llvm_ir or "<16 x float>" in llvm_ir
