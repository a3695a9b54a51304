"""Numba kernels of the Monte-Carlo phase: exact per-step validation-loss drops.

Plain arrays in, plain arrays out; no I/O, no Python objects. The pipeline in
montecarlo.py validates inputs, draws the random streams and allocates.

Why it is fast: one SGD step on training example i changes the head's first
layer by a rank-1 term, so the validation logits (linear head) or hidden
pre-activations (MLP head) change by `lr * (X_val x_i + 1) * (...)ᵀ`, and
`X_val x_i + 1` is row i of the precomputed augmented Gram matrix. The validation softmax is
kept as unnormalised exponentials E (classes, n_val) with row sums S, so a
logit change u multiplies E by exp(u); the loss change of validation example
m is `log1p(sum_k p_km expm1(u_km)) - u_(y_m) m`, computed without
cancellation.

Compile time: every separate jitted function costs a fixed ~50 ms to compile
and cache, and numba-level inlining copies IR, so the hot path is a handful of
medium-sized functions; LLVM inlines the small ones (vmath) where it pays.

Shapes: N training examples in the subset, D features, K classes, H hidden
units, M validation examples (sorted by class; `val_bounds[k]:val_bounds[k+1]`
is class k), T a tile of validation examples.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .vmath import SMALL_ARGUMENT, TINY_ARGUMENT, vexpm1, vexpm1_small, vexpm1_tiny, vlog1p

# Loops holding vexpm1/vlog1p must not get `reassoc` (it would undo their
# rounding tricks); `contract` (FMA) only makes them more accurate.
_FLAGS = {"contract"}
# Reductions need reassociation to vectorize; kept to small leaf functions.
_SUM_FLAGS = {"contract", "reassoc", "nsz"}
_LANES = 16  # logs left to take after multiplying the factors (1 + s_m) pairwise
_BLOCK = 8  # SGD steps per block of the linear head's training side (_add_rows takes 8 rows)
_TILE = 256  # validation examples per tile: the tile's buffers stay in L1/L2
_BIG = 2.0 ** 40  # rescale a validation row's exponentials outside this range
_SMALL = 2.0 ** -40
_SMALL_ARGUMENT = 0.999 * SMALL_ARGUMENT  # margins for the rounding of gram_row * step
_TINY_ARGUMENT_32 = 0.999 * TINY_ARGUMENT[4]
_TINY_ARGUMENT_64 = 0.999 * TINY_ARGUMENT[8]


@intrinsic
def _prefetch(typingctx, array, index):
    """Ask the CPU to bring array[index]'s cache line into L2 (a hint: no effect on values)."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, [args[1]])
        i32, i8p = ir.IntType(32), ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        # The name is mangled by pointer type: "p0i8" (typed pointers) or "p0" (opaque).
        fn = cgutils.get_or_insert_function(builder.module, fnty,
                                            "llvm.prefetch." + i8p.intrinsic_name)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(2), i32(1)])  # read, L2, data
        return context.get_dummy_value()
    return types.void(array, types.intp), codegen


