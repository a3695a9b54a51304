"""Configuration of every stage: one dataclass per stage, loadable from TOML.

The CLI and the Python API both build a `Config`; the effective configuration
of every stage that ran is written to `RUN/config.toml`.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TvcleanError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _fail(section: str, name: str, why: str, value: Any) -> None:
    raise TvcleanError(f"invalid {section}.{name} ({_flag(name)}): {why}, got {value!r}")


def _check_positive(section: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not value > 0:
            _fail(section, name, "must be > 0", value)


# The allowed values of every option that is a choice (the CLI offers the same).
CHOICES: dict[str, dict[str, tuple[str, ...]]] = {
    "finetune": {"model": ("efficientnet-lite0", "resnet50")},
    "estimate": {"head": ("linear", "mlp"), "dtype": ("float32", "float64"),
                 "feature_norm": ("center-l2", "none")},
    "valuenet": {"loss": ("mae", "mse"), "target_scale": ("mean-abs", "none")},
    "filter": {"decide_by": ("mc", "valuenet"),
               "output": ("copy", "hardlink", "symlink", "none")},
}


def _check_choice(section: str, obj: Any, name: str) -> None:
    choices = CHOICES[section][name]
    value = getattr(obj, name)
    if value not in choices:
        _fail(section, name, f"must be one of {', '.join(choices)}", value)


@dataclass
class FinetuneConfig:
    """Fine-tuning the CNN on the weak training labels before extraction (`tvclean finetune`).

    Defaults are the original Training-ValueNet's: SGD lr 1e-3, momentum 0.9,
    Nesterov, weight decay 1e-4, batch 32, early stopping on validation
    accuracy (min_delta 0.005, patience 1).
    """

    enabled: bool = False  # `tvclean clean`: fine-tune first, then extract with the result
    model: str = "efficientnet-lite0"  # the ImageNet backbone: efficientnet-lite0 or resnet50
    baseline: str = ""  # a previously fine-tuned .onnx: no training, extract with it
    pretrained: bool = True  # start from ImageNet weights (false: random weights, for tests)
    weights: str = ""  # local copy of the ImageNet weights (default: the package's / download)
    input_size: int = 0  # training and export resolution (multiple of 32); 0 = the model's own
    epochs: int = 20  # at most this many epochs; early stopping usually ends sooner
    batch_size: int = 32
    lr: float = 0.001  # SGD learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0001
    min_delta: float = 0.005  # validation-accuracy gain that counts as an improvement
    patience: int = 1  # epochs without improvement before stopping
    augment: bool = True  # random resized crops (area 50-100%) and horizontal flips
    seed: int = 0
    threads: int = 0  # torch threads; 0 = all cores

    def validate(self) -> "FinetuneConfig":
        _check_choice("finetune", self, "model")
        _check_positive("finetune", self, "epochs", "batch_size", "patience")
        if not (math.isfinite(self.lr) and self.lr > 0):
            _fail("finetune", "lr", "must be a finite number > 0", self.lr)
        for name in ("weight_decay", "min_delta"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                _fail("finetune", name, "must be a finite number >= 0", getattr(self, name))
        if not 0 <= self.momentum < 1:
            _fail("finetune", "momentum", "must be in [0, 1)", self.momentum)
        if self.nesterov and self.momentum == 0:
            _fail("finetune", "nesterov", "needs momentum > 0", self.nesterov)
        if self.input_size != 0 and (self.input_size < 32 or self.input_size % 32):
            _fail("finetune", "input_size", "must be 0 (the model's own) or a multiple of 32",
                  self.input_size)
        if self.threads < 0:
            _fail("finetune", "threads", "must be >= 0", self.threads)
        return self


@dataclass
class ExtractConfig:
    """Feature extraction (`tvclean extract`)."""

    model: str = "efficientnet-lite0"  # a known model name or a path to an .onnx file
    batch_size: int = 16  # images per inference call (16 beat 32 on 2 cores: benchmarks/bench_extract.py)
    threads: int = 0  # cores for onnxruntime inference; 0 = all cores
    decode_workers: int = 0  # image-decoding threads; 0 = one per core
    max_pixels: int = 89_478_485  # larger images are rejected as decompression bombs

    def validate(self) -> "ExtractConfig":
        _check_positive("extract", self, "batch_size", "max_pixels")
        for name in ("threads", "decode_workers"):
            if getattr(self, name) < 0:
                _fail("extract", name, "must be >= 0", getattr(self, name))
        return self


@dataclass
class EstimateConfig:
    """Monte-Carlo estimation of training-values (`tvclean estimate`)."""

    # Defaults: tvclean's best measured setting (README, "Cleaning quality");
    # `--preset original` restores the original algorithm's.
    episodes: int = 150  # independent training runs of a fresh head
    epochs: int = 1  # passes over the episode's examples per episode
    # Examples of each class one episode trains on, drawn at random from the subset:
    # 0 = as many as the smallest class has (balanced episodes); -1 = the whole
    # subset in every episode (the original); N > 0 = N per class.
    episode_per_class: int = 0
    lr: float = 2.0  # SGD learning rate (batch size 1, no momentum)
    # Features given to the heads: "center-l2" subtracts the training mean and scales
    # each vector to length 1 (so lr needs no tuning per model); "none" = raw features.
    feature_norm: str = "center-l2"
    per_class: int = 1000  # training examples per class in the subset (S)
    val_per_class: int = 100  # validation examples per class (V)
    head: str = "linear"  # "linear" softmax or one-hidden-layer "mlp"
    hidden: int = 100  # hidden units of the mlp head
    seed: int = 0
    threads: int = 0  # numba threads; 0 = all cores
    dtype: str = "float32"  # "float32" (fast) or "float64" (reference precision)
    checkpoint_every: int = 10  # episodes between checkpoints
    memory_budget_mb: int = 2048  # above this the Gram matrix is computed in blocks

    def validate(self) -> "EstimateConfig":
        _check_positive("estimate", self, "episodes", "epochs", "per_class",
                        "val_per_class", "hidden", "checkpoint_every", "memory_budget_mb")
        if not (math.isfinite(self.lr) and self.lr > 0):
            _fail("estimate", "lr", "must be a finite number > 0", self.lr)
        _check_choice("estimate", self, "head")
        _check_choice("estimate", self, "dtype")
        _check_choice("estimate", self, "feature_norm")
        if self.threads < 0:
            _fail("estimate", "threads", "must be >= 0", self.threads)
        if self.episode_per_class < -1:
            _fail("estimate", "episode_per_class", "must be -1 (all), 0 (balanced) or > 0",
                  self.episode_per_class)
        return self


@dataclass
class ValueNetConfig:
    """Per-class Training-ValueNet regressors (feature -> training-value)."""

    hidden: int = 100
    dropout: float = 0.5
    lr: float = 0.001  # Adam learning rate
    loss: str = "mae"  # "mae" (the original's) or "mse"
    val_split: float = 0.1
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 10
    target_scale: str = "mean-abs"  # "mean-abs": divide targets by the class's mean |value|; "none"
    min_examples: int = 10  # fewer MC examples in a class: use its MC estimates directly
    seed: int = 0

    def validate(self) -> "ValueNetConfig":
        _check_positive("valuenet", self, "hidden", "lr", "batch_size", "max_epochs",
                        "patience", "min_examples")
        if not 0 <= self.dropout < 1:
            _fail("valuenet", "dropout", "must be in [0, 1)", self.dropout)
        if not 0 < self.val_split < 1:
            _fail("valuenet", "val_split", "must be in (0, 1)", self.val_split)
        _check_choice("valuenet", self, "loss")
        _check_choice("valuenet", self, "target_scale")
        return self


@dataclass
class FilterConfig:
    """Decisions and the split data set (`tvclean filter`)."""

    threshold: float = 0.0  # images whose score is below this are discarded
    # Score = value + confidence_z x its standard error: an image is discarded only
    # when it is confidently harmful (0 = the original's bare `value < threshold`).
    confidence_z: float = 1.0
    # Whose value decides for images in the Monte-Carlo subset: their own "mc"
    # estimate, or the "valuenet" regressor's prediction (the original). Images
    # outside the subset are always decided by the regressor.
    decide_by: str = "mc"
    output: str = "copy"  # "copy", "hardlink", "symlink" or "none" (CSV only)
    prefix_values: bool = False  # prefix output file names with the value, as the original

    def validate(self) -> "FilterConfig":
        for name in ("threshold", "confidence_z"):
            if not math.isfinite(getattr(self, name)):
                _fail("filter", name, "must be a finite number", getattr(self, name))
        if self.confidence_z < 0:
            _fail("filter", "confidence_z", "must be >= 0", self.confidence_z)
        _check_choice("filter", self, "decide_by")
        _check_choice("filter", self, "output")
        return self


@dataclass
class ReportConfig:
    """The HTML report (`tvclean report`)."""

    enabled: bool = True
    embedding_sample: int = 2000  # images in the t-SNE plot
    thumbnails: int = 8  # most negative / most positive images shown per class

    def validate(self) -> "ReportConfig":
        _check_positive("report", self, "embedding_sample", "thumbnails")
        return self


# Settings that differ from the defaults, per preset (see README, "Cleaning quality").
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    # The original Training-ValueNet: raw features, full-subset episodes at lr 1e-3,
    # regressors on the raw values, and the bare `predicted value < 0` decision.
    "original": {
        "estimate": {"episodes": 100, "epochs": 1, "episode_per_class": -1, "lr": 0.001,
                     "feature_norm": "none", "head": "linear"},
        "valuenet": {"target_scale": "none"},
        "filter": {"confidence_z": 0.0, "decide_by": "valuenet", "threshold": 0.0},
    },
}

SECTIONS = {
    "finetune": FinetuneConfig,
    "extract": ExtractConfig,
    "estimate": EstimateConfig,
    "valuenet": ValueNetConfig,
    "filter": FilterConfig,
    "report": ReportConfig,
}


@dataclass
class Config:
    """The configuration of all stages."""

    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    estimate: EstimateConfig = field(default_factory=EstimateConfig)
    valuenet: ValueNetConfig = field(default_factory=ValueNetConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def validate(self) -> "Config":
        for name in SECTIONS:
            getattr(self, name).validate()
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def preset(cls, name: str) -> "Config":
        """The configuration of a named preset ("default" or "original")."""
        if name not in PRESETS:
            raise TvcleanError(f"invalid preset (--preset): must be one of "
                               f"{', '.join(PRESETS)}, got {name!r}")
        config = cls()
        for section, values in PRESETS[name].items():
            set_options(getattr(config, section), section, values, f"preset {name}")
        return config

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config",
                  preset: str | None = None) -> "Config":
        """Config from tables of options on top of a preset (`preset` wins over the
        data's own top-level `preset = "..."`; the default preset otherwise)."""
        data = dict(data)
        preset = preset or data.pop("preset", "default")
        data.pop("preset", None)
        if not isinstance(preset, str):
            raise TvcleanError(f"{source}: preset must be a string, got {preset!r}")
        config = cls.preset(preset)
        for section, values in data.items():
            if section not in SECTIONS:
                raise TvcleanError(f"{source}: unknown section [{section}]; "
                                   f"known: {', '.join(SECTIONS)}")
            if not isinstance(values, dict):
                raise TvcleanError(f"{source}: [{section}] must be a table")
            set_options(getattr(config, section), section, values, source)
        return config.validate()

    @classmethod
    def from_toml(cls, path: str | Path, preset: str | None = None) -> "Config":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TvcleanError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise TvcleanError(f"{path}: not valid TOML ({exc})") from None
        return cls.from_dict(data, source=str(path), preset=preset)

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())


def set_options(obj: Any, section: str, values: dict[str, Any], source: str = "options") -> None:
    """Set dataclass fields from a mapping, checking names and types."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in values.items():
        if name not in fields:
            raise TvcleanError(f"{source}: unknown option {section}.{name}; "
                               f"known: {', '.join(fields)}")
        setattr(obj, name, _coerce(section, name, getattr(obj, name), value, source))


def _coerce(section: str, name: str, current: Any, value: Any, source: str) -> Any:
    expected = type(current)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise TvcleanError(f"{source}: {section}.{name} must be {expected.__name__}, "
                       f"got {value!r}")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(data: dict[str, dict[str, Any]]) -> str:
    """Write a mapping of tables of scalars as TOML."""
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(val)}" for key, val in values.items())
        lines.append("")
    return "\n".join(lines)
