"""Numba kernel of the neighbour search: the k largest entries of every row of a block.

np.argpartition over a (rows x pool) similarity block costs an int64 array
of the block's size, a negated copy and a pass that touches every entry
several times; here each row keeps a k-entry min-heap and most entries are
rejected by one comparison with its root. Rows run in parallel.
Ties: the lower pool index ranks first (it enters the heap first and an equal
value never displaces it).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _worse(value_a, index_a, value_b, index_b):
    """a ranks below b: smaller, or equal and later in the pool."""
    return value_a < value_b or (value_a == value_b and index_a > index_b)


@njit(cache=True, inline="always")
def _sift_down(values, indices, k, at):
    while True:
        child = 2 * at + 1
        if child >= k:
            return
        if child + 1 < k and _worse(values[child + 1], indices[child + 1],
                                    values[child], indices[child]):
            child += 1
        if not _worse(values[child], indices[child], values[at], indices[at]):
            return
        values[at], values[child] = values[child], values[at]
        indices[at], indices[child] = indices[child], indices[at]
        at = child


@njit(cache=True, parallel=True)
def top_k_rows(block, k, skip, out_index, out_value, row_offset):
    """Rows row_offset.. of out_value (q, k) float32 get the k largest entries of each row of
    block (b, p), largest first, and out_index (q, k' <= k) int32 the columns of the first k'
    of them; skip (b,): a column to leave out of that row (-1: none). Needs
    1 <= k <= p - (a skipped column)."""
    rows, width = block.shape
    keep = out_index.shape[1]
    for r in prange(rows):
        values = np.empty(k, np.float32)
        indices = np.empty(k, np.int32)
        filled = 0
        leave_out = skip[r]
        for j in range(width):
            if j == leave_out:
                continue
            v = block[r, j]
            if filled < k:  # heap not full: append, sift up
                at = filled
                filled += 1
                values[at], indices[at] = v, j
                while at > 0:
                    parent = (at - 1) // 2
                    if not _worse(values[at], indices[at], values[parent], indices[parent]):
                        break
                    values[at], values[parent] = values[parent], values[at]
                    indices[at], indices[parent] = indices[parent], indices[at]
                    at = parent
            elif v > values[0]:
                values[0], indices[0] = v, j
                _sift_down(values, indices, k, 0)
        # heap sort: pop the worst to the back, so the front ends most similar
        for last in range(k - 1, -1, -1):
            out_value[row_offset + r, last] = values[0]
            if last < keep:
                out_index[row_offset + r, last] = indices[0]
            values[0], indices[0] = values[last], indices[last]
            _sift_down(values, indices, last, 0)
