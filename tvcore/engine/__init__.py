"""The engine: numba kernels and array computations (no files, no I/O)."""
