"""tvcore: the tvclean library. Everything a Python user imports lives here.

The stage functions are imported on first use, so `import tvcore` stays light:

    import tvcore
    tvcore.clean("data/train", "data/val", "runs/1")          # every stage
    tvcore.finetune(...)  # optional: fine-tune the CNN first (torch extra)
    tvcore.extract(...); tvcore.estimate(run); tvcore.filter_run(run); tvcore.write_report(run)
    tvcore.evaluate(run, "truth.csv")
    tvcore.quantize("resnet50")  # an int8 version for --precision int8 (quantize extra)
    tvcore.load_training_values(run)                           # a pandas DataFrame
    tvcore.find_label_issues(X, y, X_val, y_val)                # the algorithm on arrays

Every stage takes `config`: a Config (used as it is), or {section: {option:
value}} overrides of the run's config.toml (see tvcore.config.resolve_config).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

from .config import (
    Config,
    EstimateConfig,
    ExtractConfig,
    FilterConfig,
    FinetuneConfig,
    ReportConfig,
    ValueNetConfig,
)
from .errors import TvcleanError

# name -> module that defines it, imported on first use (PEP 562). The stage modules
# live in tvcore.stages, so no top-level name is also a submodule's name.
_LAZY = {
    "extract": "stages.extract",
    "finetune": "stages.finetune",
    "estimate": "stages.estimate",
    "filter_run": "stages.filter",
    "load_training_values": "stages.filter",
    "clean": "stages.clean",
    "write_report": "stages.report",
    "evaluate": "stages.evaluate",
    "detection_metrics": "stages.evaluate",
    "run_demo": "stages.demo",
    "find_label_issues": "labelissues",
    "training_values": "labelissues",
    "LabelIssues": "labelissues",
    "RunDir": "rundir",
    "load_features": "rundir",
    "load_estimates": "rundir",
    "quantize": "io.quantize",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tvcore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "Config", "EstimateConfig", "ExtractConfig", "FilterConfig", "FinetuneConfig", "ReportConfig",
    "ValueNetConfig", "TvcleanError", "__version__", *_LAZY,
]
