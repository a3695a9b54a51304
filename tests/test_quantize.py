"""int8 models: the embedded EfficientNet-Lite0-int8, `--precision int8`, and quantizing a model
(checked against a naive float64 simulation of the quantized graph)."""

from __future__ import annotations

import importlib.util
import json
import re
import sys

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from imagefiles import photo

from tvclean.main import cli
from tvcore.errors import TvcleanError
from tvcore.io import modelzoo
from tvcore.io.images import TFLITE_MEAN, TFLITE_STD, Preprocess
from tvcore.io.modelzoo import (
    INT8_SATURATES,
    embedded_dir,
    int8_saturates,
    resolve_model,
    sha256_file,
)

needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnx") is None,
                                reason="needs the onnx package (tvclean[quantize])")
# where onnxruntime's int8 kernels saturate (x86 without VNNI) int8 is not fp32's within these
# bounds: extract says so (test_extract_warns_where_int8_saturates) and these are skipped
exact_int8 = pytest.mark.skipif(int8_saturates(), reason=INT8_SATURATES)
SMALL = Preprocess(32, 36, TFLITE_MEAN, TFLITE_STD)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("TVCLEAN_CACHE", str(folder))
    return folder


# --- the embedded int8 model ------------------------------------------------------------------

def test_embedded_int8_model_identity():
    spec = resolve_model("efficientnet-lite0-int8")
    meta = json.loads((embedded_dir() / "efficientnet-lite0-int8.json").read_text())
    fp32 = resolve_model("efficientnet-lite0")
    assert spec.sha256 == meta["sha256"] == sha256_file(spec.path)
    assert spec.precision == "int8" and fp32.precision == "fp32"
    assert meta["base_sha256"] == fp32.sha256 and meta["base"] == "efficientnet-lite0"
    assert spec.preprocess == fp32.preprocess and spec.dim == 1280
    assert spec.identity()["precision"] == "int8" and spec.licence == "Apache-2.0"
    assert spec.path.stat().st_size < fp32.path.stat().st_size / 3  # int8 weights


def test_precision_int8_picks_the_int8_version():
    assert resolve_model("efficientnet-lite0", "int8").name == "efficientnet-lite0-int8"
    assert resolve_model("efficientnet-lite0-int8", "int8").name == "efficientnet-lite0-int8"
    assert resolve_model("efficientnet-lite0-int8", "fp32").name == "efficientnet-lite0-int8"
    assert resolve_model("efficientnet-lite0", "fp32").name == "efficientnet-lite0"
    with pytest.raises(TvcleanError, match=r"invalid precision \(--precision\): must be one of "
                                           r"fp32, int8, got 'int4'"):
        resolve_model("efficientnet-lite0", "int4")


@exact_int8
def test_int8_features_agree_with_fp32_and_still_recognise_the_photos():
    """Same preprocessing, features close to fp32's, and the ImageNet head still finds
    daisy (985) and palace (698) in the top 5 (as the fp32 test in test_extract)."""
    fp32, int8 = resolve_model("efficientnet-lite0"), resolve_model("efficientnet-lite0-int8")
    from PIL import Image

    from tvcore.io.images import prepare
    images = np.stack([prepare(Image.fromarray(photo(name)), fp32.preprocess, 10**8)
                       for name in ("flower.jpg", "china.jpg")])
    outputs = [ort.InferenceSession(str(m.path), providers=["CPUExecutionProvider"])
               .run(["features", "logits"], {"images": images}) for m in (fp32, int8)]
    (f32, logits32), (f8, logits8) = outputs
    cosine = (f32 * f8).sum(1) / np.linalg.norm(f32, axis=1) / np.linalg.norm(f8, axis=1)
    assert np.all(cosine > 0.97), cosine
    for row, expected in enumerate((985, 698)):
        assert expected in np.argsort(logits8[row])[-5:]
        assert np.argmax(logits8[row]) == np.argmax(logits32[row])


