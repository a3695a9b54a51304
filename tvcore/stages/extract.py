"""The `extract` stage: images -> CNN features in RUN/features/.

Work is checkpointed into `<split>.npy.partial` plus a progress record
(tvcore.rundir.features.SplitWriter); re-running finishes an interrupted run
(even one killed with -9) and skips a finished one. Locally, batches stream
through one FeatureExtractor; on a cluster, shards of batches run on the
workers (tvcore.stages.extract_cluster). Both feed the same store loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomicfile import atomic_write_json, read_json
from ..config import Config
from ..errors import TvcleanError
from ..io.dataset import Dataset, discover
from ..io.inference import FeatureExtractor
from ..io.modelzoo import (
    INT8_SATURATES,
    ModelSpec,
    int8_saturates,
    int8_saturates_on_workers,
    resolve_model,
)
from ..progress import Progress
from ..rundir import RunDir
from ..rundir.features import SplitWriter, changed_file, file_stats, save_file_stats
from ..rundir.ownership import check_no_overlap, check_not_in_another_run
from ..rundir.tables import read_index

CHECKPOINT_SECONDS = 2.0  # at most this much work is redone after a kill

# (writer, first row) and (features (b, D), {row offset: decoding error}) of one finished range
Result = tuple[tuple[SplitWriter, int], tuple[np.ndarray, dict[int, str]]]


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
    warnings: list[str] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(s.images for s in self.splits.values())

    def to_dict(self) -> dict[str, Any]:
        return {"run": str(self.run), "classes": self.classes, "dim": self.dim,
                "model": self.model, "up_to_date": self.up_to_date,
                "seconds": round(self.seconds, 3), "warnings": self.warnings,
                "splits": {name: {**s.counts(), "errors": [list(e) for e in s.errors]}
                           for name, s in self.splits.items()}}


def check_inputs_apart(run: RunDir, dataset: Dataset) -> None:
    """The run directory and the data never overlap, and no input lies in another run."""
    listed = [p for s in dataset.splits if s.source in dataset.manifests for p in s.paths]
    check_no_overlap(run.root, dataset.folders, [*dataset.manifests, *listed])
    check_not_in_another_run(run.root, [*dataset.folders, *dataset.manifests,
                                        *{os.path.dirname(p) for p in listed}])


def extract(train: str | Path, val: str | Path | None, run: str | Path | RunDir,
            config: Config | Mapping[str, Mapping[str, Any]] | None = None,
            progress: bool | None = None, cluster: Any = None) -> ExtractSummary:
    """Extract features of the train and val images into RUN/features/.

    train, val: class-folder roots or .csv manifests (val None: train holds
    train/ and val/, or is a manifest with a split column). config: a Config,
    or {section: {option: value}} overrides of the run's config.toml (see
    tvcore.config.resolve_config). progress: draw a progress bar (None: when
    stderr is a terminal). cluster: a tvcore.cluster.Cluster or
    distributed.Client to extract on (None: this process). Re-running
    resumes an interrupted run and skips a finished one.
    """
    run = RunDir.of(run)
    dataset = discover(train, val)
    check_inputs_apart(run, dataset)
    with run.writing("extract"):
        settings = run.resolve(config)
        return _extract(run, dataset, settings, progress, cluster)


def _int8_warnings(cluster: Any) -> list[str]:
    """Where int8 inference runs on a CPU whose int8 kernels saturate: this machine, or
    (with a cluster) each worker's."""
    if cluster is None:
        return [INT8_SATURATES] if int8_saturates() else []
    from ..cluster import as_cluster

    saturating, workers = as_cluster(cluster).workers_where(int8_saturates)
    return [int8_saturates_on_workers(saturating, workers)] if saturating else []


