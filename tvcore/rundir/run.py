"""RunDir: the paths of one run directory, its log, its configuration and its stage records."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import tomllib

from .. import __version__
from ..atomicfile import atomic_write_text
from ..config import SECTIONS, Config, dump_toml, resolve_config
from ..errors import TvcleanError, one_line, os_error_cause
from . import ownership

FEATURES = "features"
ESTIMATES = "estimates"
VALUENETS = "valuenets"
REPORT = "report"
FINETUNE = "finetune"
TRAINING_VALUES = "training_values.csv"
EVALUATION = "evaluation.json"
CONFIG = "config.toml"
LOG = "log.txt"
# The artifact whose presence shows that a stage has run.
STAGE_ARTIFACTS = {"extract": "features/meta.json", "estimate": "estimates/meta.json",
                   "filter": TRAINING_VALUES}


class RunDir:
    """Paths of one run directory, and the one way stages write it (`writing`)."""

    def __init__(self, root: str | Path):
        self.root = ownership.check_run_path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    @classmethod
    def of(cls, run: str | Path | RunDir) -> RunDir:
        return run if isinstance(run, RunDir) else cls(run)

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
    def finetune(self) -> Path:
        return self.root / FINETUNE

    @property
    def training_values(self) -> Path:
        return self.root / TRAINING_VALUES

    @property
    def evaluation(self) -> Path:
        return self.root / EVALUATION

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG

    @property
    def log_path(self) -> Path:
        return self.root / LOG

    @property
    def own(self) -> Path:
        """RUN/.tvclean: the marker, the lock and tvclean's private working files."""
        return self.root / ownership.OWN_DIR

    def exists(self) -> bool:
        return ownership.is_run_dir(self.root)

    @contextlib.contextmanager
    def writing(self, stage: str) -> Iterator[RunDir]:
        """Claim the directory for tvclean (creating it) and hold its writer lock; a
        directory this call created is removed again if the stage fails before writing."""
        created = ownership.claim(self.root)
        try:
            with ownership.locked(self.root, f"tvclean {stage}"):
                yield self
        except BaseException:
            if created:
                ownership.forget_if_unused(self.root)
            raise

    def require_stages(self, *stages: str) -> None:
        """Fail naming the first of `stages` whose artifact is missing (in pipeline order)."""
        for stage in stages:
            self.require(STAGE_ARTIFACTS[stage], stage)

    def require(self, relative: str, stage: str) -> Path:
        """Return RUN/relative, or fail telling which stage produces it."""
        path = self.root / relative
        if not path.exists():
            raise TvcleanError(f"{path} not found: run `tvclean {stage}` on {self.root} first")
        return path

    def log(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
                         0o666)
            with open(fd, "a", encoding="utf-8") as fh:
                fh.write(f"{stamp} {message}\n")
        except OSError as exc:
            raise TvcleanError(f"cannot write {self.log_path}: {os_error_cause(exc)}") \
                from None

    # --- configuration ----------------------------------------------------------------------

    def load_config(self) -> Config | None:
        """The configuration the run's stages last ran with (None: no config.toml yet)."""
        if not self.config_path.exists():
            return None
        return Config.from_toml(self.config_path)

    def resolve(self, config: Config | Mapping[str, Mapping[str, Any]] | None = None) -> Config:
        """A stage's settings by the one rule (tvcore.config.resolve_config): a Config is
        taken as it is; otherwise the run's config.toml (or the defaults) with `config`'s
        {section: {option: value}} on top."""
        if isinstance(config, Config):
            return resolve_config(None, config)
        overrides = {k: dict(v) for k, v in (config or {}).items()}
        return resolve_config(self.load_config(), None, overrides, "config")

    def save_config(self, config: Config, sections: Iterable[str]) -> None:
        """Merge the given sections of `config` into RUN/config.toml (other tables kept)."""
        data = self._config_tables()
        full = config.to_dict()
        for name in sections:
            data[name] = full[name]
        ordered = {name: data[name] for name in SECTIONS if name in data}
        atomic_write_text(self.config_path, dump_toml(ordered, documented=True))

    def _config_tables(self) -> dict:
        if not self.config_path.exists():
            return {}
        try:
            return tomllib.loads(self.config_path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise TvcleanError(f"{self.config_path}: not valid TOML ({one_line(exc)}); fix or "
                               f"delete it") from None

    # --- stage records (RUN/.tvclean/run.json) ----------------------------------------------

    def record_stage(self, stage: str, seconds: float, **details: Any) -> None:
        """Note that `stage` finished, with its wall time (the report shows them)."""
        marker = ownership.read_marker(self.root)
        marker.setdefault("stages", {})[stage] = {
            "seconds": round(float(seconds), 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "at": time.time(),
            "tvclean_version": __version__, **details}
        ownership.write_marker(self.root, marker)

    def stale_note(self) -> str:
        """A warning when a stage's output is older than what it was made from (the
        features or estimates changed after the decisions were made), else ""."""
        records = self.stage_records()
        order = ("extract", "estimate", "filter")
        for earlier, later in zip(order, order[1:]):
            if earlier in records and later in records and \
                    records[earlier].get("at", 0) > records[later].get("at", 0):
                return (f"the {earlier} stage ran after the {later} stage: the decisions are "
                        f"out of date; run `tvclean {later}` (and the stages after it) on "
                        f"{self.root}")
        return ""

    def stage_records(self) -> dict[str, dict]:
        """{stage: {"seconds": ..., "finished": ...}} of the stages that finished in this run."""
        if not self.exists():
            return {}
        return dict(ownership.read_marker(self.root).get("stages", {}))
