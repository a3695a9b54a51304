"""int8 versions of the feature extractors: onnxruntime's static QDQ quantization.

`quantize_model` turns an fp32 ONNX model into an int8 one: weights int8 per
output channel (symmetric), activations uint8 with ranges from the min/max
seen on calibration images (onnxruntime's recommended scheme for x86 CPUs
with VNNI, "U8S8"). The calibration images are preprocessed exactly as
`extract` does; `calibration_images` builds the default set from images that
ship with tvclean (the demo's Fashion-MNIST photos and scikit-learn's two
sample photos), so the embedded int8 model rebuilds to the same file.

Needs the `onnx` package (`pip install 'tvclean[quantize]'`); onnxruntime
itself is a dependency.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..atomicfile import FILE_MODE
from ..errors import TvcleanError, one_line
from .demoarchive import load_archive
from .images import Preprocess, prepare

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

QUANTIZE_EXTRA = "pip install 'tvclean[quantize]'"
CALIBRATION_BATCH = 16
# Default calibration set: this many of each kind (see calibration_images).
CALIBRATION_FASHION = 64
CALIBRATION_PHOTOS = 64


@dataclass
class QuantizeResult:
    """An int8 model: its file, sha256, and agreement of its features with the fp32 model's.

    agreement: {"fashion" | "photos" | "calibration": {"mean": cosine, "min": cosine}}
    over probe images that were not used for calibration.
    """

    path: Path
    sha256: str
    base: Path
    base_sha256: str
    agreement: dict[str, dict[str, float]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def require_onnx() -> ModuleType:
    """Import onnx and onnxruntime.quantization, or fail telling how to install them."""
    try:
        import onnx  # noqa: F401
        from onnxruntime import quantization
    except ImportError:
        raise TvcleanError(f"quantizing a model needs the onnx package: {QUANTIZE_EXTRA}") from None
    return quantization


def calibration_images(prep: Preprocess, fashion: int = CALIBRATION_FASHION,
                       photos: int = CALIBRATION_PHOTOS, seed: int = 0) -> np.ndarray:
    """(fashion + photos, 3, S, S) float32 model inputs from images that ship with tvclean.

    fashion: grey 28x28 Fashion-MNIST images from the embedded demo archive
    (its training images, spread evenly over the classes). photos: seeded
    random crops (30-100% of each side) and flips of scikit-learn's sample
    photos china.jpg and flower.jpg. Both kinds go through extract's own
    preprocessing, so the activation ranges are those the model will see.
    """
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    out = []
    archive = load_archive()
    images, labels = archive["train_images"], archive["train_labels"]
    classes = np.unique(labels)
    for i in range(fashion):
        rows = np.flatnonzero(labels == classes[i % len(classes)])
        out.append(_prepared(Image.fromarray(images[rows[i // len(classes)]], "L"), prep))
    samples = load_sample_images().images
    for i in range(photos):
        picture = samples[i % len(samples)]
        height, width = picture.shape[:2]
        crop_h = int(rng.integers(int(0.3 * height), height + 1))
        crop_w = int(rng.integers(int(0.3 * width), width + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        crop = Image.fromarray(picture[top:top + crop_h, left:left + crop_w])
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(_prepared(crop, prep))
    return np.stack(out)


def _prepared(image: Image.Image, prep: Preprocess) -> np.ndarray:
    prepared = prepare(image, prep, image.width * image.height)
    assert not isinstance(prepared, str), prepared
    return prepared


# Ops between the last quantized layer and the features output that are left in float, so
# the features are not rounded to 256 levels (ResNet50's GlobalAveragePool + Flatten would be).
_FLOAT_TAIL_OPS = frozenset({"GlobalAveragePool", "AveragePool", "ReduceMean", "Flatten",
                             "Reshape", "Squeeze", "Identity"})


def quantize_model(source: str | Path, dest: str | Path, calibration: np.ndarray,
                   input_name: str = "images", output_name: str = "features",
                   batch_size: int = CALIBRATION_BATCH) -> Path:
    """Write an int8 (QDQ) version of the fp32 ONNX model `source` to `dest`, atomically.

    calibration: (n, 3, S, S) float32 preprocessed images whose activations
    set the quantization ranges (min/max). The graph is first simplified as
    onnxruntime's quantization tool recommends (shape inference, constant
    folding). The pooling / reshaping nodes that produce `output_name` stay
    in float (`float_tail`). Deterministic: the same model, images and
    onnxruntime version give the same file.
    """
    quantization = require_onnx()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tvclean-quantize-") as work:
        simplified = Path(work) / "simplified.onnx"
        try:
            quant_pre_process(str(source), str(simplified), skip_symbolic_shape=True)
        except Exception as exc:  # onnx / onnxruntime raise their own types
            raise TvcleanError(f"cannot prepare {source} for quantization: {one_line(exc)}") from None
        out = Path(work) / "int8.onnx"
        reader = _Batches(calibration, input_name, batch_size)
        import onnx
        graph = onnx.load(str(simplified))
        _name_nodes(graph)
        onnx.save(graph, str(simplified))
        tail = float_tail(graph, output_name)
        try:
            quantization.quantize_static(
                str(simplified), str(out), reader, nodes_to_exclude=tail,
                quant_format=quantization.QuantFormat.QDQ, per_channel=True,
                activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax)
        except Exception as exc:
            raise TvcleanError(f"cannot quantize {source}: {one_line(exc)}") from None
        os.chmod(out, FILE_MODE)
        os.replace(out, dest)
    return dest


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name: the quantizer tells nodes apart by name."""
    taken = {node.name for node in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def float_tail(model: onnx.ModelProto, output_name: str) -> list[str]:
    """Names of the nodes that lead to `output_name` through _FLOAT_TAIL_OPS only."""
    producers = {out: node for node in model.graph.node for out in node.output}
    names, tensor = [], output_name
    while tensor in producers and producers[tensor].op_type in _FLOAT_TAIL_OPS:
        node = producers[tensor]
        names.append(node.name)
        tensor = node.input[0]
    return names


class _Batches:
    """onnxruntime's CalibrationDataReader over an array of preprocessed images."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int) -> None:
        self.images, self.input_name, self.batch_size = images, input_name, batch_size
        self._iter: Iterator[int] | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._iter is None:
            self._iter = iter(range(0, len(self.images), self.batch_size))
        first = next(self._iter, None)
        if first is None:
            return None
        return {self.input_name: np.ascontiguousarray(self.images[first:first + self.batch_size])}

    def rewind(self) -> None:
        self._iter = None


def quantize(model: str, out: str | Path | None = None, name: str | None = None,
             calibration: str | Path | None = None,
             calibration_limit: int = CALIBRATION_FASHION + CALIBRATION_PHOTOS) -> QuantizeResult:
    """Quantize an fp32 model to int8 and write it with its metadata JSON; atomic.

    model: a known name, a cached model or a path (as `--model`). out: the
    .onnx file or a folder (default: the cache). name: the int8 model's name
    (default: NAME-int8 for a known model; STEM-<sha256[:8]>-int8 for a file,
    so two files called model.onnx never share a cache entry).
    calibration: a folder of the user's own images (up to calibration_limit,
    spread evenly over the sorted files) instead of the images that ship with
    tvclean. `--precision int8` then finds the result by the fp32 model's sha256.
    """
    from .modelzoo import KNOWN_MODELS, int8_name, resolve_model, write_metadata

    require_onnx()
    spec = resolve_model(model)
    if spec.precision == "int8":
        raise TvcleanError(f"model {model} is already int8")
    stem = name or int8_name(model, spec)
    known = KNOWN_MODELS.get(stem)
    if known is not None and (known.precision != "int8" or (known.embedded and out is None)):
        what = "an fp32 model" if known.precision != "int8" else "embedded in tvclean"
        raise TvcleanError(f"{stem} is {what}: give the int8 model another name (--name) "
                           f"or an output file (-o)")
    dest = _output_path(out, stem)
    if calibration is None:
        images = calibration_images(spec.preprocess)
        described = (f"{CALIBRATION_FASHION} Fashion-MNIST images of tvclean's demo archive and "
                     f"{CALIBRATION_PHOTOS} crops of scikit-learn's sample photos")
    else:
        images = folder_images(calibration, spec.preprocess, calibration_limit)
        described = f"{len(images)} images of {Path(calibration).resolve()}"
    session = _session(spec.path)
    from .inference import _io_names
    input_name, output_name = _io_names(session, spec)
    quantize_model(spec.path, dest, images, input_name, output_name)
    import onnx
    import onnxruntime
    metadata = write_metadata(
        dest, stem, spec.preprocess, spec.dim,
        source=known.source if known else f"{spec.name} ({spec.path}) quantized to int8 by tvclean",
        licence=spec.licence, input=input_name, output=output_name, precision="int8",
        base=spec.name, base_sha256=spec.sha256, calibration=described,
        quantization="onnxruntime quantize_static: QDQ, per-channel symmetric int8 weights, "
                     "uint8 activations, MinMax ranges",
        quantized_with={"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
                        "numpy": np.__version__})
    agreement = feature_agreement(spec.path, dest, spec.preprocess, input_name, output_name)
    from .modelzoo import sha256_file
    return QuantizeResult(path=dest, sha256=sha256_file(dest), base=spec.path,
                          base_sha256=spec.sha256, agreement=agreement, metadata=metadata)


def folder_images(folder: str | Path, prep: Preprocess, limit: int) -> np.ndarray:
    """(n, 3, S, S) model inputs of up to `limit` images under `folder` (evenly spread)."""
    from .dataset import IMAGE_EXTENSIONS
    from .images import load_image

    folder = Path(folder)
    if not folder.is_dir():
        raise TvcleanError(f"calibration folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                   and p.is_file() and not p.name.startswith("."))
    if not files:
        raise TvcleanError(f"no images in the calibration folder {folder}")
    chosen = [files[i] for i in np.unique(np.linspace(0, len(files) - 1, limit).round().astype(int))]
    images = [image for image in (load_image(path, prep) for path in chosen)
              if not isinstance(image, str)]
    if not images:
        raise TvcleanError(f"none of the images in {folder} could be decoded")
    return np.stack(images)


def probe_images(prep: Preprocess) -> dict[str, np.ndarray]:
    """Images not used for the default calibration: 100 of the demo's validation photos
    (Fashion-MNIST test split) and 48 sample-photo crops of another seed."""
    archive = load_archive()
    fashion = np.stack([_prepared(Image.fromarray(image, "L"), prep)
                        for image in archive["val_images"][::5]])
    return {"fashion": fashion, "photos": calibration_images(prep, fashion=0, photos=48, seed=1)}


def feature_agreement(fp32: str | Path, int8: str | Path, prep: Preprocess,
                      input_name: str = "images", output_name: str = "features"
                      ) -> dict[str, dict[str, float]]:
    """Cosine similarity of the two models' features on probe_images: mean and min per kind."""
    sessions = [_session(path) for path in (fp32, int8)]
    result = {}
    for kind, images in probe_images(prep).items():
        a, b = (np.concatenate([s.run([output_name], {input_name: images[i:i + CALIBRATION_BATCH]})[0]
                                for i in range(0, len(images), CALIBRATION_BATCH)]
                ).reshape(len(images), -1).astype(np.float64) for s in sessions)
        cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                              1e-30)
        result[kind] = {"mean": float(cosine.mean()), "min": float(cosine.min())}
    return result


def _session(path: str | Path) -> ort.InferenceSession:
    import onnxruntime as ort
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise TvcleanError(f"cannot load model {path}: {one_line(exc)}") from None


def _output_path(out: str | Path | None, stem: str) -> Path:
    from .modelzoo import cache_dir
    if out is None:
        return cache_dir() / f"{stem}.onnx"
    out = Path(out)
    return out if out.suffix == ".onnx" else out / f"{stem}.onnx"

