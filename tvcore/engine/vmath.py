"""Branch-free expm1 and log1p that LLVM can vectorize inside numba loops.

numba calls libm for math.expm1/math.log1p one element at a time, and the
llvmlite wheels carry no SVML, so the engine's inner loops (one expm1 per
validation example and class per SGD step) would run scalar. These versions
use only arithmetic, comparisons and integer bit tricks, so a loop over them
becomes SIMD code. Accuracy: a few ulp in float32 and float64 (see
tests/test_vmath.py), for arguments within the clamping range.

`vexpm1(x)`, `vexpm1_small(x)`, `vexpm1_tiny(x)` and `vlog1p(x)` dispatch on
the argument's dtype (float32 or float64). Under NUMBA_DISABLE_JIT=1 they fall
back to the math module.

Each is a small jitted function of its own (compiled once, cached); LLVM
inlines it into the calling loop, which is cheaper to compile than numba-level
inlining. They and their callers are compiled with error_model="numpy": the
default "python" model guards every float division with a zero check, which
is a branch that blocks vectorization of the whole loop.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

# ---------------------------------------------------------------- bit casts


def _bitcast(source, target, llvm_target):
    """A numba intrinsic reinterpreting the bits of a `source` value as `target`."""

    @intrinsic
    def cast(typingctx, value):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], llvm_target)
        return target(source), codegen

    return cast


_f32_from_bits = _bitcast(types.int32, types.float32, ir.FloatType())
_f32_bits = _bitcast(types.float32, types.int32, ir.IntType(32))
_f64_from_bits = _bitcast(types.int64, types.float64, ir.DoubleType())
_f64_bits = _bitcast(types.float64, types.int64, ir.IntType(64))


# ---------------------------------------------------------------- float32

_F32 = np.float32
_LN2_HI_32 = _F32(0.693145751953125)  # ln 2 with the low mantissa bits zero
_LN2_LO_32 = _F32(1.428606765330187045e-06)
_INV_LN2_32 = _F32(1.4426950408889634)
_ROUND_32 = _F32(12582912.0)  # 1.5 * 2**23: adding it rounds to an integer


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _expm1_small_f32(r):
    """expm1(r) for |r| <= ln2/2: Taylor to degree 7 (truncation < 1 ulp)."""
    p = _F32(1.0 / 5040.0)
    p = p * r + _F32(1.0 / 720.0)
    p = p * r + _F32(1.0 / 120.0)
    p = p * r + _F32(1.0 / 24.0)
    p = p * r + _F32(1.0 / 6.0)
    p = p * r + _F32(0.5)
    return r + r * r * p


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _expm1_tiny_f32(r):
    """expm1(r) for |r| <= 2**-5: Taylor to degree 4 (truncation < 0.15 ulp)."""
    p = _F32(1.0 / 24.0)
    p = p * r + _F32(1.0 / 6.0)
    p = p * r + _F32(0.5)
    return r + r * r * p


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _expm1_f32(x):
    x = min(max(x, _F32(-87.0)), _F32(88.0))
    n = (x * _INV_LN2_32 + _ROUND_32) - _ROUND_32
    r = (x - n * _LN2_HI_32) - n * _LN2_LO_32
    em1_r = _expm1_small_f32(r)
    scale = _f32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))
    # 2^n * (expm1(r) + 1) - 1, arranged to avoid cancellation.
    return scale * em1_r + (scale - _F32(1.0))


_SQRT_HALF_BITS_32 = np.int32(0x3F3504F3)
_ONE_BITS_32 = np.int32(0x3F800000)


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _log1p_f32(x):
    w = _F32(1.0) + x
    bits = _f32_bits(w) + (_ONE_BITS_32 - _SQRT_HALF_BITS_32)
    k = (bits >> np.int32(23)) - np.int32(127)
    f = _f32_from_bits((bits & np.int32(0x007FFFFF)) + _SQRT_HALF_BITS_32)  # in [sqrt(.5), sqrt(2))
    # What rounding 1 + x lost, relative to w (exact for w < 2).
    big = _F32(k >= 1)  # blend, not branch: numba's ternary blocks vectorization
    lost = (big * (_F32(1.0) - (w - x)) + (_F32(1.0) - big) * (x - (w - _F32(1.0)))) / w
    z = (f - _F32(1.0)) / (f + _F32(1.0))
    z2 = z * z
    p = _F32(1.0 / 11.0)
    p = p * z2 + _F32(1.0 / 9.0)
    p = p * z2 + _F32(1.0 / 7.0)
    p = p * z2 + _F32(1.0 / 5.0)
    p = p * z2 + _F32(1.0 / 3.0)
    log_f = _F32(2.0) * z + _F32(2.0) * z * z2 * p
    kf = _F32(k)
    return kf * _LN2_HI_32 + (log_f + (kf * _LN2_LO_32 + lost))


# ---------------------------------------------------------------- float64

_LN2_HI_64 = 6.93147180369123816490e-01
_LN2_LO_64 = 1.90821492927058770002e-10
_INV_LN2_64 = 1.4426950408889634
_ROUND_64 = 6755399441055744.0  # 1.5 * 2**52


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _expm1_small_f64(r):
    """expm1(r) for |r| <= ln2/2: Taylor to degree 13 (truncation < 1 ulp)."""
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    return r + r * r * p


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _expm1_tiny_f64(r):
    """expm1(r) for |r| <= 2**-6: Taylor to degree 7 (truncation < 0.05 ulp)."""
    p = 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    return r + r * r * p


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _expm1_f64(x):
    x = min(max(x, -708.0), 709.0)
    n = (x * _INV_LN2_64 + _ROUND_64) - _ROUND_64
    r = (x - n * _LN2_HI_64) - n * _LN2_LO_64
    em1_r = _expm1_small_f64(r)
    scale = _f64_from_bits((np.int64(n) + np.int64(1023)) << np.int64(52))
    return scale * em1_r + (scale - 1.0)


_SQRT_HALF_BITS_64 = np.int64(0x3FE6A09E667F3BCD)
_ONE_BITS_64 = np.int64(0x3FF0000000000000)


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _log1p_f64(x):
    w = 1.0 + x
    bits = _f64_bits(w) + (_ONE_BITS_64 - _SQRT_HALF_BITS_64)
    k = (bits >> np.int64(52)) - np.int64(1023)
    f = _f64_from_bits((bits & np.int64(0x000FFFFFFFFFFFFF)) + _SQRT_HALF_BITS_64)
    big = np.float64(k >= 1)
    lost = (big * (1.0 - (w - x)) + (1.0 - big) * (x - (w - 1.0))) / w
    z = (f - 1.0) / (f + 1.0)
    z2 = z * z
    # atanh series: 2z (1 + z^2/3 + z^4/5 + ...), |z| <= 0.172, 11 terms.
    p = 1.0 / 23.0
    p = p * z2 + 1.0 / 21.0
    p = p * z2 + 1.0 / 19.0
    p = p * z2 + 1.0 / 17.0
    p = p * z2 + 1.0 / 15.0
    p = p * z2 + 1.0 / 13.0
    p = p * z2 + 1.0 / 11.0
    p = p * z2 + 1.0 / 9.0
    p = p * z2 + 1.0 / 7.0
    p = p * z2 + 1.0 / 5.0
    p = p * z2 + 1.0 / 3.0
    log_f = 2.0 * z + 2.0 * z * z2 * p
    kf = np.float64(k)
    return kf * _LN2_HI_64 + (log_f + (kf * _LN2_LO_64 + lost))


# ---------------------------------------------------------------- dispatch


def vexpm1(x):
    """exp(x) - 1, accurate for small x; vectorizable in numba loops."""
    return math.expm1(x)


def vexpm1_small(x):
    """exp(x) - 1 for |x| <= SMALL_ARGUMENT only (no range reduction: about half the work)."""
    return math.expm1(x)


SMALL_ARGUMENT = 0.34657359027997264  # ln(2) / 2


def vexpm1_tiny(x):
    """exp(x) - 1 for |x| <= TINY_ARGUMENT[precision] only (a short Taylor polynomial)."""
    return math.expm1(x)


TINY_ARGUMENT = {4: 2.0 ** -5, 8: 2.0 ** -6}  # by itemsize: float32, float64


def vlog1p(x):
    """log(1 + x), accurate for small x; vectorizable in numba loops."""
    return math.log1p(x)


def _dispatch_on_precision(function, float32_impl, float64_impl) -> None:
    """Make `function` compile to float32_impl or float64_impl by its argument's type."""

    @overload(function)
    def _overload(x):
        if x == types.float32:
            return lambda x: float32_impl(x)
        if x == types.float64:
            return lambda x: float64_impl(x)
        return None


_dispatch_on_precision(vexpm1, _expm1_f32, _expm1_f64)
_dispatch_on_precision(vexpm1_small, _expm1_small_f32, _expm1_small_f64)
_dispatch_on_precision(vexpm1_tiny, _expm1_tiny_f32, _expm1_tiny_f64)
_dispatch_on_precision(vlog1p, _log1p_f32, _log1p_f64)
