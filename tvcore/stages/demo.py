"""The embedded demo: real Fashion-MNIST photos with a known 20% of labels flipped.

The archive tvcore/data/fashion-mnist-demo.npz holds 250 training images per
class (from the official training split) and 50 validation images per class
(from the official test split); see tvcore/data/README.md for its licence.
`materialize` writes them as PNG class folders with flipped training labels
and a truth file; `run_demo` cleans them and scores the result.
"""

from __future__ import annotations

import gzip
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import Config
from ..errors import TvcleanError
from ..rundir import atomic_write_csv

CLASS_NAMES = ["tshirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
               "sneaker", "bag", "ankle-boot"]
ARCHIVE = "fashion-mnist-demo.npz"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian dataset-fashion-mnist
DEMO_NOISE = 0.2
DEMO_SEED = 0


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


def load_archive() -> dict[str, np.ndarray]:
    with resources.files("tvcore").joinpath("data", ARCHIVE).open("rb") as fh:
        with np.load(fh, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}


def flip_labels(labels: np.ndarray, noise: float, n_classes: int, seed: int):
    """Symmetric noise: a `noise` fraction of labels moved to a uniformly chosen other class."""
    rng = np.random.default_rng(seed)
    flipped = np.zeros(labels.size, bool)
    flipped[rng.choice(labels.size, size=int(round(noise * labels.size)), replace=False)] = True
    given = labels.copy()
    given[flipped] = (labels[flipped] + rng.integers(1, n_classes, flipped.sum())) % n_classes
    return given, flipped


def _write_images(folder: Path, images, labels, prefix: str) -> list[Path]:
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        path = folder / CLASS_NAMES[label] / f"{prefix}{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(path)
        paths.append(path)
    return paths


def materialize(out: str | Path, noise: float = DEMO_NOISE, seed: int = DEMO_SEED) -> Path:
    """Write DATA/train/<class>/*.png (labels partly flipped), DATA/val/, DATA/truth.csv.

    Returns the DATA folder. truth.csv lists every training image with
    is_mislabeled and true_label, for `tvclean evaluate`.
    """
    data_dir = Path(out)
    if (data_dir / "truth.csv").exists():
        return data_dir
    archive = load_archive()
    given, flipped = flip_labels(archive["train_labels"], noise, len(CLASS_NAMES), seed)
    train_paths = _write_images(data_dir / "train", archive["train_images"], given, "img")
    _write_images(data_dir / "val", archive["val_images"], archive["val_labels"], "val")
    atomic_write_csv(data_dir / "truth.csv", ("path", "is_mislabeled", "true_label"),
                     ((p.relative_to(data_dir), int(f), CLASS_NAMES[t])
                      for p, f, t in zip(train_paths, flipped, archive["train_labels"])))
    return data_dir


def demo_config() -> Config:
    """The demo's configuration: the defaults, with the subset sized to the demo's classes."""
    config = Config()
    config.estimate.per_class = 250
    return config


@dataclass
class DemoResult:
    data: Path
    run: Path
    metrics: dict
    seconds: dict[str, float]


def run_demo(out: str | Path, config: Config | None = None,
             progress: bool | None = None) -> DemoResult:
    """Materialize the demo data under OUT/data, clean it into OUT/run, score the result."""
    from .evaluate import evaluate
    from .clean import clean
    from .report import write_report

    out = Path(out)
    config = config or demo_config()
    start = time.perf_counter()
    data = materialize(out / "data")
    prepared = time.perf_counter() - start
    # The report comes after the evaluation, so that it shows the scores too.
    with_report = config.report.enabled
    config.report.enabled = False
    result = clean(data / "train", data / "val", out / "run", config, progress)
    evaluation = evaluate(out / "run", data / "truth.csv")
    seconds = {"prepare data": prepared, **result.seconds}
    if with_report:
        started = time.perf_counter()
        write_report(out / "run", config.report, progress)
        seconds["report"] = time.perf_counter() - started
    config.report.enabled = with_report
    return DemoResult(data=data, run=out / "run", metrics=evaluation.to_dict()["overall"],
                      seconds=seconds)
