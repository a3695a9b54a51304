"""`clean`: every stage in one call ([finetune,] extract, estimate, filter, report)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..config import SECTIONS, Config
from ..engine.estimates import Estimates
from ..errors import TvcleanError
from ..io.dataset import discover
from ..rundir import RunDir
from .estimate import estimate
from .extract import ExtractSummary, check_inputs_apart, extract
from .filter import FilterResult, filter_run
from .finetune import FinetuneResult, finetune

T = TypeVar("T")


def _quantized_version(model: Path, train: str | Path, run: RunDir) -> None:
    """Make sure the fine-tuned (or baseline) model has an int8 version in the cache
    (`--precision int8`), calibrated on the training images when TRAIN is a folder."""
    from ..io.modelzoo import resolve_model
    from ..io.quantize import quantize
    try:
        resolve_model(str(model), "int8")
        return
    except TvcleanError:
        pass
    calibration = train if Path(train).is_dir() else None
    result = quantize(str(model), calibration=calibration)
    run.log(f"quantize: {model} -> {result.path} ({result.sha256[:12]})")


@dataclass
class CleanResult:
    """What each stage produced, and how long each took (seconds by stage name)."""

    run: Path
    extract: ExtractSummary
    estimates: Estimates
    filter: FilterResult
    report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    finetune: FinetuneResult | None = None  # with config.finetune.enabled or .baseline
    config: Config | None = None  # the settings every stage ran with


def clean(train: str | Path, val: str | Path | None, run: str | Path | RunDir,
          config: Config | Mapping[str, Mapping[str, Any]] | None = None,
          progress: bool | None = None, cluster: Any = None) -> CleanResult:
    """Clean a weakly-labeled training set: all stages, artifacts in RUN.

    train, val: class-folder roots or CSV manifests (val None: train holds
    train/ and val/). config: a Config, or {section: {option: value}}
    overrides of RUN's config.toml when RUN exists (see
    tvcore.config.resolve_config). cluster: a tvcore.cluster.Cluster or
    distributed.Client for the extract and estimate stages (None: this
    process). Each stage skips work an earlier run already finished. With
    config.finetune.enabled (or .baseline) the CNN is fine-tuned first (or the
    baseline loaded) and features are extracted with the result.
    """
    run = RunDir.of(run)
    check_inputs_apart(run, discover(train, val))
    with run.writing("clean"):
        settings = run.resolve(config)
        return _clean(train, val, run, settings, progress, cluster)


def _clean(train: str | Path, val: str | Path | None, run: RunDir, config: Config,
           progress: bool | None, cluster: Any) -> CleanResult:
    seconds: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        start = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds[name] = time.perf_counter() - start
        return value

    tuned = None
    if config.finetune.enabled or config.finetune.baseline:
        tuned = timed("finetune", finetune, train, val, run, config, progress)
        config = copy.deepcopy(config)  # extract.model becomes the fine-tuned file
        config.extract.model = str(tuned.model_path)
        if config.extract.precision == "int8":
            timed("quantize", _quantized_version, tuned.model_path, train, run)
    extracted = timed("extract", extract, train, val, run, config, progress, cluster)
    estimates = timed("estimate", estimate, run, config, progress, cluster)
    filtered = timed("filter", filter_run, run, config, progress)
    report = None
    if config.report.enabled:
        from .report import write_report

        report = timed("report", write_report, run, config, progress)
    run.save_config(config, list(SECTIONS))
    run.log("clean: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    return CleanResult(run=run.root, extract=extracted, estimates=estimates, filter=filtered,
                       report=report, seconds=seconds, finetune=tuned, config=config)
