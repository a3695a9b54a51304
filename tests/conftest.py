"""Shared fixtures."""

from __future__ import annotations

import os

# Tests must never touch the network; the embedded model and data are local.
os.environ.setdefault("TVCLEAN_OFFLINE", "1")
