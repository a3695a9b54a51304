"""The run directory: every stage reads its inputs from and writes its artifacts to RUN/.

Layout (the contract between stages):

    RUN/config.toml              effective configuration of every stage that ran
    RUN/log.txt                  one line per event, appended by every stage
    RUN/features/
        train.npy, val.npy       float32 (rows, D) feature matrices, one row per index row
                                 (rows of failed images are zero; see status)
        train_index.csv,         path,label,class_name,status,error
        val_index.csv              (path as given/discovered; status "ok" or "error")
        meta.json                classes, dim, model identity (name, sha256, preprocessing)
    RUN/estimates/
        subset.npy               int64 row numbers into train_index.csv of the MC subset
        val_subset.npy           int64 row numbers into val_index.csv
        mean.npy, stderr.npy,    float64 per subset example (aligned with subset.npy)
        count.npy                int64
        history.npy              float32 (checkpoints, n_subset) running means
        history_episodes.npy     int64 episode count at each history row
        feature_center.npy       float64 (D,) centre of the feature normalisation (if any)
        values.csv               the estimates with paths, for people
        checkpoint/              resumable state (sums, sums of squares, episodes done)
        meta.json                configuration and timing
    RUN/finetune/                model.onnx + model.json of `tvclean finetune` (if it ran)
    RUN/valuenets/               class_<k>.npz weights (no pickle) + meta.json
    RUN/training_values.csv      one row per training image: path, label, class_name,
                                 predicted_value, mc_value, mc_stderr, mc_count, score,
                                 decision, suggested_label
    RUN/evaluation.json          the last `tvclean evaluate` against a truth file
    RUN/clean/, RUN/dirty/       the split data set
    RUN/report/                  index.html + PNG plots

All writes are atomic: a temp file in the same folder, then rename.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..config import Config, SECTIONS, dump_toml
from ..errors import TvcleanError

FEATURES = "features"
ESTIMATES = "estimates"
VALUENETS = "valuenets"
REPORT = "report"
TRAINING_VALUES = "training_values.csv"


class RunDir:
    """Paths of one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @property
    def features(self) -> Path:
        return self.root / FEATURES

    @property
    def estimates(self) -> Path:
        return self.root / ESTIMATES

    @property
    def valuenets(self) -> Path:
        return self.root / VALUENETS

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def training_values(self) -> Path:
        return self.root / TRAINING_VALUES

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def log_path(self) -> Path:
        return self.root / "log.txt"

    def require(self, relative: str, stage: str) -> Path:
        """Return RUN/relative, or fail telling which stage produces it."""
        path = self.root / relative
        if not path.exists():
            raise TvcleanError(f"{path} not found: run `tvclean {stage}` on {self.root} first")
        return path

    def log(self, message: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {message}\n")

    def save_config(self, config: Config, sections: Iterable[str]) -> None:
        """Merge the given sections of `config` into RUN/config.toml."""
        data: dict[str, dict[str, Any]] = {}
        if self.config_path.exists():
            import tomllib
            data = tomllib.loads(self.config_path.read_text(encoding="utf-8"))
        full = config.to_dict()
        for name in sections:
            data[name] = full[name]
        ordered = {name: data[name] for name in SECTIONS if name in data}
        atomic_write_text(self.config_path, dump_toml(ordered))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def atomic_write_with(path: str | Path, write) -> None:
    """Call write(fh) on a temp file beside `path`, then rename it into place.

    If write raises, nothing is left behind and `path` is untouched.
    """
    _atomic_write(Path(path), write)


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic_write(Path(path), lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    _atomic_write(Path(path), lambda fh: np.save(fh, np.asarray(array), allow_pickle=False))


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    _atomic_write(Path(path), lambda fh: np.savez(fh, **arrays))


def atomic_write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TvcleanError(f"{path} not found") from None
    except json.JSONDecodeError as exc:
        raise TvcleanError(f"{path}: corrupt JSON ({exc})") from None


def read_csv(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except FileNotFoundError:
        raise TvcleanError(f"{path} not found") from None


def load_npy(path: str | Path, mmap: bool = False) -> np.ndarray:
    path = Path(path)
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise TvcleanError(f"{path} not found") from None
    except ValueError as exc:
        raise TvcleanError(f"{path}: not a valid .npy file ({exc})") from None
