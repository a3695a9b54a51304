"""tvcore: the tvclean library. Everything a Python user imports lives here.

The stage functions are imported on first use, so `import tvcore` stays light:

    import tvcore
    tvcore.clean("data/train", "data/val", "runs/1")          # every stage
    tvcore.finetune(...)  # optional: fine-tune the CNN first (torch extra)
    tvcore.extract(...); tvcore.estimate(run); tvcore.filter_run(run); tvcore.write_report(run)
    tvcore.evaluate(run, "truth.csv")
    tvcore.training_values(train_x, train_y, val_x, val_y)   # the algorithm on arrays
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .config import (  # noqa: E402
    Config,
    EstimateConfig,
    ExtractConfig,
    FilterConfig,
    FinetuneConfig,
    ReportConfig,
    ValueNetConfig,
)
from .errors import TvcleanError  # noqa: E402
from .rundir import RunDir  # noqa: E402

# name -> module that defines it (imported lazily, PEP 562)
_LAZY = {
    "extract": "stages.extract",
    "finetune": "stages.finetune",
    "estimate": "stages.estimate",
    "load_estimates": "stages.estimate",
    "filter_run": "stages.filter",
    "load_training_values": "stages.filter",
    "clean": "stages.clean",
    "write_report": "stages.report",
    "evaluate": "stages.evaluate",
    "detection_metrics": "stages.evaluate",
    "training_values": "engine.decisions",
    "load_features": "rundir.featureset",
    "run_demo": "stages.demo",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tvcore' has no attribute {name!r}")


__all__ = [
    "Config", "EstimateConfig", "ExtractConfig", "FilterConfig", "FinetuneConfig", "ReportConfig",
    "ValueNetConfig", "TvcleanError", "RunDir", *_LAZY,
]
