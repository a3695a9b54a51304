"""Configuration of every stage: one dataclass per stage, loadable from TOML.

The CLI and the Python API both build a `Config`; the effective configuration
of every stage that ran is written to `RUN/config.toml`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

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
    "finetune": {"model": ("efficientnet-lite0", "resnet50"), "device": ("auto", "cpu", "cuda")},
    "extract": {"precision": ("fp32", "int8"), "device": ("auto", "cpu", "cuda")},
    "estimate": {"head": ("linear", "mlp"), "dtype": ("float32", "float64"),
                 "feature_norm": ("center-l2", "none")},
    "valuenet": {"loss": ("mae", "mse"), "target_scale": ("mean-abs", "none")},
    "filter": {"method": ("posterior", "threshold"), "decide_by": ("mc", "valuenet"),
               "output": ("copy", "hardlink", "symlink", "none")},
}


def _check_choice(section: str, obj: Any, name: str) -> None:
    choices = CHOICES[section][name]
    value = getattr(obj, name)
    if value not in choices:
        _fail(section, name, f"must be one of {', '.join(choices)}", value)


def option(default: Any, help: str) -> Any:
    """A config field with its help text: the one source of --help, config.toml comments
    and the README's option table."""
    return field(default=default, metadata={"help": help})


def help_of(section: str, name: str) -> str:
    return next(f.metadata["help"] for f in dataclasses.fields(SECTIONS[section])
                if f.name == name)


def _check_seed(section: str, obj: Any) -> None:
    if not 0 <= obj.seed < 2**63:
        _fail(section, "seed", "must be a whole number >= 0", obj.seed)


@dataclass
class FinetuneConfig:
    """Fine-tuning the CNN on the weak training labels before extraction (`tvclean finetune`).

    Defaults are the original Training-ValueNet's: SGD lr 1e-3, momentum 0.9,
    Nesterov, weight decay 1e-4, batch 32, early stopping on validation
    accuracy (min_delta 0.005, patience 1).
    """

    enabled: bool = option(False, "`tvclean clean`: first fine-tune the CNN (--model) on the "
                                  "training labels, as `tvclean finetune` (needs "
                                  "tvclean[torch]), and extract features with it.")
    model: str = option("efficientnet-lite0", "ImageNet backbone to fine-tune.")
    baseline: str = option("", "A previously fine-tuned model (.onnx, with its .json) to use "
                               "instead of training: it is checked and becomes the run's "
                               "extraction model.")
    pretrained: bool = option(True, "Start from the ImageNet weights (--no-pretrained: random "
                                    "weights, for tests).")
    weights: str = option("", "Local copy of the ImageNet weights (checked by sha256); without "
                              "it ResNet50's are downloaded from download.pytorch.org.")
    input_size: int = option(0, "Training and export resolution in pixels, a multiple of 32; "
                                "0 = the model's own (224). Smaller is much faster on a CPU.")
    epochs: int = option(20, "At most this many epochs; training stops earlier when "
                             "validation accuracy stops improving.")
    batch_size: int = option(32, "Training images per SGD step.")
    lr: float = option(0.001, "SGD learning rate.")
    momentum: float = option(0.9, "SGD momentum.")
    nesterov: bool = option(True, "Use Nesterov momentum.")
    weight_decay: float = option(0.0001, "L2 weight decay.")
    min_delta: float = option(0.005, "A rise in validation accuracy larger than this counts "
                                     "as an improvement.")
    patience: int = option(1, "Stop after this many epochs without improvement.")
    augment: bool = option(True, "Random resized crops (50-100% of the area) and horizontal "
                                 "flips of the training images.")
    seed: int = option(0, "Seed of shuffling, crops and the new head: the same seed gives the "
                          "same model.")
    threads: int = option(0, "torch threads (0 = all cores).")
    device: str = option("auto", "Where torch trains: auto (a GPU if torch can use one, else "
                                 "the CPU), cpu, or cuda (needs a CUDA build of torch).")

    def validate(self) -> FinetuneConfig:
        _check_choice("finetune", self, "model")
        _check_choice("finetune", self, "device")
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
        _check_seed("finetune", self)
        return self


