"""Benchmark data: cached CNN features of real images, the downstream classifier, label noise.

Splits (fixed, documented so that results are comparable across runs):

- fashion: Fashion-MNIST (Debian dataset-fashion-mnist). Train: the first
  1000 images of every class of the official training split; validation
  (clean): the next 100 of every class; test: the first 200 of every class of
  the official t10k split (2000 images).
- digits: scikit-learn's `load_digits` (1797 images, 8x8, pixel values 0..16,
  scaled to 0..255). Per class, a seeded permutation: 100 train, 30
  validation, the rest (44..53 per class, 497 in all) test.

Features come from the embedded model with exactly the preprocessing of
`tvclean extract` (the grey image goes through the same Pillow path as a PNG
file would), and are cached under $TVCLEAN_BENCH_CACHE or
~/.cache/tvclean/bench, keyed by the model's sha256.

Noise (`NOISES`): symmetric (a fraction of all labels moved to a uniformly
chosen other class, `tvcore.stages.demo.flip_labels`) and pair noise (in every
class, that fraction of its images moved to the class its images are most
often mistaken for; see `most_confusable`).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tvcore.atomicfile import atomic_save_npz, atomic_write_json, read_json
from tvcore.errors import TvcleanError
from tvcore.io import images as tv_images
from tvcore.io.inference import FeatureExtractor
from tvcore.io.modelzoo import ModelSpec, resolve_model
from tvcore.progress import Progress
from tvcore.stages.demo import CLASS_NAMES as FASHION_CLASSES
from tvcore.stages.demo import flip_labels

from .fashion_mnist import first_per_class, load_fashion_mnist

SPLIT_VERSION = 1  # bump when a split definition changes: old caches are then ignored
DIGITS_TRAIN, DIGITS_VAL = 100, 30
FASHION_TRAIN, FASHION_VAL, FASHION_TEST = 1000, 100, 200
CV_FOLDS = 5


@dataclass
class ImageSplits:
    """uint8 grey images (n, H, W) and true labels (n,) of the three splits."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    class_names: list[str]


@dataclass
class FeatureData:
    """Features (n, D) float32 and true labels (n,) int64 of the three splits of one data set."""

    name: str
    train_X: np.ndarray
    train_y: np.ndarray
    val_X: np.ndarray
    val_y: np.ndarray
    test_X: np.ndarray
    test_y: np.ndarray
    class_names: list[str]
    model_sha256: str

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def fashion_images() -> ImageSplits:
    """Fashion-MNIST: 1000 train + 100 val per class (train split), 200 test per class (t10k)."""
    images, labels = load_fashion_mnist("train")
    train, val = [], []
    for k in range(len(FASHION_CLASSES)):
        rows = np.flatnonzero(labels == k)
        train.append(rows[:FASHION_TRAIN])
        val.append(rows[FASHION_TRAIN:FASHION_TRAIN + FASHION_VAL])
    train, val = np.concatenate(train), np.concatenate(val)
    test_images, test_labels = load_fashion_mnist("t10k")
    test = first_per_class(test_labels, FASHION_TEST)
    return ImageSplits((images[train], labels[train]), (images[val], labels[val]),
                       (test_images[test], test_labels[test]), list(FASHION_CLASSES))


def digits_images(seed: int = 0) -> ImageSplits:
    """scikit-learn digits: per class 100 train, 30 val, the rest test (seeded permutation)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 -> 0..255, rounded, so the images are ordinary 8-bit grey pictures.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "test": []}
    for k in range(10):
        rows = rng.permutation(np.flatnonzero(labels == k))
        parts["train"].append(rows[:DIGITS_TRAIN])
        parts["val"].append(rows[DIGITS_TRAIN:DIGITS_TRAIN + DIGITS_VAL])
        parts["test"].append(rows[DIGITS_TRAIN + DIGITS_VAL:])
    split = {name: np.concatenate(rows) for name, rows in parts.items()}
    return ImageSplits(*((images[split[s]], labels[split[s]]) for s in ("train", "val", "test")),
                       class_names=[str(k) for k in range(10)])


DATASETS = {"fashion": fashion_images, "digits": digits_images}


def cache_dir() -> Path:
    """$TVCLEAN_BENCH_CACHE, or ~/.cache/tvclean/bench."""
    if os.environ.get("TVCLEAN_BENCH_CACHE"):
        return Path(os.environ["TVCLEAN_BENCH_CACHE"]).expanduser()
    return Path.home() / ".cache" / "tvclean" / "bench"


def preprocess_grey(image: np.ndarray, model: ModelSpec) -> np.ndarray:
    """(H, W) uint8 grey image -> the model's (3, S, S) float32 input, as in `tvclean extract`."""
    prepared = tv_images.prepare(Image.fromarray(image, mode="L"), model.preprocess,
                                  tv_images.DEFAULT_MAX_PIXELS)
    if isinstance(prepared, str):
        raise TvcleanError(f"cannot preprocess a {image.shape} image: {prepared}")
    return prepared


def image_features(images: np.ndarray, model: ModelSpec, batch_size: int = 64,
                   label: str = "features", progress: bool | None = True) -> np.ndarray:
    """(n, H, W) uint8 grey images -> (n, D) float32 features of the model."""
    with FeatureExtractor(model, batch_size=batch_size) as extractor:
        out = np.empty((len(images), extractor.dim), np.float32)
        with Progress(len(images), label, enabled=progress) as bar:
            for first in range(0, len(images), batch_size):
                batch = images[first:first + batch_size]
                inputs = np.stack([preprocess_grey(image, model) for image in batch])
                out[first:first + len(batch)] = extractor.features(inputs)
                bar.update(len(batch))
    return out


