"""Model registry, `--model NAME|PATH.onnx`, the cache, and sha256-verified fetching on loopback."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import pytest
from click.testing import CliRunner

from tvclean.main import cli
from tvcore.errors import TvcleanError
from tvcore.io.images import IMAGENET_MEAN, IMAGENET_STD
from tvcore.io.modelzoo import embedded_dir, fetch_model, list_models, resolve_model, sha256_file

EMBEDDED = embedded_dir() / "efficientnet-lite0.onnx"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("TVCLEAN_CACHE", str(folder))
    return folder


@pytest.fixture
def server(http_files):
    return http_files


def test_embedded_model_identity():
    spec = resolve_model("efficientnet-lite0")
    meta = json.loads((embedded_dir() / "efficientnet-lite0.json").read_text())
    assert spec.path == EMBEDDED.resolve()
    assert spec.sha256 == meta["sha256"] == sha256_file(EMBEDDED)
    assert spec.dim == 1280
    assert (spec.preprocess.size, spec.preprocess.resize) == (224, 256)
    assert spec.preprocess.mean == (127.0,) * 3 and spec.preprocess.std == (128.0,) * 3
    identity = spec.identity()
    assert identity["name"] == "efficientnet-lite0" and identity["licence"] == "Apache-2.0"


def test_user_onnx_defaults_and_sidecar(tmp_path):
    model = tmp_path / "mine.onnx"
    shutil.copy(EMBEDDED, model)
    spec = resolve_model(str(model))
    assert spec.name == "mine" and spec.sha256 == sha256_file(EMBEDDED)
    assert (spec.preprocess.size, spec.preprocess.resize) == (224, 256)
    assert spec.preprocess.mean == IMAGENET_MEAN and spec.preprocess.std == IMAGENET_STD
    assert spec.output is None and spec.dim is None
    (tmp_path / "mine.json").write_text(json.dumps(
        {"input_size": 192, "normalisation": "tflite", "output": "logits"}))
    spec = resolve_model(str(model))
    assert (spec.preprocess.size, spec.preprocess.resize) == (192, 219)  # keeps the 224/256 ratio
    assert spec.preprocess.mean == (127.0,) * 3 and spec.output == "logits"
    (tmp_path / "mine.json").write_text(json.dumps({"mean": [1, 2, 3], "std": [4, 5, 6],
                                                    "resize": 300}))
    spec = resolve_model(str(model))
    assert spec.preprocess.mean == (1.0, 2.0, 3.0) and spec.preprocess.resize == 300


@pytest.mark.parametrize("sidecar, message", [
    ({"sha256": "0" * 64}, r"mine.onnx: sha256 [0-9a-f]{64} does not match 0{64}"),
    ({"mean": [1, 2]}, r"mine.json: mean must be three numbers"),
    ({"std": [1, 0, 1]}, r"mine.json: std must be > 0"),
    ({"input_size": "224"}, r"mine.json: input_size must be a positive integer, got '224'"),
    ({"normalisation": "caffe"}, r"mine.json: normalisation must be one of imagenet, tflite"),
    ([1, 2], r"mine.json: must be a JSON object"),
])
def test_bad_sidecar_is_a_clear_error(tmp_path, sidecar, message):
    shutil.copy(EMBEDDED, tmp_path / "mine.onnx")
    (tmp_path / "mine.json").write_text(json.dumps(sidecar))
    with pytest.raises(TvcleanError, match=message):
        resolve_model(str(tmp_path / "mine.onnx"))


def test_unknown_and_missing_models(tmp_path, cache):
    with pytest.raises(TvcleanError, match=r"unknown model 'vgg16': use one of efficientnet-lite0, "
                                           r"resnet50, efficientnet-lite0-int8, resnet50-int8, a "):
        resolve_model("vgg16")
    with pytest.raises(TvcleanError, match=r"model file not found: .*absent.onnx"):
        resolve_model(str(tmp_path / "absent.onnx"))
    with pytest.raises(TvcleanError, match=r"model resnet50 is not in the cache .*tvclean models export resnet50"):
        resolve_model("resnet50")


def test_fetch_good_file_into_cache(server, cache):
    base, files, _ = server
    files["/lite.onnx"] = EMBEDDED.read_bytes()
    digest = hashlib.sha256(files["/lite.onnx"]).hexdigest()
    spec = fetch_model("resnet50", url=f"{base}/lite.onnx", sha256=digest, progress=False)
    assert spec.path == (cache / "resnet50.onnx").resolve() and spec.sha256 == digest
    assert spec.dim == 2048 and spec.preprocess.resize == 232  # the registry's metadata
    assert sorted(p.name for p in cache.iterdir()) == ["resnet50.json", "resnet50.onnx"]
    assert resolve_model("resnet50").sha256 == digest
    custom = fetch_model("my-net", url=f"{base}/lite.onnx", sha256=digest.upper(), progress=False)
    assert custom.preprocess.mean == IMAGENET_MEAN
    rows = {r["name"]: r for r in list_models()}
    assert rows["resnet50"]["status"] == "cached" and rows["my-net"]["status"] == "cached"
    assert rows["efficientnet-lite0"]["status"] == "embedded"
    assert resolve_model("my-net").path == (cache / "my-net.onnx").resolve()


def test_fetch_wrong_checksum_leaves_nothing(server, cache):
    base, files, _ = server
    files["/m.onnx"] = b"not the model you expect" * 100
    with pytest.raises(TvcleanError, match=r"sha256 mismatch for http://127.0.0.1:\d+/m.onnx: got"):
        fetch_model("resnet50", url=f"{base}/m.onnx", sha256="ab" * 32, progress=False)
    assert list(cache.iterdir()) == []


def test_fetch_truncated_download_leaves_nothing(server, cache):
    base, files, truncate = server
    files["/m.onnx"] = b"x" * 200_000
    truncate.add("/m.onnx")
    digest = hashlib.sha256(files["/m.onnx"]).hexdigest()
    with pytest.raises(TvcleanError, match=r"download of http://127.0.0.1:\d+/m.onnx "
                                           r"is truncated: 100000 of 200000 bytes"):
        fetch_model("resnet50", url=f"{base}/m.onnx", sha256=digest, progress=False)
    assert list(cache.iterdir()) == []


def test_fetch_refusals(server, cache, monkeypatch):
    base, _, _ = server
    with pytest.raises(TvcleanError, match=r"HTTP Error 404"):
        fetch_model("resnet50", url=f"{base}/none.onnx", sha256="ab" * 32, progress=False)
    with pytest.raises(TvcleanError, match="no published ONNX is registered for resnet50"):
        fetch_model("resnet50")
    with pytest.raises(TvcleanError, match="--sha256 must be 64 hex digits"):
        fetch_model("resnet50", url=f"{base}/x", sha256="abc")
    with pytest.raises(TvcleanError, match="efficientnet-lite0 is embedded"):
        fetch_model("efficientnet-lite0", url=f"{base}/x", sha256="ab" * 32)
    with pytest.raises(TvcleanError, match="invalid model name '../evil'"):
        fetch_model("../evil", url=f"{base}/x", sha256="ab" * 32)
    monkeypatch.setenv("TVCLEAN_OFFLINE", "1")
    with pytest.raises(TvcleanError, match=r"network access is disabled \(TVCLEAN_OFFLINE=1\)"):
        fetch_model("resnet50", url="https://example.com/r.onnx", sha256="ab" * 32)


def test_cli_models_list_and_fetch(server, cache):
    base, files, _ = server
    runner = CliRunner()
    result = runner.invoke(cli, ["models", "list"])
    assert result.exit_code == 0
    lines = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()
             if not line.startswith("cache:")}
    assert lines["efficientnet-lite0"][:4] == ["embedded", "1280-d", "224px", "fp32"]
    assert lines["efficientnet-lite0-int8"][:4] == ["embedded", "1280-d", "224px", "int8"]
    assert lines["resnet50"][:2] == ["not", "installed"]
    assert lines["resnet50-int8"][:2] == ["not", "installed"]
    files["/r.onnx"] = EMBEDDED.read_bytes()
    digest = hashlib.sha256(files["/r.onnx"]).hexdigest()
    result = runner.invoke(cli, ["models", "fetch", "resnet50", "--url", f"{base}/r.onnx",
                                 "--sha256", digest])
    assert result.exit_code == 0, result.output
    assert f"sha256 {digest}" in result.output
    result = runner.invoke(cli, ["models", "list", "--json"])
    assert {r["name"]: r["status"] for r in json.loads(result.output)}["resnet50"] == "cached"
    result = runner.invoke(cli, ["models", "fetch", "other", "--url", f"{base}/r.onnx",
                                 "--sha256", "0" * 64])
    assert result.exit_code == 1
    assert "Error: sha256 mismatch" in result.output and "Traceback" not in result.output


def test_export_without_torch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    result = CliRunner().invoke(cli, ["models", "export", "resnet50", "--untrained"])
    assert result.exit_code == 1
    assert "this needs the torch extra: pip install 'tvclean[torch]'" in result.output
    assert "Traceback" not in result.output