@dataclass
class ExtractConfig:
    """Feature extraction (`tvclean extract`)."""

    model: str = option("efficientnet-lite0", "Feature extractor: a known model name "
                                              "(efficientnet-lite0, efficientnet-lite0-int8, "
                                              "resnet50, resnet50-int8), a model in the cache, "
                                              "or a path to an .onnx file.")
    precision: str = option("fp32", "int8: the model's int8 version (embedded for "
                                    "efficientnet-lite0, about twice as fast on a CPU with "
                                    "VNNI; others need `tvclean models quantize` first); fp32: "
                                    "the model as named.")
    device: str = option("auto", "Where the CNN runs: auto (a GPU if onnxruntime-gpu can use "
                                 "one, else the CPU), cpu, or cuda (an NVIDIA GPU; needs "
                                 "onnxruntime-gpu in place of onnxruntime).")
    # 0 = the device's own (tvcore.device.BATCH_SIZE: 16 on the CPU, where 16 beat 32 on
    # 2 cores in benchmarks/bench_extract.py; 64 on a GPU).
    batch_size: int = option(0, "Images per inference call (0 = 16 on the CPU, 64 on a GPU).")
    threads: int = option(0, "Cores for onnxruntime inference (0 = all), run as concurrent "
                             "streams.")
    # 0 = tvcore.io.inference.decode_workers_for
    decode_workers: int = option(0, "Image-decoding threads (0 = the cores that inference "
                                    "leaves with --threads N, else one per core; on a GPU one "
                                    "per core).")
    max_pixels: int = option(89_478_485, "Images with more pixels are skipped as "
                                         "decompression bombs.")

    def validate(self) -> ExtractConfig:
        _check_positive("extract", self, "max_pixels")
        _check_choice("extract", self, "precision")
        _check_choice("extract", self, "device")
        for name in ("batch_size", "threads", "decode_workers"):
            if getattr(self, name) < 0:
                _fail("extract", name, "must be >= 0", getattr(self, name))
        return self


@dataclass
class EstimateConfig:
    """Monte-Carlo estimation of training-values (`tvclean estimate`).

    Defaults: tvclean's best measured setting (README, "Cleaning quality");
    `--preset original` restores the original algorithm's.
    """

    episodes: int = option(150, "Number of Monte-Carlo episodes (fresh heads trained from "
                                "scratch).")
    epochs: int = option(1, "Passes over the episode's examples in each episode.")
    episode_per_class: int = option(0, "Examples of each class one episode trains on, drawn at "
                                       "random from the subset: 0 = as many as the smallest "
                                       "class has (balanced), -1 = the whole subset (the "
                                       "original), N > 0 = N per class.")
    lr: float = option(2.0, "SGD learning rate of the batch-size-1 steps.")
    feature_norm: str = option("center-l2", "Features given to the heads: center-l2 (centred, "
                                            "unit length, so lr needs no tuning per model) or "
                                            "none (raw).")
    per_class: int = option(1000, "Training examples per class in the Monte-Carlo subset.")
    val_per_class: int = option(100, "Validation examples per class used for the loss.")
    head: str = option("linear", "Classification head trained in each episode: linear "
                                 "softmax or a one-hidden-layer mlp.")
    hidden: int = option(100, "Hidden units of the mlp head.")
    seed: int = option(0, "Random seed; the same seed gives the same values.")
    threads: int = option(0, "Worker threads (0 = all cores); does not change the values.")
    dtype: str = option("float32", "Engine precision: float32 is fast, float64 is the "
                                   "reference precision.")
    checkpoint_every: int = option(10, "Episodes between checkpoints (resume points).")
    memory_budget_mb: int = option(2048, "Memory for the Gram matrix; above it, it is "
                                         "computed in blocks.")
    use_reviews: bool = option(True, "Use the images a person reviewed (RUN/review.csv, "
                                     "`tvclean review`) as extra validation images, and leave "
                                     "them out of the Monte-Carlo subset (the filter's posterior "
                                     "rule trains its trusted classifier on them too): each "
                                     "round of review improves the decisions of the images not "
                                     "yet reviewed.")

    def validate(self) -> EstimateConfig:
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
        _check_seed("estimate", self)
        return self