def _cache_path(name: str, model: ModelSpec, cache: Path) -> Path:
    return cache / f"{name}-v{SPLIT_VERSION}-{model.sha256}.npz"


def load_features(name: str, model: str = "efficientnet-lite0", cache: str | Path | None = None,
                  progress: bool | None = True) -> FeatureData:
    """Features of data set `name` (see DATASETS), extracted once and cached."""
    if name not in DATASETS:
        raise TvcleanError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    spec = resolve_model(model)
    cache = Path(cache) if cache is not None else cache_dir()
    path = _cache_path(name, spec, cache)
    if not path.exists():
        _extract_to_cache(name, spec, path, progress)
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return FeatureData(name=name, class_names=[str(c) for c in arrays.pop("class_names")],
                       model_sha256=spec.sha256, **arrays)


def _extract_to_cache(name: str, spec: ModelSpec, path: Path, progress: bool | None) -> None:
    splits = DATASETS[name]()
    start = time.perf_counter()
    arrays = {}
    for split in ("train", "val", "test"):
        images, labels = getattr(splits, split)
        arrays[f"{split}_X"] = image_features(images, spec, label=f"{name} {split}",
                                              progress=progress)
        arrays[f"{split}_y"] = labels.astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_npz(path, class_names=np.array(splits.class_names), **arrays)
    print(f"{name}: features of {sum(len(a) for k, a in arrays.items() if k.endswith('_X'))} "
          f"images extracted in {time.perf_counter() - start:.0f}s -> {path}", file=sys.stderr)


# --- the downstream classifier ------------------------------------------------------------

def classifier(seed: int = 0):
    """The benchmark's logistic regression: standardised features, L2 (C=0.01), lbfgs.

    C was chosen once by accuracy on the clean validation images with clean
    training labels (Fashion-MNIST: 0.894 at C=0.01 vs 0.859 at C=1; digits
    0.95 at both) and is fixed for every case and method.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(),
                         LogisticRegression(C=0.01, max_iter=3000, random_state=seed))


def cross_val_probabilities(X: np.ndarray, y: np.ndarray, seed: int = 0,
                            folds: int = CV_FOLDS) -> np.ndarray:
    """(n, K) out-of-fold predicted probabilities of `classifier` (stratified folds, seeded)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return cross_val_predict(classifier(seed), X, y, cv=cv, method="predict_proba")


def downstream_accuracy(train_X, train_y, test_X, test_y, seed: int = 0) -> float:
    """Accuracy on the test images of `classifier` trained on (train_X, train_y)."""
    model = classifier(seed).fit(train_X, train_y)
    return float(np.mean(model.predict(test_X) == test_y))


# --- label noise --------------------------------------------------------------------------

def most_confusable(probabilities: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(K,) for every class, the other class its images are most often predicted as.

    probabilities: (n, K) out-of-fold predictions on the true labels (n,).
    Counts of predicted classes break ties by the summed probability.
    """
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((n_classes, n_classes))
    np.add.at(confusion, (labels, predicted), 1.0)
    mass = np.zeros((n_classes, n_classes))
    np.add.at(mass, labels, probabilities)
    score = confusion + mass / (mass.sum() + 1.0)  # the mass term is < 1: only breaks ties
    np.fill_diagonal(score, -np.inf)
    return score.argmax(axis=1)


def pair_noise(labels: np.ndarray, rate: float, pairs: np.ndarray, seed: int):
    """In every class k, round(rate * n_k) seeded random images relabelled pairs[k].

    Returns (given labels (n,), flipped (n,) bool).
    """
    rng = np.random.default_rng(seed)
    given, flipped = labels.copy(), np.zeros(labels.size, bool)
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        chosen = rng.choice(rows, size=int(round(rate * rows.size)), replace=False)
        given[chosen], flipped[chosen] = pairs[k], True
    return given, flipped


def class_pairs(data: FeatureData, cache: str | Path | None = None) -> np.ndarray:
    """`most_confusable` of the clean training set (cross-validated), cached beside its features."""
    cache = Path(cache) if cache is not None else cache_dir()
    # Keyed by the classifier's settings too: they decide which class is most confusable.
    settings = hashlib.sha256(repr(classifier()).encode()).hexdigest()[:12]
    path = cache / f"{data.name}-v{SPLIT_VERSION}-{data.model_sha256}-pairs-{settings}.json"
    if path.exists():
        return np.asarray(read_json(path)["pairs"], np.int64)
    probabilities = cross_val_probabilities(data.train_X, data.train_y)
    pairs = most_confusable(probabilities, data.train_y, data.n_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"pairs": pairs.tolist(),
                             "names": [[data.class_names[k], data.class_names[p]]
                                       for k, p in enumerate(pairs)]})
    return pairs


NOISES = {"sym20": ("symmetric", 0.2), "sym40": ("symmetric", 0.4), "pair30": ("pair", 0.3)}


def noisy_labels(data: FeatureData, noise: str, seed: int = 0):
    """(given labels (n,), flipped (n,) bool) of the training set under noise `noise` (NOISES)."""
    if noise not in NOISES:
        raise TvcleanError(f"unknown noise {noise!r}; known: {', '.join(NOISES)}")
    kind, rate = NOISES[noise]
    if kind == "symmetric":
        return flip_labels(data.train_y, rate, data.n_classes, seed)
    return pair_noise(data.train_y, rate, class_pairs(data), seed)
