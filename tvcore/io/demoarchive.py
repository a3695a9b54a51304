"""The embedded Fashion-MNIST archive (tvcore/data/fashion-mnist-demo.npz) as arrays.

The demo stage (tvcore.stages.demo) and int8 calibration (tvcore.io.quantize)
both read it; see tvcore/data/README.md for its contents and licence.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

ARCHIVE = "fashion-mnist-demo.npz"


def load_archive() -> dict[str, np.ndarray]:
    with resources.files("tvcore").joinpath("data", ARCHIVE).open("rb") as fh:
        with np.load(fh, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