@dataclass
class ValueNetConfig:
    """Per-class Training-ValueNet regressors (feature -> training-value)."""

    hidden: int = option(100, "Hidden ReLU units of each value net.")
    dropout: float = option(0.5, "Dropout rate of the hidden layer.")
    lr: float = option(0.001, "Adam learning rate.")
    loss: str = option("mae", "Loss of the value-net regressors: mae (the original's) or mse.")
    val_split: float = option(0.1, "Fraction of each class's estimates held out for early "
                                   "stopping.")
    batch_size: int = option(32, "Mini-batch size.")
    max_epochs: int = option(100, "At most this many epochs.")
    patience: int = option(10, "Stop after this many epochs without a lower held-out loss.")
    target_scale: str = option("mean-abs", "Scale each class's targets by its mean |value| "
                                           "before training (mean-abs) or not (none).")
    min_examples: int = option(10, "A class with fewer Monte-Carlo estimates uses them "
                                   "directly instead of a value net.")
    seed: int = option(0, "Random seed of the value nets.")

    def validate(self) -> ValueNetConfig:
        _check_positive("valuenet", self, "hidden", "lr", "batch_size", "max_epochs",
                        "patience", "min_examples")
        if not 0 <= self.dropout < 1:
            _fail("valuenet", "dropout", "must be in [0, 1)", self.dropout)
        if not 0 < self.val_split < 1:
            _fail("valuenet", "val_split", "must be in (0, 1)", self.val_split)
        _check_choice("valuenet", self, "loss")
        _check_choice("valuenet", self, "target_scale")
        _check_seed("valuenet", self)
        return self


@dataclass
class FilterConfig:
    """Decisions and the split data set (`tvclean filter`)."""

    method: str = option("posterior", "posterior: the log-odds that an image's given label is "
                                      "right, from its training-value, a classifier of the "
                                      "validation set, its neighbours' labels and per-class "
                                      "noise rates; threshold: its value + z x standard error "
                                      "(the original's rule with z 0 and --decide-by "
                                      "valuenet).")
    threshold: float = option(0.0, "Images whose score is below this are set aside (posterior: "
                                   "0 = even odds that the label is right).")
    confidence_z: float = option(1.0, "--method threshold: z in the score value + z x standard "
                                      "error; discard only images confidently below the "
                                      "threshold (0 = the bare value, as the original).")
    decide_by: str = option("mc", "--method threshold: for images in the Monte-Carlo subset, "
                                  "decide by their own estimate (mc) or by the value net's "
                                  "prediction (valuenet, as the original); images outside it "
                                  "always by the value net.")
    outliers: bool = option(True, "--method posterior: set images of no class of the label set "
                                  "apart as `outlier` (RUN/outlier/<class>/).")
    relabel: bool = option(False, "--method posterior: put a set-aside image into "
                                  "RUN/clean/<suggested class>/ when the suggestion is "
                                  "confident (decision relabel) instead of discarding it.")
    relabel_confidence: float = option(0.9, "The probability a suggested label needs for "
                                            "--relabel.")
    neighbours: int = option(20, "--method posterior: similar training images whose labels "
                                 "vote on an image's class.")
    output: str = option("copy", "How clean/, dirty/ and outlier/ are written: copies, hard links, "
                                 "symbolic links, or none (training_values.csv only).")
    prefix_values: bool = option(False, "Prefix output file names with their score, as the "
                                        "original did with its value.")

    def validate(self) -> FilterConfig:
        for name in ("threshold", "confidence_z"):
            if not math.isfinite(getattr(self, name)):
                _fail("filter", name, "must be a finite number", getattr(self, name))
        if self.confidence_z < 0:
            _fail("filter", "confidence_z", "must be >= 0", self.confidence_z)
        if not 0 < self.relabel_confidence <= 1:
            _fail("filter", "relabel_confidence", "must be in (0, 1]", self.relabel_confidence)
        _check_positive("filter", self, "neighbours")
        _check_choice("filter", self, "method")
        _check_choice("filter", self, "decide_by")
        _check_choice("filter", self, "output")
        return self


