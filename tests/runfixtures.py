"""Build run directories with given feature arrays (the `extract` stage's contract)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tvcore.atomicfile import atomic_save_npy, atomic_write_json
from tvcore.rundir import RunDir
from tvcore.rundir.ownership import claim
from tvcore.rundir.tables import write_index


def write_split(run: RunDir, name: str, features, labels, class_names, ok=None, root="/data",
                write_files=False):
    features = np.asarray(features, np.float32)
    ok = np.ones(len(labels), bool) if ok is None else np.asarray(ok)
    features = np.where(ok[:, None], features, 0).astype(np.float32)
    atomic_save_npy(run.features / f"{name}.npy", features)
    given, paths = [], []
    for i, label in enumerate(labels):
        relative = f"{class_names[label]}/img{i:05d}.png"
        path = f"{root}/{name}/{relative}"
        if write_files:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (4, 4), color=i % 256).save(path)
        given.append(relative)
        paths.append(path)
    errors = {i: "cannot identify image file" for i, good in enumerate(ok) if not good}
    write_index(run.features / f"{name}_index.csv", given, paths, [int(y) for y in labels],
                class_names, errors)


def make_feature_run(root: Path, train_features, train_labels, val_features, val_labels,
                     class_names=None, train_ok=None, data_root=None) -> RunDir:
    """A run directory holding RUN/features as `tvclean extract` writes it.

    data_root: if given, tiny PNG files are written there at the indexed paths
    (DATA/train/<class>/imgNNNNN.png), as real inputs for the filter stage.
    """
    n_classes = int(max(np.max(train_labels), np.max(val_labels))) + 1
    class_names = class_names or [f"class{k}" for k in range(n_classes)]
    run = RunDir(root)
    claim(run.root)
    files = dict(root=str(data_root), write_files=True) if data_root else {}
    write_split(run, "train", train_features, train_labels, class_names, train_ok, **files)
    write_split(run, "val", val_features, val_labels, class_names, **files)
    meta = {"classes": class_names, "dim": int(np.shape(train_features)[1]),
            "model": {"name": "synthetic", "sha256": "", "preprocessing": {}}}
    if data_root:
        meta.update(train_root=str(Path(data_root) / "train"), val_root=str(Path(data_root) / "val"))
    atomic_write_json(run.features / "meta.json", meta)
    return run


def clustered_features(rng, n_per_class, n_classes, dim, noise=0.6, flip=0.0):
    """Non-negative features around one centre per class; returns features, labels, flipped."""
    centres = rng.gamma(1.0, 1.0, (n_classes, dim))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    features = centres[labels] + noise * rng.gamma(1.0, 1.0, (labels.size, dim))
    flipped = rng.random(labels.size) < flip
    given = labels.copy()
    given[flipped] = (labels[flipped] + rng.integers(1, n_classes, flipped.sum())) % n_classes
    return features.astype(np.float32), given, flipped
