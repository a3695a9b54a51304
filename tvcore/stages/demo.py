"""The embedded demo: real Fashion-MNIST photos with a known 20% of labels flipped.

The archive tvcore/data/fashion-mnist-demo.npz holds 250 training images per
class (from the official training split) and 50 validation images per class
(from the official test split); see tvcore/data/README.md for its licence.
`materialize` writes them as PNG class folders with flipped training labels
and a truth file; `run_demo` cleans them and scores the result. The archive is
built from the Debian package dataset-fashion-mnist by
benchmarks/fashion_mnist.py (build_archive).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomicfile import atomic_write_csv, atomic_write_json
from ..config import Config
from ..errors import TvcleanError, os_error_cause
from ..io.demoarchive import load_archive
from ..rundir.ownership import DEMO_MARKER

CLASS_NAMES = ["tshirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
               "sneaker", "bag", "ankle-boot"]
DEMO_NOISE = 0.2
DEMO_SEED = 0


def flip_labels(labels: np.ndarray, noise: float, n_classes: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric noise: a `noise` fraction of labels moved to a uniformly chosen other class."""
    rng = np.random.default_rng(seed)
    flipped = np.zeros(labels.size, bool)
    flipped[rng.choice(labels.size, size=int(round(noise * labels.size)), replace=False)] = True
    given = labels.copy()
    given[flipped] = (labels[flipped] + rng.integers(1, n_classes, flipped.sum())) % n_classes
    return given, flipped


def _write_images(folder: Path, images: np.ndarray, labels: np.ndarray,
                  prefix: str) -> list[Path]:
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
    is_mislabeled and true_label, for `tvclean evaluate`. A DATA folder that
    is complete already (truth.csv is written last) is left as it is.
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


def claim_demo_folder(out: Path) -> None:
    """OUT must be new, empty, or an earlier demo's folder (its marker says so)."""
    if out.exists() and not out.is_dir():
        raise TvcleanError(f"{out} is a file, not a folder (-o/--out)")
    if (out / DEMO_MARKER).is_file():
        return
    if out.is_dir() and any(out.iterdir()):
        raise TvcleanError(f"{out} is not empty and is not a tvclean demo folder; choose a new "
                           f"or empty folder for the demo (-o/--out)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / DEMO_MARKER, {"tvclean_demo": 1})
    except OSError as exc:
        raise TvcleanError(f"cannot create the demo folder {out}: "
                           f"{os_error_cause(exc)}") from None


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
    from .clean import clean
    from .evaluate import evaluate
    from .report import write_report

    if not str(out).strip():
        raise TvcleanError("-o/--out must name a folder")
    out = Path(out)
    config = config or demo_config()
    claim_demo_folder(out)
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
        write_report(out / "run", config, progress)
        seconds["report"] = time.perf_counter() - started
    config.report.enabled = with_report
    return DemoResult(data=data, run=out / "run", metrics=evaluation.to_dict()["overall"],
                      seconds=seconds)
