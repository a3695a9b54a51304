"""Fashion-MNIST from the Debian package dataset-fashion-mnist: the IDX files, and the
embedded demo archive built from them (tvcore/data/fashion-mnist-demo.npz).

    python -c "from benchmarks.fashion_mnist import build_archive; build_archive('out.npz')"
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from tvcore.errors import TvcleanError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise TvcleanError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str, root: str | Path = FASHION_MNIST_DIR):
    """Images (n, 28, 28) uint8 and labels (n,) of the official 'train' or 't10k' split."""
    root = Path(root)
    images = root / f"{split}-images-idx3-ubyte.gz"
    if not images.exists():
        raise TvcleanError(f"{images} not found; install the Debian package dataset-fashion-mnist")
    return read_idx(images), read_idx(root / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` examples of every class, in class order."""
    return np.concatenate([np.flatnonzero(labels == k)[:per_class]
                           for k in range(int(labels.max()) + 1)])


def build_archive(out: str | Path, train_per_class=250, val_per_class=50,
                  root: str | Path = FASHION_MNIST_DIR) -> None:
    """Write the demo archive from the Debian Fashion-MNIST files (run once, by developers)."""
    train_images, train_labels = load_fashion_mnist("train", root)
    val_images, val_labels = load_fashion_mnist("t10k", root)
    t = first_per_class(train_labels, train_per_class)
    v = first_per_class(val_labels, val_per_class)
    np.savez_compressed(out, train_images=train_images[t], train_labels=train_labels[t],
                        val_images=val_images[v], val_labels=val_labels[v])