@njit(cache=True)
def _prefetch_part(row, part, parts):
    """Prefetch the part-th of `parts` shares of a 1-D array's cache lines.

    A step spreads the prefetches of the rows it reads next over its own
    work: issued all at once they would stall on the few misses a core can
    have outstanding; spread out they arrive while the core computes.
    """
    per_line = max(1, 64 // row.itemsize)
    share = ((row.shape[0] + per_line - 1) // per_line + parts - 1) // parts
    for d in range(part * share * per_line, min((part + 1) * share * per_line, row.shape[0]),
                   per_line):
        _prefetch(row, d)  # type: ignore[call-arg]  # an intrinsic: typingctx is numba's


@njit(fastmath=_SUM_FLAGS, cache=True)
def _dot(a, b):
    """Dot product of two 1-D arrays of the same dtype, in that dtype."""
    acc = a.dtype.type(0)
    for i in range(a.shape[0]):
        acc += a[i] * b[i]
    return acc


@njit(fastmath=_SUM_FLAGS, cache=True)
def _sum64(a, lo, hi):
    """Sum of a[lo:hi] accumulated in float64."""
    acc = 0.0
    for i in range(lo, hi):
        acc += np.float64(a[i])
    return acc


@njit(fastmath=_FLAGS, cache=True)
def _softmax_grad(logits, label, lr, step):
    """step[k] = -lr * (softmax(logits)[k] - [k == label]), computed in float64."""
    peak = logits[0]
    for k in range(1, logits.shape[0]):
        peak = max(peak, logits[k])
    total = 0.0
    for k in range(logits.shape[0]):
        # one exp per class (libm, scalar), parked in step: it has the logits' dtype, as
        # the exp has, so the value is kept exactly
        step[k] = math.exp(logits[k] - peak)
        total += step[k]
    for k in range(logits.shape[0]):
        grad = step[k] / total - (1.0 if k == label else 0.0)
        step[k] = -lr * grad


@njit(fastmath=_FLAGS, error_model="numpy", cache=True)
def _init_softmax_state(val_logits, exps, sums):
    """exps (K, M) = exp(logits - max over classes); sums (M,) their class sums."""
    n_classes, n_val = val_logits.shape
    for m in range(n_val):
        peak = val_logits[0, m]
        for k in range(1, n_classes):
            peak = max(peak, val_logits[k, m])
        total = 0.0
        for k in range(n_classes):
            value = math.exp(np.float64(val_logits[k, m]) - peak)
            exps[k, m] = value
            total += value
        sums[m] = total


@njit(fastmath=_FLAGS, error_model="numpy", cache=True)
def _finish_tile(exps, sums, m0, width, acc, ratios, factors):
    """Fold acc (sum_k E_km expm1(u_km)) into the row sums; return sum_m log1p(s_m).

    s_m = acc_m / sums_m is the relative growth of validation example m's
    softmax normaliser (m in m0..m0+width). In float32, 1 + s_m is exact in
    float64, so the logs are taken of a pairwise product tree of the factors
    (16 logs instead of `width`, plain vector work) at no loss; in float64, or
    when a partial product leaves the float64 range, every log1p is taken.
    Rows whose exponentials leave [_SMALL, _BIG] are rescaled (rarely acts).
    """
    sums_tile = sums[m0:m0 + width]
    outside = 0
    for m in range(width):
        ratio = acc[m] / sums_tile[m]
        ratios[m] = ratio
        factors[m] = 1.0 + np.float64(ratio)
        total = sums_tile[m] + acc[m]
        sums_tile[m] = total
        outside += (total > _BIG) | (total < _SMALL)
    total = np.nan
    if ratios.itemsize == 4:
        n = width
        while n > _LANES:
            half = (n + 1) // 2
            for i in range(n - half):
                factors[i] *= factors[half + i]
            n = half
        total = 0.0
        for i in range(n):
            if not (1e-300 < factors[i] < 1e300):
                total = np.nan
                break
            total += vlog1p(factors[i] - 1.0)
    if np.isnan(total):
        total = 0.0
        for m in range(width):
            total += vlog1p(np.float64(ratios[m]))
    if outside:
        for m in range(width):
            if sums_tile[m] > _BIG or sums_tile[m] < _SMALL:
                inv = 1.0 / sums_tile[m]
                for k in range(exps.shape[0]):
                    exps[k, m0 + m] *= inv
                sums_tile[m] = 1.0
    return total


@njit(fastmath=_FLAGS, error_model="numpy", cache=True)
def _apply_logit_change(exps, sums, change, m0, width, val_bounds, acc, ratios, factors):
    """Apply logit change `change[:, :width]` to validation examples m0..m0+width.

    Updates exps/sums in place and returns the summed loss drop of the tile,
    sum_m [change[y_m, m] - log1p(sum_k p_km expm1(change[k, m]))], in float64.
    """
    zero = exps.dtype.type(0)
    for m in range(width):
        acc[m] = zero
    for k in range(exps.shape[0]):
        exps_k = exps[k, m0:m0 + width]
        change_k = change[k]
        for m in range(width):
            q = exps_k[m] * vexpm1(change_k[m])
            acc[m] += q
            exps_k[m] += q
    drop = -_finish_tile(exps, sums, m0, width, acc, ratios, factors)
    for k in range(exps.shape[0]):
        lo = min(max(val_bounds[k] - m0, 0), width)
        hi = min(max(val_bounds[k + 1] - m0, 0), width)
        drop += _sum64(change[k], lo, hi)
    return drop


# ---------------------------------------------------------------- linear head
#
# The training side works in blocks of _BLOCK consecutive steps of an episode.
# With W, b the head at the block start, x_j the block's examples and a_i the
# step (-lr * gradient, per class) of step i, step j's logits are
#     W x_j + b + sum_{i<j} (x_j · x_i + 1) a_i,
# so the block needs X_B Wᵀ (one small matrix product), the block's Gram matrix
# (lower triangle) and, at its end, one rank-B update W += A_Bᵀ X_B. The same
# arithmetic as one step at a time, but done in register tiles that read each
# weight once per block instead of twice per step.


@njit(fastmath=_FLAGS, error_model="numpy", cache=True)
def _rank1_loss_drop(exps, sums, gram_row, gram_absmax, step, gram_class_sums, acc, ratios,
                     factors, next_a, next_b):
    """As _apply_logit_change, for all validation examples and the linear head's rank-1
    change u_km = gram_row[m] * step[k].

    The change is formed on the fly: no (K, M) buffer is written and read back.
    Per class, |step_k| * max|gram_row| bounds the arguments of expm1 and picks
    the cheapest variant accurate there (no range reduction below ln2/2, a
    short polynomial for tiny arguments). gram_class_sums (K,) float64: sums of
    gram_row over each class's validation examples. next_a, next_b: 1-D arrays
    the next steps read, prefetched meanwhile.
    """
    n_classes, n_val = exps.shape
    zero = exps.dtype.type(0)
    tiny = _TINY_ARGUMENT_32 if exps.itemsize == 4 else _TINY_ARGUMENT_64
    for m in range(n_val):
        acc[m] = zero
    for k in range(n_classes):
        _prefetch_part(next_a, k, n_classes)
        _prefetch_part(next_b, k, n_classes)
        exps_k = exps[k]
        ak = step[k]
        bound = abs(ak) * gram_absmax
        if bound <= tiny:
            for m in range(n_val):
                q = exps_k[m] * vexpm1_tiny(gram_row[m] * ak)
                acc[m] += q
                exps_k[m] += q
        elif bound <= _SMALL_ARGUMENT:
            for m in range(n_val):
                q = exps_k[m] * vexpm1_small(gram_row[m] * ak)
                acc[m] += q
                exps_k[m] += q
        else:
            for m in range(n_val):
                q = exps_k[m] * vexpm1(gram_row[m] * ak)
                acc[m] += q
                exps_k[m] += q
    drop = -_finish_tile(exps, sums, 0, n_val, acc, ratios, factors)
    for k in range(n_classes):
        drop += np.float64(step[k]) * gram_class_sums[k]
    return drop


@njit(fastmath=_SUM_FLAGS, cache=True)
def _dot_tile(a0, a1, a2, a3, b0, b1, b2, b3, tile):
    """tile (4, 4)[p, q] = a_p · b_q for two quadruples of 1-D arrays, in one pass over them."""
    z = a0.dtype.type(0)
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = z
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = z
    for d in range(a0.shape[0]):
        u0, u1, u2, u3 = b0[d], b1[d], b2[d], b3[d]
        v = a0[d]
        s00 += v * u0
        s01 += v * u1
        s02 += v * u2
        s03 += v * u3
        v = a1[d]
        s10 += v * u0
        s11 += v * u1
        s12 += v * u2
        s13 += v * u3
        v = a2[d]
        s20 += v * u0
        s21 += v * u1
        s22 += v * u2
        s23 += v * u3
        v = a3[d]
        s30 += v * u0
        s31 += v * u1
        s32 += v * u2
        s33 += v * u3
    tile[0, 0], tile[0, 1], tile[0, 2], tile[0, 3] = s00, s01, s02, s03
    tile[1, 0], tile[1, 1], tile[1, 2], tile[1, 3] = s10, s11, s12, s13
    tile[2, 0], tile[2, 1], tile[2, 2], tile[2, 3] = s20, s21, s22, s23
    tile[3, 0], tile[3, 1], tile[3, 2], tile[3, 3] = s30, s31, s32, s33


@njit(fastmath=_FLAGS, cache=True)
def _block_products(sub_feats, rows, n_rows, weights, base, gram, tile):
    """base (B, K) = X_B Wᵀ and gram (B, B) = X_B X_Bᵀ (tiles on and below the diagonal).

    rows (B,): the block's examples, the last one repeated past n_rows; a tile
    past the last row or class recomputes it and keeps only the real entries.
    """
    n_classes = weights.shape[0]
    last_class = n_classes - 1
    for j0 in range(0, n_rows, 4):
        x0, x1, x2, x3 = (sub_feats[rows[j0]], sub_feats[rows[j0 + 1]], sub_feats[rows[j0 + 2]],
                          sub_feats[rows[j0 + 3]])
        height = min(4, n_rows - j0)
        for k0 in range(0, n_classes, 4):
            _dot_tile(x0, x1, x2, x3, weights[k0], weights[min(k0 + 1, last_class)],
                      weights[min(k0 + 2, last_class)], weights[min(k0 + 3, last_class)], tile)
            for p in range(height):
                for q in range(min(4, n_classes - k0)):
                    base[j0 + p, k0 + q] = tile[p, q]
        for i0 in range(0, j0 + 1, 4):
            _dot_tile(x0, x1, x2, x3, sub_feats[rows[i0]], sub_feats[rows[i0 + 1]],
                      sub_feats[rows[i0 + 2]], sub_feats[rows[i0 + 3]], tile)
            for p in range(height):
                for q in range(min(4, n_rows - i0)):
                    gram[j0 + p, i0 + q] = tile[p, q]


@njit(fastmath=_SUM_FLAGS, cache=True)
def _add_rows(w0, w1, w2, w3, coef, x0, x1, x2, x3, x4, x5, x6, x7):
    """w_q += sum_j coef[j, q] x_j for four rows w_q and eight rows x_j, in one pass.

    The 32 coefficients are read into registers first; each x_j load then
    feeds four multiply-adds.
    """
    a0, b0, c0, d0 = coef[0, 0], coef[0, 1], coef[0, 2], coef[0, 3]
    a1, b1, c1, d1 = coef[1, 0], coef[1, 1], coef[1, 2], coef[1, 3]
    a2, b2, c2, d2 = coef[2, 0], coef[2, 1], coef[2, 2], coef[2, 3]
    a3, b3, c3, d3 = coef[3, 0], coef[3, 1], coef[3, 2], coef[3, 3]
    a4, b4, c4, d4 = coef[4, 0], coef[4, 1], coef[4, 2], coef[4, 3]
    a5, b5, c5, d5 = coef[5, 0], coef[5, 1], coef[5, 2], coef[5, 3]
    a6, b6, c6, d6 = coef[6, 0], coef[6, 1], coef[6, 2], coef[6, 3]
    a7, b7, c7, d7 = coef[7, 0], coef[7, 1], coef[7, 2], coef[7, 3]
    for d in range(w0.shape[0]):
        v0, v1, v2, v3, v4, v5, v6, v7 = x0[d], x1[d], x2[d], x3[d], x4[d], x5[d], x6[d], x7[d]
        w0[d] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3 + a4 * v4 + a5 * v5 + a6 * v6 + a7 * v7
        w1[d] += b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3 + b4 * v4 + b5 * v5 + b6 * v6 + b7 * v7
        w2[d] += c0 * v0 + c1 * v1 + c2 * v2 + c3 * v3 + c4 * v4 + c5 * v5 + c6 * v6 + c7 * v7
        w3[d] += d0 * v0 + d1 * v1 + d2 * v2 + d3 * v3 + d4 * v4 + d5 * v5 + d6 * v6 + d7 * v7


def _empty(shape, dtype) -> np.ndarray:
    """np.empty, 64-byte aligned (vector loads then never straddle two cache lines)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    buffer = np.empty(size + 64, np.uint8)
    start = -buffer.ctypes.data % 64
    return buffer[start:start + size].view(dtype).reshape(shape)


def linear_workspace(n_classes: int, n_val: int, dim: int, dtype) -> tuple:
    """The arrays one linear_episode_deltas call works in (allocated here, not in the kernel:
    each numpy allocation inside a kernel compiles an implementation of its own)."""
    return (_empty((n_classes, dim), dtype), _empty(n_classes, dtype),
            _empty((n_classes, n_val), dtype), _empty(n_val, dtype),
            _empty(n_classes, dtype), _empty((_BLOCK, n_classes), dtype),
            _empty((_BLOCK, _BLOCK), dtype), _empty((_BLOCK, n_classes), dtype),
            _empty((4, 4), dtype), _empty(_BLOCK, np.int64), _empty(n_val, dtype),
            _empty(n_val, dtype), _empty(n_val, np.float64), _empty((_BLOCK, 4), dtype),
            np.zeros((3, dim), dtype))  # spare rows: zero (never a denormal or NaN) and
    # distinct: were one row passed twice, the update's alias checks would fail and run it
    # unvectorized (measured 1.5x slower at K=5, 6, 9)


@njit(fastmath=_FLAGS, error_model="numpy", cache=True, nogil=True)
def linear_episode_deltas(sub_feats, sub_labels, gram_sub_val, gram_absmax, gram_class_sums,
                          init_weights, init_val_logits, order, lr, out, work):
    """Summed validation-loss drops of every SGD step of one episode, linear head.

    sub_feats (N, D), sub_labels (N,) int64, gram_sub_val (N, M) = X_sub X_valᵀ + 1,
    gram_absmax (N,) = max |gram_sub_val| per row (selects the cheap expm1 path),
    gram_class_sums (N, K) float64: sums of gram_sub_val over each class's validation examples,
    init_weights (K, D), init_val_logits (K, M) = W0 X_valᵀ,
    order (epochs, L) int64: the examples visited in each epoch, lr float.
    out (epochs, N) float64 receives, for epoch p and example i,
    sum over validation examples of (loss before - loss after) the step on i.
    Divide by the total number of validation examples for the mean drop.
    work: linear_workspace(K, M, D, dtype), overwritten. Releases the GIL, so
    episodes run in parallel on threads (each with its own `out` and `work`).
    """
    (weights, bias, exps, sums, logits, base, gram, steps, tile, rows, acc, ratios,
     factors, coef, spare) = work
    n_classes, n_val = init_val_logits.shape
    for k in range(n_classes):
        bias[k] = 0
        for d in range(weights.shape[1]):
            weights[k, d] = init_weights[k, d]
        for j in range(_BLOCK):
            steps[j, k] = 0
    _init_softmax_state(init_val_logits, exps, sums)
    length = order.shape[1]
    n_steps = order.shape[0] * length
    for t0 in range(0, n_steps, _BLOCK):
        n_rows = min(_BLOCK, n_steps - t0)
        for j in range(_BLOCK):
            t = t0 + min(j, n_rows - 1)
            rows[j] = order[t // length, t % length]
        _block_products(sub_feats, rows, n_rows, weights, base, gram, tile)
        for j in range(n_rows):
            for k in range(n_classes):
                logits[k] = base[j, k] + bias[k]
            for i in range(j):
                weight = gram[j, i] + 1
                for k in range(n_classes):
                    logits[k] += weight * steps[i, k]
            i = rows[j]
            step = steps[j]
            _softmax_grad(logits, sub_labels[i], lr, step)
            # Prefetched meanwhile: the next block's example j, the next step's Gram row.
            t = t0 + j
            ahead = min(t + _BLOCK, n_steps - 1)
            following = min(t + 1, n_steps - 1)
            out[t // length, i] = _rank1_loss_drop(
                exps, sums, gram_sub_val[i], gram_absmax[i], step, gram_class_sums[i], acc,
                ratios, factors, sub_feats[order[ahead // length, ahead % length]],
                gram_sub_val[order[following // length, following % length]])
        for j in range(n_rows, _BLOCK):  # a partial last block: its missing rows add zero
            for k in range(n_classes):
                steps[j, k] = 0
        # W += A_Bᵀ X_B four classes at a time; a missing class adds zero to a spare row.
        x, r = sub_feats, rows
        for k0 in range(0, n_classes, 4):
            for q in range(4):
                for j in range(_BLOCK):
                    coef[j, q] = steps[j, k0 + q] if k0 + q < n_classes else 0
            _add_rows(weights[k0], weights[k0 + 1] if k0 + 1 < n_classes else spare[0],
                      weights[k0 + 2] if k0 + 2 < n_classes else spare[1],
                      weights[k0 + 3] if k0 + 3 < n_classes else spare[2], coef,
                      x[r[0]], x[r[1]], x[r[2]], x[r[3]], x[r[4]], x[r[5]], x[r[6]], x[r[7]])
        for k in range(n_classes):
            for j in range(n_rows):
                bias[k] += steps[j, k]


# ---------------------------------------------------------------- MLP head


@njit(fastmath=_FLAGS, cache=True)
def _mlp_forward(w1, b1, w2, b2, x, pre, hidden, logits):
    """pre (H,) = w1 x + b1, hidden = relu(pre), logits (K,) = w2 hidden + b2."""
    zero = x.dtype.type(0)
    for j in range(w1.shape[0]):
        pre[j] = _dot(w1[j], x) + b1[j]
        hidden[j] = max(pre[j], zero)
    for k in range(w2.shape[0]):
        logits[k] = _dot(w2[k], hidden) + b2[k]


@njit(fastmath=_FLAGS, cache=True)
def _mlp_backward(w2, pre, step, hidden_step):
    """hidden_step (H,) = -lr * grad wrt pre-activations, given step = -lr * grad wrt logits."""
    for j in range(w2.shape[1]):
        total = 0.0
        if pre[j] > 0:
            for k in range(w2.shape[0]):
                total += np.float64(w2[k, j]) * np.float64(step[k])
        hidden_step[j] = total


@njit(fastmath=_FLAGS, cache=True)
def _mlp_update(w1, b1, w2, b2, x, hidden, step, hidden_step):
    for k in range(w2.shape[0]):
        ak = step[k]
        for j in range(w2.shape[1]):
            w2[k, j] += ak * hidden[j]
        b2[k] += ak
    for j in range(w1.shape[0]):
        dj = hidden_step[j]
        if dj != 0:
            row = w1[j]
            for d in range(x.shape[0]):
                row[d] += dj * x[d]
            b1[j] += dj


@njit(fastmath=_FLAGS, error_model="numpy", cache=True)
def _mlp_tile_change(val_pre, gram_row, w2, hidden, step, hidden_step, active, n_active,
                     m0, width, relu_change, relu_dot, change):
    """Logit change (K, width) of validation tile m0.. from one MLP step; updates val_pre.

    Only hidden units active for the training example (pre > 0) move: the others
    have zero gradient, so their validation pre-activations stay as they are.
    """
    zero = val_pre.dtype.type(0)
    for m in range(width):
        relu_dot[m] = zero
    for a in range(n_active):
        j = active[a]
        dj = hidden_step[j]
        hj = hidden[j]
        pre_j = val_pre[j, m0:m0 + width]
        change_j = relu_change[a]
        for m in range(width):
            old = pre_j[m]
            new = old + dj * gram_row[m0 + m]
            pre_j[m] = new
            change_j[m] = max(new, zero) - max(old, zero)
            relu_dot[m] += hj * max(new, zero)
    for k in range(w2.shape[0]):
        ak = step[k]
        change_k = change[k]
        for m in range(width):
            change_k[m] = ak * relu_dot[m] + ak
        for a in range(n_active):
            w_kj = w2[k, active[a]]
            change_a = relu_change[a]
            for m in range(width):
                change_k[m] += w_kj * change_a[m]


@njit(fastmath=_FLAGS, error_model="numpy", cache=True, nogil=True)
def mlp_episode_deltas(sub_feats, sub_labels, gram_sub_val, val_bounds, init_w1, init_w2,
                       init_val_pre, init_val_logits, order, lr, out):
    """Summed validation-loss drops of every SGD step of one episode, MLP head.

    As linear_episode_deltas (val_bounds (K+1,) int64: the class ranges of the
    validation examples), with a one-hidden-layer ReLU head:
    init_w1 (H, D), init_w2 (K, H), zero biases,
    init_val_pre (H, M) = W1 X_valᵀ (validation hidden pre-activations),
    init_val_logits (K, M) = W2 relu(init_val_pre).
    """
    n_hidden = init_w1.shape[0]
    n_classes = init_w2.shape[0]
    n_val = init_val_pre.shape[1]
    dtype = sub_feats.dtype
    w1 = init_w1.copy()
    b1 = np.zeros(n_hidden, dtype)
    w2 = init_w2.copy()
    b2 = np.zeros(n_classes, dtype)
    val_pre = init_val_pre.copy()
    exps = np.empty(init_val_logits.shape, dtype)
    sums = np.empty(n_val, dtype)
    _init_softmax_state(init_val_logits, exps, sums)
    pre = np.empty(n_hidden, dtype)
    hidden = np.empty(n_hidden, dtype)
    logits = np.empty(n_classes, dtype)
    step = np.empty(n_classes, dtype)
    hidden_step = np.empty(n_hidden, dtype)
    active = np.empty(n_hidden, np.int64)
    relu_change = np.empty((n_hidden, _TILE), dtype)
    relu_dot = np.empty(_TILE, dtype)
    change = np.empty((n_classes, _TILE), dtype)
    acc = np.empty(_TILE, dtype)
    ratios = np.empty(_TILE, dtype)
    factors = np.empty(ratios.shape[0], np.float64)
    for epoch in range(order.shape[0]):
        for t in range(order.shape[1]):
            i = order[epoch, t]
            x = sub_feats[i]
            _mlp_forward(w1, b1, w2, b2, x, pre, hidden, logits)
            _softmax_grad(logits, sub_labels[i], lr, step)
            _mlp_backward(w2, pre, step, hidden_step)
            n_active = 0
            for j in range(n_hidden):
                if pre[j] > 0:
                    active[n_active] = j
                    n_active += 1
            drop = 0.0
            for m0 in range(0, n_val, _TILE):
                width = min(_TILE, n_val - m0)
                _mlp_tile_change(val_pre, gram_sub_val[i], w2, hidden, step, hidden_step,
                                 active, n_active, m0, width, relu_change, relu_dot, change)
                drop += _apply_logit_change(exps, sums, change, m0, width, val_bounds, acc,
                                            ratios, factors)
            _mlp_update(w1, b1, w2, b2, x, hidden, step, hidden_step)
            out[epoch, i] = drop
