"""`clean`: every stage in one call ([finetune,] extract, estimate, filter, report)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import SECTIONS, Config
from .estimate import Estimates, estimate
from .extract import ExtractSummary, extract
from .filter import FilterResult, filter_run
from .finetune import FinetuneResult, finetune
from ..rundir import RunDir
from ..rundir.splitdata import check_outside_inputs


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


def clean(train: str | Path, val: str | Path | None, run: str | Path | RunDir,
          config: Config | None = None, progress: bool | None = None,
          cluster=None) -> CleanResult:
    """Clean a weakly-labeled training set: all stages, artifacts in RUN.

    train, val: class-folder roots or CSV manifests (val None: train holds
    train/ and val/). cluster: a tvcore.distributed.Cluster or
    distributed.Client for the extract and estimate stages (None: this
    process). Each stage skips work an earlier run already finished. With
    config.finetune.enabled (or .baseline) the CNN is fine-tuned first (or the
    baseline loaded) and features are extracted with the result.
    """
    config = (config or Config()).validate()
    run = run if isinstance(run, RunDir) else RunDir(run)
    check_outside_inputs(run.root, [p for p in (train, val) if p is not None])
    seconds: dict[str, float] = {}

    def timed(name, fn, *args):
        start = time.perf_counter()
        value = fn(*args)
        seconds[name] = time.perf_counter() - start
        return value

    tuned = None
    if config.finetune.enabled or config.finetune.baseline:
        config = copy.deepcopy(config)  # extract.model becomes the fine-tuned file
        tuned = timed("finetune", finetune, train, val, run, config, progress)
        config.extract.model = str(tuned.model_path)
    extracted = timed("extract", extract, train, val, run, config.extract, progress, cluster)
    estimates = timed("estimate", estimate, run, config, progress, cluster)
    filtered = timed("filter", filter_run, run, config, progress)
    report = None
    if config.report.enabled:
        from .report import write_report

        report = timed("report", write_report, run, config.report)
    run.save_config(config, list(SECTIONS))
    run.log("clean: " + ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()))
    return CleanResult(run=run.root, extract=extracted, estimates=estimates, filter=filtered,
                       report=report, seconds=seconds, finetune=tuned)
