"""tvcore: the tvclean library. Everything a Python user imports lives here."""

__version__ = "0.1.0"

from .config import (  # noqa: E402
    Config,
    EstimateConfig,
    ExtractConfig,
    FilterConfig,
    ReportConfig,
    ValueNetConfig,
)
from .errors import TvcleanError  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .features import extract  # noqa: E402
from .rundir import RunDir  # noqa: E402

__all__ = [
    "Config", "EstimateConfig", "ExtractConfig", "FilterConfig", "ReportConfig",
    "ValueNetConfig", "TvcleanError", "RunDir",
]
