"""RUN/estimates/: the Monte-Carlo training-values of the subset, written and read back.

    subset.npy, val_subset.npy   int64 row numbers into train_index.csv / val_index.csv
    mean.npy, stderr.npy         float64 per subset example (aligned with subset.npy)
    count.npy                    int64 loss drops averaged
    history.npy                  float32 (checkpoints, n_subset) running means
    history_episodes.npy         int64 episode count at each history row
    review_rows.npy              int64 training rows reviewed as correct, used as validation
    feature_center.npy           float64 (D,) centre of the feature normalisation (if any)
    values.csv                   the estimates with paths, for people
    meta.json                    configuration, episodes, steps, warnings, seconds
    checkpoint/state.npz         resumable state of the estimate stage
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..atomicfile import atomic_save_npy, atomic_write_csv, atomic_write_json, load_npy, read_json
from ..engine.estimates import Estimates
from .features import FeatureSet, load_features
from .run import RunDir

CENTER_FILE = "feature_center.npy"  # present when the features were normalised
# Artifact names of the Estimates arrays (field name -> file stem).
_FILES = {"rows": "subset", "val_rows": "val_subset", "mean": "mean", "stderr": "stderr",
          "count": "count", "history": "history", "history_episodes": "history_episodes",
          "review_rows": "review_rows"}


def save_estimates(run: RunDir, est: Estimates, features: FeatureSet, meta: dict[str, Any]) -> None:
    out = run.estimates
    for name, stem in _FILES.items():
        atomic_save_npy(out / f"{stem}.npy", getattr(est, name))
    if est.center is None:
        (out / CENTER_FILE).unlink(missing_ok=True)
    else:
        atomic_save_npy(out / CENTER_FILE, est.center)
    paths, names = features.train.given, features.class_names
    atomic_write_csv(out / "values.csv", ("path", "label", "label_index", "mc_value", "stderr",
                                          "count"),
                     ((paths[r], names[y], int(y), repr(float(m)), repr(float(s)), int(c))
                      for r, y, m, s, c in zip(est.rows, est.labels, est.mean, est.stderr,
                                                est.count)))
    atomic_write_json(out / "meta.json", {
        **meta, "episodes": est.episodes, "n_subset": int(est.rows.size),
        "n_val": int(est.val_rows.size), "seconds": est.seconds,
        "steps": int(est.count.sum()), "warnings": est.warnings})


def load_estimates(run: str | Path | RunDir, features: FeatureSet | None = None) -> Estimates:
    """Read RUN/estimates back (features: the run's, if already loaded)."""
    run = RunDir.of(run)
    run.require("estimates/meta.json", "estimate")
    out = run.estimates
    arrays = {name: load_npy(out / f"{stem}.npy") for name, stem in _FILES.items()
              if name != "review_rows" or (out / f"{stem}.npy").exists()}
    meta = read_json(out / "meta.json")
    labels = (features or load_features(run)).train.labels
    center = load_npy(out / CENTER_FILE) if (out / CENTER_FILE).exists() else None
    return Estimates(labels=labels[arrays["rows"]], episodes=int(meta["episodes"]),
                     warnings=list(meta.get("warnings", [])), seconds=float(meta["seconds"]),
                     center=center, **arrays)


def estimate_meta(run: RunDir) -> dict[str, Any]:
    return read_json(run.require("estimates/meta.json", "estimate"))