def _extract(run: RunDir, dataset: Dataset, config: Config, progress: bool | None,
             cluster: Any) -> ExtractSummary:
    options = config.extract
    model = resolve_model(options.model, options.precision)
    fingerprint = _fingerprint(dataset, model, options.max_pixels)
    done = _finished_summary(run, fingerprint)
    if done is not None:
        for split in dataset.splits:
            changed = changed_file(run, split.name, split.paths)
            if changed is not None:
                raise TvcleanError(f"{changed} changed since its features were extracted into "
                                   f"{run.features} (its size or modification time differs); "
                                   f"the decisions there are of the old picture: clean into a "
                                   f"new run directory")
        run.log("extract: features are up to date, nothing to do")
        return done
    warnings = _int8_warnings(cluster) if model.precision == "int8" else []
    for warning in warnings:
        run.log(f"extract: warning: {warning}")
    stats = {split.name: file_stats(split.paths) for split in dataset.splits}  # before reading
    run.features.mkdir(parents=True, exist_ok=True)
    run.save_config(config, ["extract"])
    run.log(f"extract: model {model.name} ({model.sha256[:12]}), {len(dataset.train)} train and "
            f"{len(dataset.val)} val images, {len(dataset.classes)} classes")
    started = time.perf_counter()
    if cluster is not None:
        from .extract_cluster import ClusterExtraction
        source = ClusterExtraction(cluster, model, options)
        writers = _writers(run, dataset, fingerprint, source.dim)
        _store(writers, source.results(writers), progress)
        dim = source.dim
    else:
        with FeatureExtractor(model, options.batch_size, options.threads,
                              options.decode_workers, options.max_pixels,
                              options.device) as extractor:
            run.log(f"extract: on {extractor.device}, batches of {extractor.batch_size}")
            writers = _writers(run, dataset, fingerprint, extractor.dim)
            _store(writers, _local_results(extractor, writers), progress)
            dim = extractor.dim
    seconds = time.perf_counter() - started
    summary = ExtractSummary(run=run.root, classes=dataset.classes, dim=dim,
                             model=model.identity(), seconds=seconds,
                             splits={w.name: _split_summary(w, dataset) for w in writers},
                             warnings=warnings)
    for name, stat in stats.items():
        save_file_stats(run, name, stat)
    _write_meta(run, summary, dataset, fingerprint, options.max_pixels)  # last: marks it done
    for writer in writers:
        writer.discard_progress()
    for s in summary.splits.values():
        run.log(f"extract: {s.name}: {s.ok} images, {s.failed} failed, "
                f"{sum(s.skipped.values())} files skipped")
    run.log(f"extract: done in {seconds:.1f}s")
    run.record_stage("extract", seconds, images=summary.images)
    for s in summary.splits.values():
        if s.ok == 0:
            first = s.errors[0] if s.errors else ("", "")
            raise TvcleanError(f"no {s.name} image could be used ({s.failed} failed, e.g. "
                               f"{first[0]}: {first[1]}); see {run.features / (s.name + '_index.csv')}")
    return summary


def _writers(run: RunDir, dataset: Dataset, fingerprint: str, dim: int) -> list[SplitWriter]:
    return [SplitWriter(run, s.name, s.given, s.paths, s.labels.tolist(), dataset.classes,
                        fingerprint, dim) for s in dataset.splits]


def _local_results(extractor: FeatureExtractor, writers: list[SplitWriter]) -> Iterator[Result]:
    """Every split's remaining batches through one pipeline, so it never drains between splits."""
    step = extractor.batch_size
    jobs = [(w, first, stop) for w in writers for first, stop in w.remaining(step)]
    batches = (w.paths[first:stop] for w, first, stop in jobs)
    for (writer, first, _), result in zip(jobs, extractor.run_batches(batches)):
        yield (writer, first), result


def _store(writers: list[SplitWriter], results: Iterable[Result], progress: bool | None) -> None:
    """Write each finished range into its split, checkpointing as it goes; then finish."""
    total = sum(len(w) for w in writers)
    last_checkpoint = time.perf_counter()
    with Progress(total, "extract", enabled=progress) as bar:
        bar.update(sum(len(w) if w.complete else w.rows_done for w in writers))
        try:
            for (writer, first), (features, errors) in results:
                writer.write(first, features, errors)
                bar.update(len(features))
                if time.perf_counter() - last_checkpoint >= CHECKPOINT_SECONDS:
                    for each in writers:
                        each.checkpoint()
                    last_checkpoint = time.perf_counter()
        except BaseException:  # Ctrl-C or a failure: keep what is done for the resume
            for each in writers:
                each.checkpoint()
            raise
    for writer in writers:
        writer.finish()


def _split_summary(writer: SplitWriter, dataset: Dataset) -> SplitSummary:
    split = next(s for s in dataset.splits if s.name == writer.name)
    errors = writer.error_rows()
    return SplitSummary(name=writer.name, images=len(writer), failed=len(errors),
                        skipped=dict(split.skipped),
                        errors=[(writer.paths[row], errors[row]) for row in sorted(errors)])


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
            f"({meta.get('model', {}).get('name', '?')}); use a new run directory")
    splits = {}
    for name, counts in meta["splits"].items():
        index = read_index(run.features / f"{name}_index.csv", meta["classes"])
        errors = [(p, e) for p, e, ok in zip(index.abs_paths, index.errors, index.ok) if not ok]
        splits[name] = SplitSummary(name, counts["images"], counts["failed"], counts["skipped"],
                                    errors)
    return ExtractSummary(run=run.root, classes=meta["classes"], dim=meta["dim"],
                          model=meta["model"], splits=splits, up_to_date=True)


def _write_meta(run: RunDir, summary: ExtractSummary, dataset: Dataset, fingerprint: str,
                max_pixels: int) -> None:
    atomic_write_json(run.features / "meta.json", {
        "classes": summary.classes,
        "dim": summary.dim,
        "model": summary.model,
        "train_root": str(dataset.train.source.resolve()),
        "val_root": str(dataset.val.source.resolve()),
        "input_folders": sorted({str(Path(f).resolve()) for f in dataset.folders}),
        "splits": {name: s.counts() for name, s in summary.splits.items()},
        "max_pixels": max_pixels,
        "fingerprint": fingerprint,
        "tvclean_version": __version__,
    })
