"""How many cores this process may use, and the numba thread count."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_numba_threads(threads: int) -> int:
    """Use `threads` numba threads (0 = all available); return the number used."""
    import numba

    available = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    used = available if threads <= 0 else min(threads, available)
    numba.set_num_threads(used)
    return used