@dataclass
class ReportConfig:
    """The HTML report (`tvclean report`)."""

    enabled: bool = option(True, "`tvclean clean`: write the HTML report RUN/report/index.html "
                                 "at the end.")
    embedding_sample: int = option(2000, "Training images (a seeded sample) in the t-SNE "
                                         "feature map.")
    thumbnails: int = option(8, "Most negative and most positive images shown per class.")

    def validate(self) -> ReportConfig:
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
        "filter": {"method": "threshold", "confidence_z": 0.0, "decide_by": "valuenet",
                   "threshold": 0.0},
    },
}

MAX_CONFIG_BYTES = 1 << 20

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

    def validate(self) -> Config:
        for name in SECTIONS:
            getattr(self, name).validate()
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def preset(cls, name: str) -> Config:
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
                  preset: str | None = None) -> Config:
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
    def from_toml(cls, path: str | Path, preset: str | None = None) -> Config:
        path = Path(path)
        if path.exists() and (not path.is_file() or path.stat().st_size > MAX_CONFIG_BYTES):
            raise TvcleanError(f"{path}: not a configuration file (a TOML file of at most "
                               f"{MAX_CONFIG_BYTES // 1024} KiB)")
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


def dump_toml(data: dict[str, dict[str, Any]], documented: bool = False) -> str:
    """Write a mapping of tables of scalars as TOML (documented: each known option
    preceded by its help text as a comment)."""
    lines: list[str] = []
    for section, values in data.items():
        if documented and section in SECTIONS:
            lines.append(f"# {_first_line(SECTIONS[section].__doc__)}")
        lines.append(f"[{section}]")
        known = {f.name: f for f in dataclasses.fields(SECTIONS[section])} \
            if section in SECTIONS else {}
        for key, val in values.items():
            if documented and key in known:
                lines.extend(f"# {line}" for line in _wrap(known[key].metadata["help"], 78))
            lines.append(f"{key} = {_toml_value(val)}")
        lines.append("")
    return "\n".join(lines)


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc else ""


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def resolve_config(run_config: Config | None, base: Config | None = None,
                   overrides: dict[str, dict[str, Any]] | None = None,
                   source: str = "options") -> Config:
    """The one rule by which every stage, `clean`, the CLI and the API get their settings.

    The starting point is `base` when one is given explicitly (a --config file,
    a --preset, a Config passed to the API), else the run directory's own
    config.toml (`run_config`: the settings its stages last ran with), else the
    defaults. `overrides` ({section: {option: value}}: options typed on the
    command line, or keyword tables in the API) are applied on top.
    """
    config = copy.deepcopy(base if base is not None else run_config if run_config is not None
                           else Config())
    for section, values in (overrides or {}).items():
        if section not in SECTIONS:
            raise TvcleanError(f"{source}: unknown section [{section}]; known: "
                               f"{', '.join(SECTIONS)}")
        set_options(getattr(config, section), section, values, source)
    return config.validate()


def options_table() -> str:
    """A Markdown table of every option (section, name, default, help), for the README."""
    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = getattr(cls(), f.name)
            shown = _toml_value(default)
            rows.append(f"| `{section}.{f.name}` | `{shown}` | "
                        f"{f.metadata['help'].replace('|', '/')} |")
    return "\n".join(rows)
