"""Families of realistic label noise for the quality suite, each a seeded function of a data set.

A `Case` is a training set with given labels and its truth, a clean
validation set and a test set, all as cached CNN features
(benchmarks.datasets). Families (`FAMILIES`; every one takes the data set,
a seed and its own parameters):

- `symmetric`: a fraction of labels moved to a uniformly chosen other class.
- `pair`: in every class a fraction moved to the class its images are most
  often mistaken for (cross-validated on the clean training set).
- `labeller`: labels from a cheap classifier (logistic regression or 1-NN on
  block-averaged raw pixels, another representation than the CNN's) fit on a
  few correctly labelled images per class; its mistakes follow the images'
  appearance, so similar images share the same wrong label.
- `openset`: some classes are left out of the label set; images of them
  replace a fraction of the training images and get an in-set label (at
  random, or the in-set class they look most like). With `outliers="digits"`
  (Fashion-MNIST only) the foreign images are scikit-learn digits.
- `longtail`: class sizes fall geometrically from the largest to the smallest
  (ratio >= 20:1 in the suite), then symmetric or pair noise.
- `fewval`: only a few validation images per class, then symmetric or pair noise.
- `uneven`: noise in some classes only (the others keep every label).
- `catchall`: many-to-one noise (a share of every class labelled as one class).
- `ambiguous`: instance-dependent noise (the images that look most like
  another class get that class, as annotators err).
- `valuneven`: validation classes of unequal sizes (from all the data set has
  down to a few images), then symmetric or pair noise.
- `small`: a small training set (a few dozen images per class), then noise.

Truth: `true` is the true class of every training image (-1: an image of no
class in the label set); an image is noisy when its given label differs.
The test set holds the label set's classes only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from tvcore.stages.demo import flip_labels

from .datasets import (
    DATASETS,
    FeatureData,
    cache_dir,
    classifier,
    cross_val_probabilities,
    load_features,
    most_confusable,
    pair_noise,
)

# Independent random streams per family, derived from the case seed.
_STREAMS = {"noise": 1, "subsample": 2, "labeller": 3, "openset": 4, "val": 5, "uneven": 6,
            "catchall": 7, "ambiguous": 8, "valsizes": 9, "small": 10}


@dataclass
class Case:
    """One benchmark case: features (n, D) float32 and labels of train / val / test."""

    name: str
    dataset: str
    train_X: np.ndarray
    given: np.ndarray  # (n,) int64 labels the method sees
    true: np.ndarray  # (n,) int64 true class, -1 for an image of no class in the label set
    val_X: np.ndarray
    val_y: np.ndarray
    test_X: np.ndarray
    test_y: np.ndarray
    class_names: list[str]
    info: dict = field(default_factory=dict)

    @property
    def noisy(self) -> np.ndarray:
        """(n,) bool: the given label is wrong (outliers included)."""
        return self.given != self.true

    @property
    def outlier(self) -> np.ndarray:
        return self.true < 0

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        sizes = np.bincount(self.given, minlength=self.n_classes)
        text = (f"{self.name}: {self.given.size} train ({sizes.min()}..{sizes.max()} per given "
                f"label), {self.val_y.size} val, {self.test_y.size} test, "
                f"{self.noisy.mean():.1%} noisy")
        if self.outlier.any():
            text += f" ({self.outlier.mean():.1%} of no class)"
        return text


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream]])


def _base(data: FeatureData, name: str, rows=None, classes=None) -> dict:
    """Case fields from a data set, keeping training rows `rows` and classes `classes`."""
    classes = np.arange(data.n_classes) if classes is None else np.asarray(classes)
    remap = np.full(data.n_classes, -1, np.int64)
    remap[classes] = np.arange(classes.size)
    rows = np.arange(data.train_y.size) if rows is None else np.asarray(rows)
    val = np.flatnonzero(remap[data.val_y] >= 0)
    test = np.flatnonzero(remap[data.test_y] >= 0)
    true = remap[data.train_y[rows]]
    return dict(name=name, dataset=data.name, train_X=data.train_X[rows], given=true.copy(),
                true=true, val_X=data.val_X[val], val_y=remap[data.val_y[val]],
                test_X=data.test_X[test], test_y=remap[data.test_y[test]],
                class_names=[data.class_names[k] for k in classes])


# --- confusion between classes, for pair noise ----------------------------------------------

@functools.cache
def clean_probabilities(dataset: str) -> np.ndarray:
    """(n_train, K) out-of-fold probabilities of the benchmark classifier on the clean labels
    (cached beside the features)."""
    data = load_features(dataset)
    path = cache_dir() / f"{dataset}-v1-{data.model_sha256}-cvprob.npy"
    if path.exists():
        return np.load(path)
    probabilities = cross_val_probabilities(data.train_X, data.train_y)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, probabilities)
    return probabilities


def confusable_pairs(dataset: str, classes=None) -> np.ndarray:
    """(K',) most confusable class among `classes` (indices into `classes`) of each of them."""
    data = load_features(dataset)
    classes = np.arange(data.n_classes) if classes is None else np.asarray(classes)
    probabilities = clean_probabilities(dataset)
    keep = np.isin(data.train_y, classes)
    remap = np.full(data.n_classes, -1)
    remap[classes] = np.arange(classes.size)
    return most_confusable(probabilities[keep][:, classes], remap[data.train_y[keep]],
                           classes.size)


def _apply_noise(fields: dict, kind: str, rate: float, seed: int, pairs=None) -> None:
    """Symmetric or pair noise on fields["given"] (images of a class only, not outliers)."""
    rng_seed = int(_rng(seed, "noise").integers(2**31))
    inset = fields["true"] >= 0
    true = fields["true"][inset]
    k = len(fields["class_names"])
    if kind == "symmetric":
        given, _ = flip_labels(true, rate, k, rng_seed)
    elif kind == "pair":
        given, _ = pair_noise(true, rate, pairs, rng_seed)
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    fields["given"][inset] = given


# --- the families ---------------------------------------------------------------------------

def symmetric(dataset: str, seed: int, rate: float = 0.2) -> Case:
    data = load_features(dataset)
    fields = _base(data, f"{dataset} symmetric {rate:.0%}")
    _apply_noise(fields, "symmetric", rate, seed)
    return Case(**fields)


def pair(dataset: str, seed: int, rate: float = 0.3) -> Case:
    data = load_features(dataset)
    fields = _base(data, f"{dataset} pair {rate:.0%}")
    _apply_noise(fields, "pair", rate, seed, confusable_pairs(dataset))
    return Case(**fields)


@functools.cache
def raw_pixels(dataset: str, block: int) -> np.ndarray:
    """(n_train, d) float32 training images averaged over block x block pixel tiles, scaled to
    0..1, in the order of the cached features' training rows."""
    images = DATASETS[dataset]().train[0].astype(np.float32) / 255.0
    n, h, w = images.shape
    h2, w2 = h // block, w // block
    tiles = images[:, :h2 * block, :w2 * block].reshape(n, h2, block, w2, block)
    return tiles.mean(axis=(2, 4)).reshape(n, h2 * w2)


def labeller(dataset: str, seed: int, fit_per_class: int = 10, model: str = "logistic",
             block: int | None = None, fraction: float = 1.0) -> Case:
    """Labels from a cheap classifier on raw pixels fit on `fit_per_class` images per class.

    model: "logistic" (multinomial logistic regression on standardised pixels)
    or "1nn" (nearest neighbour); block: pixel tile size (default: 4 for
    28x28 images, 2 for 8x8); fraction: share of the images labelled by it
    (the others keep their true label).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_features(dataset)
    block = block or (4 if dataset == "fashion" else 2)
    pixels = raw_pixels(dataset, block)
    fields = _base(data, f"{dataset} labeller {model} {fit_per_class}/class"
                   + (f" on {fraction:.0%}" if fraction < 1 else ""))
    rng = _rng(seed, "labeller")
    fit = np.concatenate([rng.choice(np.flatnonzero(data.train_y == k), fit_per_class,
                                     replace=False) for k in range(data.n_classes)])
    if model == "logistic":
        cheap = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    elif model == "1nn":
        cheap = KNeighborsClassifier(1)
    else:
        raise ValueError(f"unknown labeller model {model!r}")
    cheap.fit(pixels[fit], data.train_y[fit])
    labelled = np.sort(rng.choice(data.train_y.size, int(round(fraction * data.train_y.size)),
                                  replace=False))
    fields["given"][labelled] = cheap.predict(pixels[labelled])
    fields["info"] = {"labeller_fit_rows": fit}
    return Case(**fields)


def openset(dataset: str, seed: int, held_out: int = 3, rate: float = 0.2,
            labelling: str = "nearest", outliers: str = "classes", noise: float = 0.0) -> Case:
    """A fraction `rate` of the training images replaced by images of no class in the label set.

    held_out: classes left out of the label set (outliers="classes": their
    images are the outliers); outliers="digits": scikit-learn digits images
    are the outliers and every class stays in the label set. labelling: the
    outliers' given labels, "random" (uniform over the label set) or
    "nearest" (the class a classifier of the clean in-set images gives them).
    noise: symmetric noise on the in-set images, too.
    """
    data = load_features(dataset)
    rng = _rng(seed, "openset")
    if outliers == "classes":
        out_classes = np.sort(rng.choice(data.n_classes, held_out, replace=False))
        classes = np.setdiff1d(np.arange(data.n_classes), out_classes)
        pool_X = data.train_X[np.isin(data.train_y, out_classes)]
        what = "+".join(data.class_names[k] for k in out_classes)
    elif outliers == "digits":
        classes = np.arange(data.n_classes)
        digits = load_features("digits")
        pool_X = np.concatenate([digits.train_X, digits.val_X, digits.test_X])
        what = "digits"
    else:
        raise ValueError(f"unknown outliers {outliers!r}")
    inset_rows = np.flatnonzero(np.isin(data.train_y, classes))
    n_out = int(round(rate * inset_rows.size))
    if n_out > len(pool_X):
        raise ValueError(f"only {len(pool_X)} outlier images for {n_out}")
    keep = np.sort(rng.choice(inset_rows, inset_rows.size - n_out, replace=False))
    fields = _base(data, f"{dataset} open-set {rate:.0%} {what}, {labelling} labels"
                   + (f", {noise:.0%} symmetric" if noise else ""), rows=keep, classes=classes)
    if noise:
        _apply_noise(fields, "symmetric", noise, seed)
    out_X = pool_X[rng.choice(len(pool_X), n_out, replace=False)]
    if labelling == "random":
        out_given = rng.integers(0, classes.size, n_out)
    elif labelling == "nearest":
        model = classifier(seed).fit(fields["train_X"][fields["true"] >= 0],
                                     fields["true"][fields["true"] >= 0])
        out_given = model.predict(out_X)
    else:
        raise ValueError(f"unknown labelling {labelling!r}")
    order = rng.permutation(keep.size + n_out)  # outliers mixed in, not appended
    fields["train_X"] = np.concatenate([fields["train_X"], out_X])[order]
    fields["given"] = np.concatenate([fields["given"], out_given]).astype(np.int64)[order]
    fields["true"] = np.concatenate([fields["true"], np.full(n_out, -1)]).astype(np.int64)[order]
    return Case(**fields)


def longtail(dataset: str, seed: int, ratio: float = 20.0, kind: str = "pair",
             rate: float = 0.25) -> Case:
    """Class sizes n_max * ratio^(-r/(K-1)) for the classes in a seeded order r, then noise."""
    data = load_features(dataset)
    rng = _rng(seed, "subsample")
    k = data.n_classes
    largest = int(np.bincount(data.train_y).min())
    rank = rng.permutation(k)
    sizes = np.maximum(1, np.round(largest * ratio ** (-rank / (k - 1)))).astype(int)
    rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(data.train_y == c), sizes[c],
                                              replace=False) for c in range(k)]))
    fields = _base(data, f"{dataset} long-tail {ratio:g}:1 ({largest}->{sizes.min()}), "
                   f"{kind} {rate:.0%}", rows=rows)
    _apply_noise(fields, kind, rate, seed, confusable_pairs(dataset) if kind == "pair" else None)
    fields["info"] = {"sizes": sizes}
    return Case(**fields)


def fewval(dataset: str, seed: int, per_class: int = 20, kind: str = "symmetric",
           rate: float = 0.3) -> Case:
    """Only `per_class` validation images per class (seeded), then symmetric or pair noise."""
    data = load_features(dataset)
    fields = _base(data, f"{dataset} {per_class} val/class, {kind} {rate:.0%}")
    rng = _rng(seed, "val")
    chosen = np.sort(np.concatenate([rng.choice(np.flatnonzero(fields["val_y"] == c), per_class,
                                                replace=False)
                                     for c in range(data.n_classes)]))
    fields["val_X"], fields["val_y"] = fields["val_X"][chosen], fields["val_y"][chosen]
    _apply_noise(fields, kind, rate, seed, confusable_pairs(dataset) if kind == "pair" else None)
    return Case(**fields)


def uneven(dataset: str, seed: int, clean_share: float = 0.5, kind: str = "symmetric",
           rate: float = 0.4) -> Case:
    """Noise in some classes only: a seeded `clean_share` of the classes keep every label, the
    others lose a fraction `rate` of theirs (symmetric or pair noise), as when some search
    queries are precise and others are not."""
    data = load_features(dataset)
    fields = _base(data, f"{dataset} {kind} {rate:.0%} in {1 - clean_share:.0%} of the classes")
    true = fields["true"]
    keep = fields["given"].copy()
    _apply_noise(fields, kind, rate, seed, confusable_pairs(dataset) if kind == "pair" else None)
    n_clean = int(round(clean_share * data.n_classes))
    clean = _rng(seed, "uneven").choice(data.n_classes, n_clean, replace=False)
    untouched = np.isin(true, clean)
    fields["given"][untouched] = keep[untouched]
    fields["info"] = {"clean_classes": sorted(int(c) for c in clean)}
    return Case(**fields)


@functools.cache
def catchall(dataset: str, seed: int, rate: float = 0.15) -> Case:
    """Many-to-one noise: a fraction `rate` of the images of every other class carry the label
    of one seeded class, as when one broad search query collects images of everything."""
    data = load_features(dataset)
    fields = _base(data, f"{dataset} {rate:.0%} of every class labelled as one")
    rng = _rng(seed, "catchall")
    target = int(rng.integers(data.n_classes))
    true = fields["true"]
    moved = (true >= 0) & (true != target) & (rng.random(true.size) < rate)
    fields["given"][moved] = target
    fields["info"] = {"catch_all_class": target}
    return Case(**fields)


def ambiguous(dataset: str, seed: int, rate: float = 0.2) -> Case:
    """Instance-dependent noise: annotators err on the images that look like another class.

    A fraction `rate` of the images, drawn with weight 1 - p(true class) (a
    classifier's out-of-fold probability on the clean labels, in the CNN's own
    feature space), get the other class that classifier finds most likely.
    """
    data = load_features(dataset)
    fields = _base(data, f"{dataset} ambiguous images mislabelled, {rate:.0%}")
    probabilities = clean_probabilities(dataset)
    true = fields["true"]
    weight = np.clip(1.0 - probabilities[np.arange(true.size), true], 1e-6, None)
    n_flip = int(round(rate * true.size))
    flipped = _rng(seed, "ambiguous").choice(true.size, n_flip, replace=False,
                                              p=weight / weight.sum())
    others = probabilities[flipped].copy()
    others[np.arange(n_flip), true[flipped]] = -1.0
    fields["given"][flipped] = others.argmax(axis=1)
    return Case(**fields)


def valuneven(dataset: str, seed: int, fewest: int = 5, kind: str = "symmetric",
              rate: float = 0.3) -> Case:
    """Validation classes of unequal sizes: in a seeded order they fall geometrically from all
    the data set's validation images of a class to `fewest`, then symmetric or pair noise
    (a validation set put together from whatever clean images each class had)."""
    data = load_features(dataset)
    fields = _base(data, f"{dataset} val {fewest}..all per class, {kind} {rate:.0%}")
    rng = _rng(seed, "valsizes")
    k = data.n_classes
    most = int(np.bincount(fields["val_y"]).min())
    rank = rng.permutation(k)
    sizes = np.round(most * (fewest / most) ** (rank / (k - 1))).astype(int)
    chosen = np.sort(np.concatenate([rng.choice(np.flatnonzero(fields["val_y"] == c), sizes[c],
                                                replace=False) for c in range(k)]))
    fields["val_X"], fields["val_y"] = fields["val_X"][chosen], fields["val_y"][chosen]
    _apply_noise(fields, kind, rate, seed, confusable_pairs(dataset) if kind == "pair" else None)
    fields["info"] = {"val_sizes": sizes}
    return Case(**fields)


def small(dataset: str, seed: int, per_class: int = 50, kind: str = "symmetric",
          rate: float = 0.3) -> Case:
    """A small training set: `per_class` images of every class (seeded), then noise."""
    data = load_features(dataset)
    rng = _rng(seed, "small")
    rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(data.train_y == c), per_class,
                                              replace=False) for c in range(data.n_classes)]))
    fields = _base(data, f"{dataset} {per_class} training images per class, {kind} {rate:.0%}",
                   rows=rows)
    _apply_noise(fields, kind, rate, seed, confusable_pairs(dataset) if kind == "pair" else None)
    return Case(**fields)


FAMILIES = {"symmetric": symmetric, "pair": pair, "labeller": labeller, "openset": openset,
            "longtail": longtail, "fewval": fewval, "uneven": uneven, "catchall": catchall,
            "ambiguous": ambiguous, "valuneven": valuneven, "small": small}


@dataclass(frozen=True)
class CaseSpec:
    """A named case of the suite: a family with its parameters on a data set."""

    key: str
    dataset: str
    family: str
    params: tuple = ()

    def build(self, seed: int) -> Case:
        return FAMILIES[self.family](self.dataset, seed, **dict(self.params))


def _spec(key, dataset, family, **params) -> CaseSpec:
    return CaseSpec(key, dataset, family, tuple(sorted(params.items())))


SUITE = [
    _spec("f-sym20", "fashion", "symmetric", rate=0.2),
    _spec("f-sym40", "fashion", "symmetric", rate=0.4),
    _spec("f-pair30", "fashion", "pair", rate=0.3),
    _spec("f-lab-lr", "fashion", "labeller", fit_per_class=10, model="logistic"),
    _spec("f-lab-1nn", "fashion", "labeller", fit_per_class=20, model="1nn", fraction=0.5),
    _spec("f-open-near", "fashion", "openset", held_out=3, rate=0.2, labelling="nearest"),
    _spec("f-open-rand", "fashion", "openset", held_out=2, rate=0.15, labelling="random",
          noise=0.1),
    _spec("f-open-digits", "fashion", "openset", rate=0.1, labelling="random",
          outliers="digits"),
    _spec("f-tail-pair", "fashion", "longtail", ratio=20.0, kind="pair", rate=0.25),
    _spec("f-tail-sym", "fashion", "longtail", ratio=30.0, kind="symmetric", rate=0.2),
    _spec("f-val20-sym", "fashion", "fewval", per_class=20, kind="symmetric", rate=0.3),
    _spec("f-val20-pair", "fashion", "fewval", per_class=20, kind="pair", rate=0.25),
    _spec("d-sym20", "digits", "symmetric", rate=0.2),
    _spec("d-pair30", "digits", "pair", rate=0.3),
    _spec("d-lab-lr", "digits", "labeller", fit_per_class=5, model="logistic"),
    _spec("d-open-near", "digits", "openset", held_out=3, rate=0.2, labelling="nearest"),
    _spec("d-tail-pair", "digits", "longtail", ratio=20.0, kind="pair", rate=0.25),
    _spec("d-val10-sym", "digits", "fewval", per_class=10, kind="symmetric", rate=0.3),
]
# Low, absent and uneven noise (where a cleaner's false alarms are most of what it does) and
# many-to-one noise.
EXTRA = [
    _spec("f-sym5", "fashion", "symmetric", rate=0.05),
    _spec("f-clean", "fashion", "symmetric", rate=0.0),
    _spec("f-uneven-sym", "fashion", "uneven", clean_share=0.5, kind="symmetric", rate=0.4),
    _spec("f-uneven-pair", "fashion", "uneven", clean_share=0.7, kind="pair", rate=0.3),
    _spec("d-sym5", "digits", "symmetric", rate=0.05),
    _spec("d-uneven-pair", "digits", "uneven", clean_share=0.5, kind="pair", rate=0.3),
    _spec("f-catchall", "fashion", "catchall", rate=0.15),
    _spec("d-catchall", "digits", "catchall", rate=0.15),
    _spec("f-ambig20", "fashion", "ambiguous", rate=0.2),
    _spec("d-ambig20", "digits", "ambiguous", rate=0.2),
    _spec("f-valuneven-sym", "fashion", "valuneven", fewest=5, kind="symmetric", rate=0.3),
    _spec("f-valuneven-pair", "fashion", "valuneven", fewest=5, kind="pair", rate=0.25),
    _spec("d-valuneven-sym", "digits", "valuneven", fewest=5, kind="symmetric", rate=0.3),
    _spec("f-small-sym", "fashion", "small", per_class=50, kind="symmetric", rate=0.3),
    _spec("f-small-pair", "fashion", "small", per_class=100, kind="pair", rate=0.3),
]
QUICK = ["d-sym20", "d-lab-lr", "d-open-near", "d-tail-pair", "f-lab-lr"]
