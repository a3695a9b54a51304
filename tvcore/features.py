"""The `extract` stage: images -> CNN features in RUN/features/.

Decoding runs in a thread pool a couple of batches ahead of onnxruntime, so
the CPU decodes the next batch while the model runs on this one. Work is
checkpointed per batch into `<split>.npy.partial` plus a progress record;
re-running finishes an interrupted run (even one killed with -9) and skips a
finished one. See tvcore.rundir for the artifacts' layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from . import __version__
from .config import Config, ExtractConfig
from .dataset import Dataset, SplitFiles, discover
from .errors import TvcleanError
from .featureset import INDEX_HEADER
from .images import load_image
from .modelzoo import ModelSpec, resolve_model
from .progress import Progress
from .rundir import RunDir, atomic_write_csv, atomic_write_json, read_csv, read_json

CHECKPOINT_SECONDS = 2.0  # at most this much work is redone after a kill
PREFETCH_BATCHES = 2


@dataclass
class SplitSummary:
    """What extraction did for one split; errors: (path, error) of the failed images."""

    name: str
    images: int
    failed: int
    skipped: dict[str, int]
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> int:
        return self.images - self.failed

    def counts(self) -> dict[str, Any]:
        return {"images": self.images, "ok": self.ok, "failed": self.failed,
                "skipped": dict(self.skipped)}


@dataclass
class ExtractSummary:
    """The result of `extract`: features of both splits are in run/features/."""

    run: Path
    classes: list[str]
    dim: int
    model: dict[str, Any]
    splits: dict[str, SplitSummary]
    up_to_date: bool = False  # True: an earlier run had already finished everything

    def to_dict(self) -> dict[str, Any]:
        return {"run": str(self.run), "classes": self.classes, "dim": self.dim,
                "model": self.model, "up_to_date": self.up_to_date,
                "splits": {name: {**s.counts(), "seconds": round(s.seconds, 3),
                                  "errors": [list(e) for e in s.errors]}
                           for name, s in self.splits.items()}}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class FeatureExtractor:
    """One model in onnxruntime, fed by a pool of image-decoding threads.

    threads: onnxruntime intra-op threads (0 = all cores). decode_workers:
    decoding threads (0 = automatic). Use as a context manager.
    """

    def __init__(self, model: ModelSpec, batch_size: int = 32, threads: int = 0,
                 decode_workers: int = 0, max_pixels: int = 89_478_485):
        self.model = model
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        cores = available_cores()
        self.session = _open_session(model, threads or cores)
        self.input_name, self.output_name = _io_names(self.session, model)
        self.dim = self._probe_dim()
        self.pool = ThreadPoolExecutor(decode_workers or cores, thread_name_prefix="tvclean-decode")

    def __enter__(self) -> "FeatureExtractor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def features(self, images: np.ndarray) -> np.ndarray:
        """(n, 3, S, S) float32 preprocessed images -> (n, D) float32 features."""
        out = self.session.run([self.output_name], {self.input_name: images})[0]
        return out.reshape(len(images), -1).astype(np.float32, copy=False)

    def iter_batches(self, paths: list[str], start: int = 0
                     ) -> Iterator[tuple[int, np.ndarray, dict[int, str]]]:
        """Yield (first row, (b, D) features, {row: error}) for paths[start:], in order.

        Rows of images that failed to decode are zero.
        """
        for first, decoded in self._decoded_batches(paths, start):
            errors = {first + i: r for i, r in enumerate(decoded) if isinstance(r, str)}
            good = [i for i, r in enumerate(decoded) if not isinstance(r, str)]
            features = np.zeros((len(decoded), self.dim), dtype=np.float32)
            if good:
                features[good] = self.features(np.stack([decoded[i] for i in good]))
            yield first, features, errors

    def _decoded_batches(self, paths: list[str], start: int) -> Iterator[tuple[int, list]]:
        """Decoded batches in order, keeping PREFETCH_BATCHES batches in flight."""
        firsts = iter(range(start, len(paths), self.batch_size))
        pending = deque(self._submit(paths, first) for first in islice(firsts, PREFETCH_BATCHES))
        while pending:
            first, futures = pending.popleft()
            following = next(firsts, None)
            if following is not None:
                pending.append(self._submit(paths, following))
            yield first, [future.result() for future in futures]

    def _submit(self, paths: list[str], first: int):
        prep, limit = self.model.preprocess, self.max_pixels
        return first, [self.pool.submit(load_image, path, prep, limit)
                       for path in paths[first:first + self.batch_size]]

    def _probe_dim(self) -> int:
        size = self.model.preprocess.size
        try:
            out = self.session.run([self.output_name], {
                self.input_name: np.zeros((1, 3, size, size), dtype=np.float32)})[0]
        except Exception as exc:  # onnxruntime raises its own exception types
            raise TvcleanError(f"model {self.model.path} does not accept (1, 3, {size}, {size}) "
                               f"float32 input: {_one_line(exc)}") from None
        if out.ndim < 2 or out.shape[0] != 1 or int(np.prod(out.shape[2:])) != 1:
            raise TvcleanError(f"model {self.model.path}: output {self.output_name!r} has shape "
                               f"{list(out.shape)} for one image; expected (N, D) features")
        return int(out.shape[1])


def _open_session(model: ModelSpec, threads: int):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning worker threads would steal the cores the decoders need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise TvcleanError(f"cannot load model {model.path}: {_one_line(exc)}") from None


def _io_names(session, model: ModelSpec) -> tuple[str, str]:
    """The input and features-output names, per the model contract."""
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    input_name = model.input or inputs[0]
    output_name = model.output or ("features" if "features" in outputs else outputs[0])
    if input_name not in inputs:
        raise TvcleanError(f"model {model.path} has no input {input_name!r} (inputs: {inputs})")
    if output_name not in outputs:
        raise TvcleanError(f"model {model.path} has no output {output_name!r} (outputs: {outputs})")
    return input_name, output_name


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def extract(train: str | Path, val: str | Path | None, run: str | Path | RunDir,
            config: ExtractConfig | None = None, progress: bool | None = None) -> ExtractSummary:
    """Extract features of the train and val images into RUN/features/.

    train, val: class-folder roots or .csv manifests (val None: train holds
    train/ and val/, or is a manifest with a split column). progress: draw
    progress bars (None: when stderr is a terminal). Re-running resumes an
    interrupted run and skips a finished one.
    """
    config = (config or ExtractConfig()).validate()
    run = run if isinstance(run, RunDir) else RunDir(run)
    dataset = discover(train, val)
    model = resolve_model(config.model)
    fingerprint = _fingerprint(dataset, model, config.max_pixels)
    done = _finished_summary(run, fingerprint)
    if done is not None:
        run.log("extract: features are up to date, nothing to do")
        return done
    run.features.mkdir(parents=True, exist_ok=True)
    run.save_config(Config(extract=config), ["extract"])
    run.log(f"extract: model {model.name} ({model.sha256[:12]}), {len(dataset.train)} train and "
            f"{len(dataset.val)} val images, {len(dataset.classes)} classes")
    with FeatureExtractor(model, config.batch_size, config.threads, config.decode_workers,
                          config.max_pixels) as extractor:
        splits = {s.name: _extract_split(run, s, dataset.classes, extractor, fingerprint, progress)
                  for s in dataset.splits}
    summary = ExtractSummary(run=run.root, classes=dataset.classes, dim=extractor.dim,
                             model=model.identity(), splits=splits)
    _write_meta(run, summary, dataset, fingerprint, config.max_pixels)
    for split in dataset.splits:
        _state_path(run, split.name).unlink(missing_ok=True)
    for s in splits.values():
        run.log(f"extract: {s.name}: {s.ok} images, {s.failed} failed, "
                f"{sum(s.skipped.values())} files skipped, {s.seconds:.1f}s")
    return summary


def _fingerprint(dataset: Dataset, model: ModelSpec, max_pixels: int) -> str:
    """Identifies the work: model, preprocessing, classes and every (path, label)."""
    digest = hashlib.sha256()
    head = {"model": model.sha256, "output": model.output, "prep": model.preprocess.to_dict(),
            "max_pixels": max_pixels, "classes": dataset.classes}
    digest.update(json.dumps(head, sort_keys=True).encode())
    for split in dataset.splits:
        digest.update(f"\0{split.name}\0".encode())
        for path, label in zip(split.paths, split.labels.tolist()):
            digest.update(f"{path}\t{label}\n".encode())
    return digest.hexdigest()


def _finished_summary(run: RunDir, fingerprint: str) -> ExtractSummary | None:
    """The summary of a finished identical extraction in run, None if there is none."""
    meta_path = run.features / "meta.json"
    if not meta_path.exists():
        return None
    meta = read_json(meta_path)
    if meta.get("fingerprint") != fingerprint:
        raise TvcleanError(
            f"{run.features} holds features of another data set or model "
            f"({meta.get('model', {}).get('name', '?')}); use a new run directory or delete it")
    splits = {}
    for name, counts in meta["splits"].items():
        rows = read_csv(run.features / f"{name}_index.csv")
        errors = [(r["path"], r["error"]) for r in rows if r["status"] != "ok"]
        splits[name] = SplitSummary(name, counts["images"], counts["failed"], counts["skipped"],
                                    errors)
    return ExtractSummary(run=run.root, classes=meta["classes"], dim=meta["dim"],
                          model=meta["model"], splits=splits, up_to_date=True)


def _state_path(run: RunDir, split: str) -> Path:
    return run.features / f"{split}.progress.json"


def _extract_split(run: RunDir, split: SplitFiles, classes: list[str],
                   extractor: FeatureExtractor, fingerprint: str,
                   progress: bool | None) -> SplitSummary:
    """Extract one split into features/<split>.npy and <split>_index.csv, resuming if possible."""
    final = run.features / f"{split.name}.npy"
    partial = run.features / f"{split.name}.npy.partial"
    state = _load_state(run, split.name, fingerprint, len(split), extractor.dim, partial)
    started = time.perf_counter()
    if not state["complete"]:
        _fill_partial(split, extractor, partial, state, run, progress)
        _write_index(run, split, classes, state["errors"])
        state["complete"] = True
        atomic_write_json(_state_path(run, split.name), state)
    if partial.exists():
        os.replace(partial, final)
    errors = {int(row): message for row, message in state["errors"].items()}
    return SplitSummary(
        name=split.name, images=len(split), failed=len(errors), skipped=dict(split.skipped),
        errors=[(split.paths[row], errors[row]) for row in sorted(errors)],
        seconds=time.perf_counter() - started)


def _load_state(run: RunDir, split: str, fingerprint: str, rows: int, dim: int,
                partial: Path) -> dict[str, Any]:
    """The progress record of an earlier, interrupted run of this same work, or a fresh one."""
    path = _state_path(run, split)
    fresh = {"fingerprint": fingerprint, "rows": rows, "dim": dim, "rows_done": 0,
             "errors": {}, "complete": False}
    if not path.exists():
        return fresh
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return fresh
    same = (state.get("fingerprint") == fingerprint and state.get("rows") == rows
            and state.get("dim") == dim)
    final_exists = (run.features / f"{split}.npy").exists()
    if same and (partial.exists() or (state.get("complete") and final_exists)):
        return state
    return fresh


def _fill_partial(split: SplitFiles, extractor: FeatureExtractor, partial: Path,
                  state: dict[str, Any], run: RunDir, progress: bool | None) -> None:
    """Run the model over the split's remaining rows into the .partial matrix, checkpointing."""
    rows, dim = len(split), extractor.dim
    if state["rows_done"] == 0 or not partial.exists():
        state.update(rows_done=0, errors={})
        matrix = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(rows, dim))
    else:
        matrix = np.lib.format.open_memmap(partial, mode="r+")
    last_checkpoint = time.perf_counter()
    with Progress(rows, f"extract {split.name}", enabled=progress) as bar:
        bar.update(state["rows_done"])
        for first, features, errors in extractor.iter_batches(split.paths, state["rows_done"]):
            matrix[first:first + len(features)] = features
            state["errors"].update({str(row): message for row, message in errors.items()})
            state["rows_done"] = first + len(features)
            bar.update(len(features))
            if time.perf_counter() - last_checkpoint >= CHECKPOINT_SECONDS:
                _checkpoint(matrix, state, run, split.name)
                last_checkpoint = time.perf_counter()
    matrix.flush()
    del matrix


def _checkpoint(matrix: np.memmap, state: dict[str, Any], run: RunDir, split: str) -> None:
    # Rows must reach the file before the record that says they are done.
    matrix.flush()
    atomic_write_json(_state_path(run, split), state)


def _write_index(run: RunDir, split: SplitFiles, classes: list[str],
                 errors: dict[str, str]) -> None:
    rows = ((path, label, classes[label], "error" if str(i) in errors else "ok",
             errors.get(str(i), ""))
            for i, (path, label) in enumerate(zip(split.paths, split.labels.tolist())))
    atomic_write_csv(run.features / f"{split.name}_index.csv", INDEX_HEADER, rows)


def _write_meta(run: RunDir, summary: ExtractSummary, dataset: Dataset, fingerprint: str,
                max_pixels: int) -> None:
    atomic_write_json(run.features / "meta.json", {
        "classes": summary.classes,
        "dim": summary.dim,
        "model": summary.model,
        "train_root": str(dataset.train.source.resolve()),
        "val_root": str(dataset.val.source.resolve()),
        "splits": {name: s.counts() for name, s in summary.splits.items()},
        "max_pixels": max_pixels,
        "fingerprint": fingerprint,
        "tvclean_version": __version__,
    })
