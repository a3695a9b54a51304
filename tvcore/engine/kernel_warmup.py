"""Compiling the linear head's kernels on both cores when numba's cache is empty.

numba compiles one function at a time under a process-wide lock, so the
first run on a new machine (about 4 s of compilation) would use one core.
Here a second Python process compiles the loss side (`_rank1_loss_drop` and
what it calls, about a third of the work) into numba's cache while this
process compiles the training side; the episode kernel then finds the loss
side in the cache. Nothing depends on it: if the helper fails or is slow,
this process compiles what is missing itself, and the compiled code is the same.

Run as `python -m tvcore.engine.kernel_warmup DTYPE` (the helper).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numba.core import config

from . import mc_kernels as mk

_NUMBA_CONFIG: Any = config  # its options are set at run time, untyped
HELPER_TIMEOUT_S = 120.0  # a helper still compiling after this is stopped


def cache_is_cold() -> bool:
    """True when numba has no cache index for the linear episode kernel yet."""
    kernel: Any = mk.linear_episode_deltas  # numba's cache internals are untyped
    try:
        index = kernel._cache._cache_file._index_path
    except AttributeError:  # caching off, or numba's internals moved: compile as usual
        return False
    return not os.path.exists(index)


def start_loss_side_helper(dtype: str) -> subprocess.Popen[bytes] | None:
    """Start the helper process on a cold cache with a second core free, else None."""
    if _NUMBA_CONFIG.DISABLE_JIT or (os.cpu_count() or 1) < 2 or not cache_is_cold():
        return None
    root = str(Path(__file__).resolve().parents[2])  # the folder holding tvcore/
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    try:
        return subprocess.Popen([sys.executable, "-m", __name__, str(np.dtype(dtype))],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
    except OSError:
        return None


def wait_for(helper: subprocess.Popen[bytes]) -> None:
    try:
        helper.wait(HELPER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        helper.kill()
        helper.wait()


def _workspace(dtype: str) -> tuple:
    return mk.linear_workspace(2, 3, 4, np.dtype(dtype))


def warm_loss_side(dtype: str) -> None:
    """Compile _rank1_loss_drop with the argument types linear_episode_deltas passes."""
    (_, _, exps, sums, _, _, _, steps, _, _, acc, ratios, factors, _, _) = _workspace(dtype)
    gram = np.ones((2, exps.shape[1]), exps.dtype)
    feats = np.zeros((2, 4), exps.dtype)
    exps[:], sums[:], steps[:] = 1, exps.shape[0], 0
    mk._rank1_loss_drop(exps, sums, gram[0], gram[0].max(), steps[0],
                        np.zeros((2, exps.shape[0]))[0], acc, ratios, factors, feats[1], gram[1])


def warm_training_side(dtype: str) -> None:
    """Compile the episode kernel's other callees with the types it passes them."""
    (weights, _, exps, sums, logits, base, gram, steps, tile, rows, _, _, _, coef,
     spare) = _workspace(dtype)
    feats = np.zeros((8, weights.shape[1]), weights.dtype)
    mk._init_softmax_state(np.zeros_like(exps), exps, sums)
    rows[:] = 0
    mk._block_products(feats, rows, 1, weights, base, gram, tile)
    mk._softmax_grad(logits, np.int64(0), 1.0, steps[0])
    coef[:] = 0
    mk._add_rows(weights[0], weights[1], spare[0], spare[1], coef, *feats)


if __name__ == "__main__":
    warm_loss_side(sys.argv[1])
