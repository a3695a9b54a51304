"""The extract stage's cluster half: shards of batches extracted on Dask workers.

Each worker process loads the model once (checked against the driver's
sha256) and returns features and decoding errors; the driver stores them
through the same loop as the local path. Shards start on batch boundaries,
so every image is decoded and inferred in the same batch as locally and the
features are equal.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..cluster import RETRIES, WORKER_LOCK, Cluster, ThreadPlan, as_cluster, run_tasks, task_result
from ..config import ExtractConfig
from ..device import batch_size_for
from ..errors import TvcleanError
from ..io.inference import FeatureExtractor
from ..io.modelzoo import KNOWN_MODELS, ModelSpec, resolve_model
from ..rundir.features import SplitWriter

SHARD_BATCHES = 8  # batches per extraction task


@dataclass(frozen=True)
class ExtractSettings:
    """What a worker needs to build the same FeatureExtractor as the driver would."""

    model: str  # a known model name, or an absolute path to an .onnx file
    sha256: str  # the driver's model file: a worker with another file stops the run
    batch_size: int
    threads: ThreadPlan
    decode_workers: int
    max_pixels: int
    precision: str = "fp32"  # the model's int8 version is resolved on each worker
    device: str = "auto"


_EXTRACTORS: dict[ExtractSettings, FeatureExtractor] = {}  # per worker process


def _worker_extractor(settings: ExtractSettings) -> FeatureExtractor:
    with WORKER_LOCK:
        if settings not in _EXTRACTORS:
            model = resolve_model(settings.model, settings.precision)
            if model.sha256 != settings.sha256:
                raise TvcleanError(f"model {settings.model} on worker {os.uname().nodename} has "
                                   f"sha256 {model.sha256[:12]}, the driver's "
                                   f"{settings.sha256[:12]}: every worker needs the same model")
            threads = settings.threads.on_this_worker()
            _EXTRACTORS[settings] = FeatureExtractor(
                model, settings.batch_size, threads, settings.decode_workers or threads,
                settings.max_pixels, device=settings.device)
        return _EXTRACTORS[settings]


def _extract_dim(settings: ExtractSettings) -> int:
    """On a worker: the model's feature dimension (and the model loaded for later shards)."""
    return _worker_extractor(settings).dim


def _extract_shard(settings: ExtractSettings, paths: list[str]
                   ) -> tuple[np.ndarray, dict[int, str]]:
    """On a worker: (n, D) float32 features of the images at `paths` and {row: error},
    in batches of settings.batch_size from the shard's start."""
    extractor = _worker_extractor(settings)
    step = settings.batch_size
    batches = [paths[i:i + step] for i in range(0, len(paths), step)]
    features, errors = [], {}
    for start, (part, failed) in zip(range(0, len(paths), step), extractor.run_batches(batches)):
        features.append(part)
        errors.update({start + i: message for i, message in failed.items()})
    return np.concatenate(features), errors


def model_reference(name: str, model: ModelSpec) -> str:
    """What workers resolve: a known or cached model by its name (each worker's own copy),
    a model file by its absolute path (as tvcore.io.modelzoo.resolve_model tells them apart)."""
    is_file = name not in KNOWN_MODELS and (
        name.endswith(".onnx") or os.sep in name or Path(name).expanduser().exists())
    return str(model.path) if is_file else name


class ClusterExtraction:
    """Extraction on a cluster: `dim` (asked of a worker) and `results(writers)`."""

    def __init__(self, cluster: Any, model: ModelSpec, config: ExtractConfig):
        self.cluster: Cluster = as_cluster(cluster)
        self.settings = ExtractSettings(
            model=model_reference(config.model, model), sha256=model.sha256,
            batch_size=batch_size_for(config.batch_size, config.device),
            precision=config.precision, device=config.device,
            threads=self.cluster.thread_plan(config.threads),
            decode_workers=config.decode_workers, max_pixels=config.max_pixels)
        future = self.cluster.client.submit(_extract_dim, self.settings, pure=False,
                                            retries=RETRIES)
        self.dim = int(task_result(future, f"loading model {model.name} on a worker"))

    def results(self, writers: list[SplitWriter]) -> Iterator[tuple[tuple[SplitWriter, int],
                                                                   tuple[np.ndarray,
                                                                         dict[int, str]]]]:
        """Every split's remaining shards, as the workers finish them."""
        step = self.settings.batch_size * SHARD_BATCHES
        shards = [(w, first, stop) for w in writers for first, stop in w.remaining(step)]
        tasks = [(w.paths[first:stop],) for w, first, stop in shards]
        names = [f"feature extraction of {w.name} images {first}..{stop - 1}"
                 for w, first, stop in shards]
        for i, result in run_tasks(self.cluster, _extract_shard, tasks, self.settings,
                                   names=names, ordered=False):
            writer, first, _ = shards[i]
            yield (writer, first), result
