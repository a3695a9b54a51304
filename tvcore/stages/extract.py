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
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .. import __version__
from ..config import Config, ExtractConfig
from ..io.dataset import Dataset, SplitFiles, discover
from ..errors import TvcleanError
from ..rundir.featureset import INDEX_HEADER
from ..io.images import load_image
from ..io.modelzoo import ModelSpec, resolve_model
from ..progress import Progress
from ..rundir import RunDir, atomic_write_csv, atomic_write_json, read_csv, read_json

CHECKPOINT_SECONDS = 2.0  # at most this much work is redone after a kill
PREFETCH_BATCHES = 2  # batches decoding beyond those being inferred
MAX_STREAMS = 4  # concurrent inference calls; each holds a batch of activations


@dataclass
class SplitSummary:
    """What extraction did for one split; errors: (path, error) of the failed images."""

    name: str
    images: int
    failed: int
    skipped: dict[str, int]
    errors: list[tuple[str, str]] = field(default_factory=list)

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
    seconds: float = 0.0  # wall time of this call's extraction
    up_to_date: bool = False  # True: an earlier run had already finished everything

    @property
    def images(self) -> int:
        return sum(s.images for s in self.splits.values())

    def to_dict(self) -> dict[str, Any]:
        return {"run": str(self.run), "classes": self.classes, "dim": self.dim,
                "model": self.model, "up_to_date": self.up_to_date,
                "seconds": round(self.seconds, 3),
                "splits": {name: {**s.counts(), "errors": [list(e) for e in s.errors]}
                           for name, s in self.splits.items()}}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class FeatureExtractor:
    """One model in onnxruntime, fed by a pool of image-decoding threads.

    threads: cores for inference (0 = all). They run as up to MAX_STREAMS
    concurrent inference calls on one session, each with threads / streams
    onnxruntime threads: on few cores, single-threaded calls side by side use
    the CPU better than one call split over all cores, and leave no idle gaps
    for the decoders to wait in. decode_workers: decoding threads (0 = one
    per core). Use as a context manager.
    """

    def __init__(self, model: ModelSpec, batch_size: int = 32, threads: int = 0,
                 decode_workers: int = 0, max_pixels: int = 89_478_485):
        self.model = model
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        cores = available_cores()
        threads = threads or cores
        self.streams = min(threads, MAX_STREAMS)
        self.session = _open_session(model, max(1, threads // self.streams))
        self.input_name, self.output_name = _io_names(self.session, model)
        self.dim = self._probe_dim()
        self.decoders = ThreadPoolExecutor(decode_workers or cores, thread_name_prefix="tvclean-decode")
        self.runners = ThreadPoolExecutor(self.streams, thread_name_prefix="tvclean-infer")

    def __enter__(self) -> "FeatureExtractor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.decoders.shutdown(wait=True, cancel_futures=True)
        self.runners.shutdown(wait=True, cancel_futures=True)

    def features(self, images: np.ndarray) -> np.ndarray:
        """(n, 3, S, S) float32 preprocessed images -> (n, D) float32 features.

        The batch is split over the inference streams, so a caller with its own
        loop still uses every inference thread (do not call it from a stream).
        """
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = np.array_split(images, min(self.streams, len(images)))
        return np.concatenate(list(self.runners.map(self.features_in_this_thread, chunks)))

    def features_in_this_thread(self, images: np.ndarray) -> np.ndarray:
        """Like features(), as one onnxruntime call on the calling thread (one stream)."""
        out = self.session.run([self.output_name], {self.input_name: images})[0]
        return out.reshape(len(images), -1).astype(np.float32, copy=False)

    def run_batches(self, batches: Iterable[Sequence[str]]
                    ) -> Iterator[tuple[np.ndarray, dict[int, str]]]:
        """For each batch of image paths, in order: (b, D) features and {index: error}.

        Rows of images that failed to decode are zero. Keeps every inference
        stream busy plus PREFETCH_BATCHES batches decoding ahead.
        """
        batches = iter(batches)
        ahead = self.streams + PREFETCH_BATCHES
        pending = deque(self._submit(paths) for paths in islice(batches, ahead))
        while pending:
            result = pending.popleft()
            following = next(batches, None)
            if following is not None:
                pending.append(self._submit(following))
            yield result.result()

    def _submit(self, paths: Sequence[str]):
        prep, limit = self.model.preprocess, self.max_pixels
        decoding = [self.decoders.submit(load_image, path, prep, limit) for path in paths]
        return self.runners.submit(self._run_batch, decoding)

    def _run_batch(self, decoding: list) -> tuple[np.ndarray, dict[int, str]]:
        decoded = [future.result() for future in decoding]
        errors = {i: r for i, r in enumerate(decoded) if isinstance(r, str)}
        good = [i for i, r in enumerate(decoded) if not isinstance(r, str)]
        features = np.zeros((len(decoded), self.dim), dtype=np.float32)
        if good:
            features[good] = self.features_in_this_thread(np.stack([decoded[i] for i in good]))
        return features, errors

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
    """A CPU session whose every run uses `threads` onnxruntime threads (1: the caller's own)."""
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
            config: ExtractConfig | None = None, progress: bool | None = None,
            cluster=None) -> ExtractSummary:
    """Extract features of the train and val images into RUN/features/.

    train, val: class-folder roots or .csv manifests (val None: train holds
    train/ and val/, or is a manifest with a split column). progress: draw a
    progress bar (None: when stderr is a terminal). cluster: a
    tvcore.distributed.Cluster or distributed.Client to extract on (None:
    this process). Re-running resumes an interrupted run and skips a finished one.
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
    started = time.perf_counter()
    if cluster is not None:
        from ..cluster import extract_on_cluster
        writers, dim = extract_on_cluster(cluster, run, dataset, model, fingerprint, config,
                                          progress)
    else:
        with FeatureExtractor(model, config.batch_size, config.threads, config.decode_workers,
                              config.max_pixels) as extractor:
            writers = [_SplitWriter(run, split, dataset.classes, fingerprint, extractor.dim)
                       for split in dataset.splits]
            _run_splits(writers, extractor, progress)
        dim = extractor.dim
    seconds = time.perf_counter() - started
    summary = ExtractSummary(run=run.root, classes=dataset.classes, dim=dim,
                             model=model.identity(), seconds=seconds,
                             splits={w.split.name: w.summary() for w in writers})
    _write_meta(run, summary, dataset, fingerprint, config.max_pixels)
    for writer in writers:
        writer.state_path.unlink(missing_ok=True)
    for s in summary.splits.values():
        run.log(f"extract: {s.name}: {s.ok} images, {s.failed} failed, "
                f"{sum(s.skipped.values())} files skipped")
    run.log(f"extract: done in {seconds:.1f}s")
    return summary


def _run_splits(writers: list["_SplitWriter"], extractor: FeatureExtractor,
                progress: bool | None) -> None:
    """Feed the remaining batches of every split through one pipeline, so it never drains
    between splits; checkpoint as it goes and finish each split when its last batch lands."""
    jobs = [(writer, first) for writer in writers for first in writer.remaining_batches(extractor.batch_size)]
    batches = (writer.split.paths[first:first + extractor.batch_size] for writer, first in jobs)
    total = sum(len(w.split) for w in writers)
    last_checkpoint = time.perf_counter()
    with Progress(total, "extract", enabled=progress) as bar:
        bar.update(total - sum(len(w.split) - w.state["rows_done"] for w in writers))
        try:
            for (writer, first), (features, errors) in zip(jobs, extractor.run_batches(batches)):
                writer.write(first, features, errors)
                bar.update(len(features))
                if time.perf_counter() - last_checkpoint >= CHECKPOINT_SECONDS:
                    for each in writers:
                        each.checkpoint()
                    last_checkpoint = time.perf_counter()
                if writer.state["rows_done"] == len(writer.split):
                    writer.finish()
        except BaseException:  # Ctrl-C or a failure: keep what is done for the resume
            for each in writers:
                each.checkpoint()
            raise
    for writer in writers:
        writer.finish()  # splits that had nothing left to do


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


class _SplitWriter:
    """Writes one split's features/<split>.npy and <split>_index.csv, resumably.

    Rows go into <split>.npy.partial (a memory-mapped .npy); <split>.progress.json
    records how many rows are done and the errors so far. The record is
    written only after the rows reach the file, so a kill at any moment loses
    at most the rows since the last checkpoint.
    """

    def __init__(self, run: RunDir, split: SplitFiles, classes: list[str], fingerprint: str,
                 dim: int):
        self.run, self.split, self.classes = run, split, classes
        self.final = run.features / f"{split.name}.npy"
        self.partial = run.features / f"{split.name}.npy.partial"
        self.state_path = run.features / f"{split.name}.progress.json"
        self.state = self._load_state(fingerprint, dim)
        self.matrix: np.memmap | None = None

    def _load_state(self, fingerprint: str, dim: int) -> dict[str, Any]:
        """The record of an earlier, interrupted run of this same work, or a fresh one."""
        fresh = {"fingerprint": fingerprint, "rows": len(self.split), "dim": dim,
                 "rows_done": 0, "errors": {}, "complete": False}
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return fresh
        same = all(state.get(key) == fresh[key] for key in ("fingerprint", "rows", "dim"))
        usable = self.partial.exists() or (state.get("complete") and self.final.exists())
        return state if same and usable else fresh

    def remaining_batches(self, batch_size: int) -> range:
        """First rows of the batches still to do (opens the .partial matrix for them)."""
        if self.state["complete"]:
            return range(0)
        if self.state["rows_done"] == 0 or not self.partial.exists():
            self.state.update(rows_done=0, errors={}, shards_done=[])  # tvcore.distributed
            self.matrix = np.lib.format.open_memmap(
                self.partial, mode="w+", dtype=np.float32, shape=(len(self.split), self.state["dim"]))
        else:
            self.matrix = np.lib.format.open_memmap(self.partial, mode="r+")
        return range(self.state["rows_done"], len(self.split), batch_size)

    def write(self, first: int, features: np.ndarray, errors: dict[int, str]) -> None:
        self.matrix[first:first + len(features)] = features
        self.state["errors"].update({str(first + i): message for i, message in errors.items()})
        self.state["rows_done"] = first + len(features)

    def checkpoint(self) -> None:
        if self.matrix is not None and not self.state["complete"]:
            self.matrix.flush()  # rows reach the file before the record that says they are done
            atomic_write_json(self.state_path, self.state)

    def finish(self) -> None:
        """Write the index, mark the split complete, and move the matrix to its final name."""
        if not self.state["complete"]:
            self.matrix.flush()
            self.matrix = None
            self._write_index()
            self.state["complete"] = True
            atomic_write_json(self.state_path, self.state)
        if self.partial.exists():
            os.replace(self.partial, self.final)

    def _write_index(self) -> None:
        errors = self.state["errors"]
        rows = ((path, label, self.classes[label], "error" if str(i) in errors else "ok",
                 errors.get(str(i), ""))
                for i, (path, label) in enumerate(zip(self.split.paths, self.split.labels.tolist())))
        atomic_write_csv(self.run.features / f"{self.split.name}_index.csv", INDEX_HEADER, rows)

    def summary(self) -> SplitSummary:
        errors = {int(row): message for row, message in self.state["errors"].items()}
        return SplitSummary(
            name=self.split.name, images=len(self.split), failed=len(errors),
            skipped=dict(self.split.skipped),
            errors=[(self.split.paths[row], errors[row]) for row in sorted(errors)])


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