def test_missing_int8_versions_say_how_to_make_them(cache, tmp_path):
    with pytest.raises(TvcleanError, match=r"model resnet50-int8 is not in the cache .*: run "
                                           r"`tvclean models quantize resnet50` \(needs the onnx "
                                           r"package: pip install 'tvclean\[quantize\]'\)"):
        resolve_model("resnet50-int8")
    model = tmp_path / "mine.onnx"
    model.write_bytes((embedded_dir() / "efficientnet-lite0.onnx").read_bytes())
    with pytest.raises(TvcleanError, match=r"no int8 version of model .*mine.onnx in the cache "
                                           r".*: run `tvclean models quantize .*mine.onnx`"):
        resolve_model(str(model), "int8")


def test_quantize_without_onnx_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    result = CliRunner().invoke(cli, ["models", "quantize", "efficientnet-lite0"])
    assert result.exit_code == 1
    assert result.output.strip() == ("Error: quantizing a model needs the onnx package: "
                                     "pip install 'tvclean[quantize]'")


# --- quantizing: a tiny model against a naive float64 simulation ------------------------------

def tiny_model(path, seed: int = 0):
    """images (N, 3, 32, 32) -> Conv 3x3 stride 2 (8 channels) -> Relu -> GlobalAveragePool
    -> Flatten -> features (N, 8); weights of very different size per channel. Node names
    are left empty on purpose (the quantizer needs names; quantize_model gives them)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    gains = np.array([0.05, 0.1, 0.2, 0.5, 1, 2, 0.3, 0.02], np.float32)
    weights = (rng.standard_normal((8, 3, 3, 3)) * gains[:, None, None, None]).astype(np.float32)
    bias = (rng.standard_normal(8) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Conv", ["images", "W", "B"], ["conv"], pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["features"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    (path.with_suffix(".json")).write_text(json.dumps(
        {"input_size": 32, "resize": 36, "normalisation": "tflite", "dim": 8}))
    return weights.astype(np.float64), bias.astype(np.float64)


def naive_conv(x, weights, bias):
    """(n, 3, 32, 32) float64 -> (n, 8, 16, 16): 3x3, stride 2, zero padding 1."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.empty((x.shape[0], weights.shape[0], 16, 16))
    for i in range(16):
        for j in range(16):
            patch = padded[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
            out[:, :, i, j] = np.einsum("nchw,kchw->nk", patch, weights) + bias
    return out


def naive_uint8_params(low: float, high: float) -> tuple[float, int]:
    """onnxruntime's asymmetric uint8 scale and zero point for the range [low, high] (0 inside)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = (high - low) / 255.0
    return scale, int(np.clip(np.round(-low / scale), 0, 255))


def fake_quantize(x, scale, zero_point, low=0, high=255):
    return (np.clip(np.round(x / scale) + zero_point, low, high) - zero_point) * scale


@needs_onnx
@exact_int8
def test_quantized_graph_matches_a_naive_float64_simulation(tmp_path):
    import onnx
    from onnx import numpy_helper

    from tvcore.io.quantize import calibration_images, quantize_model
    weights, bias = tiny_model(tmp_path / "tiny.onnx")
    calibration = calibration_images(SMALL, fashion=16, photos=16)
    quantize_model(tmp_path / "tiny.onnx", tmp_path / "int8.onnx", calibration)
    params = {t.name: numpy_helper.to_array(t).astype(np.float64)
              for t in onnx.load(str(tmp_path / "int8.onnx")).graph.initializer}

    # Ranges: the input's from the calibration images, the Relu output's from the fp32 model.
    in_scale, in_zero = naive_uint8_params(calibration.min(), calibration.max())
    assert params["images_scale"] == pytest.approx(in_scale, rel=1e-6)
    assert params["images_zero_point"] == in_zero
    relu = np.maximum(naive_conv(calibration.astype(np.float64), weights, bias), 0)
    relu_scale, relu_zero = naive_uint8_params(0.0, relu.max())
    assert params["relu_scale"] == pytest.approx(relu_scale, rel=1e-5) and relu_zero == 0
    # Weights: symmetric int8 per output channel.
    w_scale = np.abs(weights).max(axis=(1, 2, 3)) / 127.0
    np.testing.assert_allclose(params["W_scale"], w_scale, rtol=1e-6)
    np.testing.assert_array_equal(params["W_quantized"],
                                  np.round(weights / w_scale[:, None, None, None]))
    # The features stay float: no quantization after the pooling.
    assert not any(name.startswith(("pool", "features")) for name in params)

    # End to end on other images: the int8 graph equals the simulation to one output step.
    images = calibration_images(SMALL, fashion=8, photos=8, seed=3).astype(np.float64)
    x = fake_quantize(images, in_scale, in_zero)
    w = params["W_quantized"] * w_scale[:, None, None, None]
    b = params["B_quantized"] * params["B_quantized_scale"]
    expected = fake_quantize(np.maximum(naive_conv(x, w, b), 0), relu_scale, 0).mean(axis=(2, 3))
    got = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"]
                               ).run(["features"], {"images": images.astype(np.float32)})[0]
    assert np.abs(got - expected).max() <= relu_scale / 256 + 1e-6  # at most one level in 256 pixels
    assert np.abs(got - expected).mean() <= relu_scale / 2560
    fp32 = np.maximum(naive_conv(images, weights, bias), 0).mean(axis=(2, 3))
    assert np.abs(got - fp32).max() < 0.05 * np.abs(fp32).max()  # and close to the fp32 model


@needs_onnx
def test_quantizing_is_deterministic(tmp_path):
    from tvcore.io.quantize import calibration_images, quantize_model
    tiny_model(tmp_path / "tiny.onnx")
    calibration = calibration_images(SMALL, fashion=8, photos=8)
    for name in ("a", "b"):
        quantize_model(tmp_path / "tiny.onnx", tmp_path / f"{name}.onnx", calibration)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_calibration_images_are_preprocessed_shipped_images():
    from tvcore.io.quantize import calibration_images
    images = calibration_images(SMALL, fashion=10, photos=6)
    assert images.shape == (16, 3, 32, 32) and images.dtype == np.float32
    assert images.min() >= -1.0 and images.max() <= 1.0  # (pixel - 127) / 128
    grey = images[:10]
    assert np.array_equal(grey[:, 0], grey[:, 1]) and np.array_equal(grey[:, 1], grey[:, 2])
    assert not np.array_equal(images[10, 0], images[10, 2])  # the photos have colour
    assert np.array_equal(images, calibration_images(SMALL, fashion=10, photos=6))  # seeded


@needs_onnx
@exact_int8
def test_quantize_a_users_model_into_the_cache_and_extract_with_it(tmp_path, cache):
    """`tvclean models quantize PATH` -> the cache; `--precision int8` on PATH finds it by
    the fp32 file's sha256, and extraction runs with the int8 file."""
    tiny_model(tmp_path / "tiny.onnx")
    runner = CliRunner()
    result = runner.invoke(cli, ["models", "quantize", str(tmp_path / "tiny.onnx")])
    assert result.exit_code == 0, result.output
    fp32 = resolve_model(str(tmp_path / "tiny.onnx"))
    stem = f"tiny-{fp32.sha256[:8]}-int8"
    assert f"into {cache / stem}.onnx" in result.output
    cosines = re.findall(r"cosine to the fp32 features, (\w+): mean ([\d.]+), min ([\d.]+)",
                         result.output)
    assert [kind for kind, _, _ in cosines] == ["fashion", "photos"]
    assert all(float(low) > 0.99 for _, _, low in cosines)
    meta = json.loads((cache / f"{stem}.json").read_text())
    assert meta["precision"] == "int8" and meta["base_sha256"] == fp32.sha256
    assert (meta["input_size"], meta["resize"], meta["mean"]) == (32, 36, [127.0] * 3)
    int8 = resolve_model(str(tmp_path / "tiny.onnx"), "int8")
    assert int8.path == (cache / f"{stem}.onnx").resolve() and int8.precision == "int8"
    assert int8.preprocess == fp32.preprocess and int8.dim == 8
    assert resolve_model(stem).sha256 == int8.sha256  # also by its name

    from imagefiles import write_digit_tree
    write_digit_tree(tmp_path / "data" / "train", classes=(0, 1), per_class=2)
    write_digit_tree(tmp_path / "data" / "val", classes=(0, 1), per_class=1, offset=2)
    result = runner.invoke(cli, ["extract", str(tmp_path / "data"), "-o", str(tmp_path / "run"),
                                 "--model", str(tmp_path / "tiny.onnx"), "--precision", "int8",
                                 "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["model"]["sha256"] == int8.sha256 and summary["model"]["precision"] == "int8"
    assert summary["dim"] == 8

    result = runner.invoke(cli, ["models", "quantize", stem])
    assert result.exit_code == 1 and f"Error: model {stem} is already int8" in result.output


@needs_onnx
def test_quantize_with_the_users_calibration_images(tmp_path, cache):
    from imagefiles import write_photo

    from tvcore.io.quantize import quantize
    tiny_model(tmp_path / "tiny.onnx")
    for i, name in enumerate(("flower.jpg", "china.jpg") * 2):
        write_photo(tmp_path / "calib" / f"sub{i % 2}" / f"{i}.jpg", name, size=(64 + i, 48))
    (tmp_path / "calib" / "notes.txt").write_text("not an image")
    result = quantize(str(tmp_path / "tiny.onnx"), name="mine", calibration=tmp_path / "calib",
                      calibration_limit=3)
    assert result.path == cache / "mine.onnx"
    meta = json.loads((cache / "mine.json").read_text())
    assert meta["calibration"] == f"3 images of {(tmp_path / 'calib').resolve()}"
    (tmp_path / "empty").mkdir()
    with pytest.raises(TvcleanError, match=r"no images in the calibration folder .*empty"):
        quantize(str(tmp_path / "tiny.onnx"), calibration=tmp_path / "empty")
    with pytest.raises(TvcleanError, match=r"calibration folder not found: .*nowhere"):
        quantize(str(tmp_path / "tiny.onnx"), calibration=tmp_path / "nowhere")


@needs_onnx
def test_clean_with_a_baseline_and_int8_quantizes_it_on_the_training_images(tmp_path, cache):
    from imagefiles import write_digit_tree

    from tvcore.config import Config
    from tvcore.stages.clean import clean
    tiny_model(tmp_path / "tiny.onnx")
    write_digit_tree(tmp_path / "data" / "train", per_class=6)
    write_digit_tree(tmp_path / "data" / "val", per_class=3, offset=6)
    config = Config.from_dict({"finetune": {"baseline": str(tmp_path / "tiny.onnx")},
                               "extract": {"precision": "int8", "threads": 1},
                               "estimate": {"episodes": 4, "threads": 1},
                               "report": {"enabled": False}, "filter": {"output": "none"}})
    result = clean(tmp_path / "data" / "train", tmp_path / "data" / "val", tmp_path / "run",
                   config, progress=False)
    int8 = resolve_model(str(tmp_path / "tiny.onnx"), "int8")
    assert result.extract.model["sha256"] == int8.sha256 and result.extract.dim == 8
    meta = json.loads(int8.path.with_suffix(".json").read_text())
    assert meta["calibration"] == f"18 images of {(tmp_path / 'data' / 'train').resolve()}"
    assert "quantize" in result.seconds
    again = clean(tmp_path / "data" / "train", tmp_path / "data" / "val", tmp_path / "run",
                  config, progress=False)
    assert again.extract.up_to_date and again.extract.model["sha256"] == int8.sha256


@needs_onnx
def test_quantize_a_known_model_in_the_cache(tmp_path, cache):
    """`tvclean models quantize resnet50` writes resnet50-int8, which `--model resnet50
    --precision int8` and `--model resnet50-int8` then use (a tiny stand-in for ResNet50)."""
    from tvcore.io.modelzoo import list_models, write_metadata
    tiny_model(tmp_path / "tiny.onnx")
    cache.mkdir()
    (cache / "resnet50.onnx").write_bytes((tmp_path / "tiny.onnx").read_bytes())
    write_metadata(cache / "resnet50.onnx", "resnet50", SMALL, 8, source="test", licence="test")
    result = CliRunner().invoke(cli, ["models", "quantize", "resnet50"])
    assert result.exit_code == 0, result.output
    spec = resolve_model("resnet50", "int8")
    assert spec.name == "resnet50-int8" and spec.path == (cache / "resnet50-int8.onnx").resolve()
    assert spec.precision == "int8" and resolve_model("resnet50-int8").sha256 == spec.sha256
    rows = {r["name"]: r for r in list_models()}
    assert rows["resnet50-int8"]["status"] == "cached" and rows["resnet50-int8"]["precision"] == "int8"
    assert rows["resnet50"]["precision"] == "fp32"


@needs_onnx
@pytest.mark.slow
def test_the_embedded_int8_model_rebuilds_byte_for_byte(tmp_path):
    """models/quantize_efficientnet_lite0.py's recipe gives the committed file (with the
    versions it was made with; other versions may serialise another valid graph)."""
    import onnx

    from tvcore.io.quantize import calibration_images, quantize_model
    meta = json.loads((embedded_dir() / "efficientnet-lite0-int8.json").read_text())
    made_with = meta["quantized_with"]
    if (made_with["onnxruntime"], made_with["onnx"]) != (ort.__version__, onnx.__version__):
        pytest.skip(f"made with {made_with}, here onnxruntime {ort.__version__}, "
                    f"onnx {onnx.__version__}")
    fp32 = resolve_model("efficientnet-lite0")
    quantize_model(fp32.path, tmp_path / "int8.onnx", calibration_images(fp32.preprocess))
    assert sha256_file(tmp_path / "int8.onnx") == meta["sha256"]


@needs_onnx
def test_quantize_refuses_names_that_belong_to_other_models(tmp_path, cache):
    from tvcore.io.quantize import quantize
    tiny_model(tmp_path / "tiny.onnx")
    with pytest.raises(TvcleanError, match=r"^efficientnet-lite0-int8 is embedded in tvclean: give "
                                           r"the int8 model another name \(--name\) or an output "
                                           r"file \(-o\)$"):
        quantize("efficientnet-lite0")
    with pytest.raises(TvcleanError, match=r"^resnet50 is an fp32 model: give the int8 model"):
        quantize(str(tmp_path / "tiny.onnx"), name="resnet50")
    assert not cache.exists() or not any(cache.iterdir())


@pytest.mark.parametrize("saturates", [True, False])
def test_extract_warns_where_int8_saturates(tmp_path, monkeypatch, saturates):
    from imagefiles import write_digit_tree

    monkeypatch.setattr(modelzoo, "int8_saturates", lambda: saturates)
    monkeypatch.setattr("tvcore.stages.extract.int8_saturates", lambda: saturates)
    write_digit_tree(tmp_path / "train", per_class=2)
    write_digit_tree(tmp_path / "val", per_class=1, offset=10)
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["extract", str(tmp_path / "train"), str(tmp_path / "val"),
                                      "-o", str(run), "--precision", "int8"])
    assert result.exit_code == 0, result.output
    assert (f"warning: {INT8_SATURATES}" in result.output) == saturates
    assert (INT8_SATURATES in (run / "log.txt").read_text()) == saturates


def test_int8_saturates_reads_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    for flags, expected in (("fpu avx2 fma", True), ("avx2 avx512f avx512_vnni", False),
                            ("avx2 avx_vnni", False)):
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert int8_saturates(str(info), "x86_64") is expected, flags
    assert int8_saturates(str(info), "aarch64") is False
    assert int8_saturates(str(tmp_path / "none"), "x86_64") is False  # not known: no warning
